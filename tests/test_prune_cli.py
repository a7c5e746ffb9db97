"""``onnxsparse prune`` from the command line."""

from __future__ import annotations

import json

import onnx
from helpers import cli, cli_json, random_feeds, run, sample, session

from test_prune_support import signature


def test_prune_cli_writes_a_smaller_model_with_the_same_signature(tmp_path) -> None:
    out = tmp_path / "small.onnx"
    code, stdout, stderr = cli("prune", sample("resnet_mini"), "-o", out, "--channels", "0.5", "--round-to", "1", "-q")
    assert code == 0, stderr
    assert "pruned groups: 5 of 5 prunable" in stdout and "'logits' is a graph output" in stdout
    assert "params" in stdout and "MACs" in stdout and "file bytes" in stdout
    pruned = onnx.load(out)
    onnx.checker.check_model(pruned, full_check=True)
    assert signature(pruned) == signature(onnx.load(sample("resnet_mini")))
    sess = session(str(out))
    assert run(sess, random_feeds(sess, batch=3))[0].shape == (3, 10)


def test_prune_cli_json_and_report(tmp_path) -> None:
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    data = cli_json("prune", sample("densenet_block"), "-o", out, "--channels", "0.3", "--criterion", "bn",
                    "--global", "--round-to", "2", "--exclude", "transition1.conv", "--report", report)
    assert data["settings"] == {"channels": 0.3, "heads": 0.0, "ffn": 0.3, "criterion": "bn", "global": True,
                                "round_to": 2, "min_keep": 1,
                                "exclude": ["transition1.conv"]}
    assert data["macs"]["after"] < data["macs"]["before"] and data["params"]["ratio"] < 1
    assert data["file_bytes"]["after"] < data["file_bytes"]["before"]
    assert any(s["reason"] == "node 'transition1.conv' is excluded" for s in data["skipped"])
    for g in data["groups"]:
        assert g["kept"] % 2 == 0 or g["kept"] == g["total"]
    assert json.loads(report.read_text())["groups_pruned"] == data["groups_pruned"]


def test_prune_cli_user_errors_exit_2(tmp_path) -> None:
    out = tmp_path / "o.onnx"
    code, _, err = cli("prune", sample("resnet_mini"), "-o", out)
    assert code == 2 and "--channels" in err
    code, _, err = cli("prune", sample("resnet_mini"), "-o", out, "--channels", "0.3", "--exclude", "nope")
    assert code == 2 and "unknown node" in err
    code, _, err = cli("prune", sample("resnet_mini"), "-o", out, "--channels", "1.2")
    assert code == 2
    code, _, err = cli("prune", sample("resnet_mini"), "-o", sample("resnet_mini"), "--channels", "0.3", "--force")
    assert code == 2 and "refusing to overwrite" in err
    code, _, err = cli("prune", sample("resnet_mini"), "-o", out, "--channels", "0.3", "--criterion", "nope")
    assert code == 2


def test_ffn_ratio_overrides_channels_for_neurons(tmp_path) -> None:
    """One analysis, one ratio per kind: --ffn prunes the FFN neuron groups, --channels the rest, heads untouched."""
    out = tmp_path / "t.onnx"
    data = cli_json("prune", sample("transformer_encoder"), "-o", out, "--channels", "0.3", "--ffn", "0.5",
                    "--round-to", "1")
    by_kind = {}
    for g in data["groups"]:
        by_kind.setdefault(g["kind"], []).append((g["kept"], g["total"]))
    assert by_kind["neuron"] == [(64, 128), (64, 128)]
    assert all(kept == total for kept, total in by_kind.get("head", []))  # --heads not given: heads stay
    assert data["settings"]["ffn"] == 0.5 and data["heads"]["ffn"][0]["kept"] == 64
    assert data["params"]["after"] < data["params"]["before"]
    pruned = onnx.load(out)
    assert signature(pruned) == signature(onnx.load(sample("transformer_encoder")))
    sess = session(str(out))
    assert run(sess, random_feeds(sess, batch=2))[0].shape[0] == 2


def test_a_quantized_model_with_no_groups_says_why(tmp_path) -> None:
    """A QDQ model prunes (its int8 weights are rules like any other); '0 of 0 prunable' is never the
    whole answer: a dynamically quantized model, which no rule slices exactly, says why."""
    from helpers import DATA

    qdq = tmp_path / "qdq.onnx"
    assert cli("quantize", sample("digits_cnn"), "-o", qdq, "--mode", "static", "--calib",
               DATA / "digits_calib.npz", "-q")[0] == 0
    data = cli_json("prune", qdq, "-o", tmp_path / "p.onnx", "--channels", "0.5")
    assert data["groups_prunable"] >= 2 and not data.get("no_groups_reason")
    assert data["params"]["after"] < 0.5 * data["params"]["before"]
    assert data["unchanged"] is False
    dyn = tmp_path / "dyn.onnx"
    assert cli("quantize", sample("digits_cnn"), "-o", dyn, "--mode", "dynamic", "-q")[0] == 0
    data = cli_json("prune", dyn, "-o", tmp_path / "p2.onnx", "--channels", "0.5")
    assert data["groups_prunable"] == data["groups_skipped"] == 0
    assert "dynamically quantized (DynamicQuantizeLinear" in data["no_groups_reason"]
    assert data["unchanged"] is True
