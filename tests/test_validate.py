"""End to end: ``validate`` on the trained digits CNN vs edited candidates, exit codes, bad input."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import onnxsparse.validate
from helpers import DATA, ROOT, cli, sample
from onnxsparse.errors import DataError, OnnxSparseError, UsageError
from onnxsparse.validate import ModelMismatchError, ValidationResult, validate
from test_validate_support import DIGITS_X, DIGITS_Y, FAST, digits_predictions, edited_digits, tiny_model

DIGITS = sample("digits_cnn")


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("candidates")
    return {
        "noisy": edited_digits(tmp / "noisy.onnx", noise=0.01),
        "broken": edited_digits(tmp / "broken.onnx", kill_class=3),
    }


def _validate_cli(*args):
    return cli("validate", *FAST, *args)


def test_accuracy_both_models_and_latency_ratio(candidates):
    result = validate(DIGITS, candidates["broken"], data=DIGITS_X, labels=DIGITS_Y, runs=5, warmup=1,
                      memory=False)
    labels = np.load(DIGITS_Y)
    (p,) = result.providers
    assert p.available and p.provider == "cpu" and p.active_providers[0] == "CPUExecutionProvider"
    assert p.samples == len(labels) == 360
    (top1,) = p.metrics
    expected_ref = float(np.mean(digits_predictions(DIGITS) == labels))
    expected_cand = float(np.mean(digits_predictions(candidates["broken"]) == labels))
    assert top1.reference == pytest.approx(expected_ref, abs=1e-12)
    assert top1.candidate == pytest.approx(expected_cand, abs=1e-12)
    assert top1.drop == pytest.approx(expected_ref - expected_cand, abs=1e-12) and top1.drop > 0.05
    reported = json.loads((DATA / "digits_results.json").read_text())["models"]["digits_cnn"]["ort_acc"]
    assert top1.reference == pytest.approx(reported, abs=1e-12)
    assert p.latency_ratio == pytest.approx(p.candidate.latency.p50_ms / p.reference.latency.p50_ms)
    assert p.reference.latency.runs == p.candidate.latency.runs == 5
    for session in (p.reference, p.candidate):  # created 3 times (the default), the fastest reported
        assert len(session.session_samples_s) == 3 and min(session.session_samples_s) > 0
        assert session.session_seconds == min(session.session_samples_s)
    # Fidelity: the killed class never wins, so top-1 agreement = fraction of reference predictions != 3.
    (f,) = p.fidelity
    ref_pred = digits_predictions(DIGITS)
    assert f.top1_agreement == pytest.approx(float(np.mean(ref_pred != 3)), abs=1e-12)
    assert result.reference.file_bytes == DIGITS.stat().st_size
    assert result.reference.params == result.candidate.params > 0
    assert result.passed  # no thresholds were asked for


def test_cli_prints_accuracy_of_both_and_the_ratio(candidates):
    code, out, err = _validate_cli(DIGITS, candidates["broken"], "--data", DIGITS_X, "--labels", DIGITS_Y)
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("cpu") and "top1" in line)
    ref_acc, cand_acc = (float(v) for v in row.split()[3:5])
    labels = np.load(DIGITS_Y)
    assert ref_acc == pytest.approx(np.mean(digits_predictions(DIGITS) == labels), abs=1e-4)
    assert cand_acc == pytest.approx(np.mean(digits_predictions(candidates["broken"]) == labels), abs=1e-4)
    assert re.search(r"cpu\s+candidate.*\d\.\d{3}x", out), out
    assert "top1 0.9917 ->" in out and out.rstrip().endswith("PASSED")


@pytest.mark.parametrize(
    "which, gate, limit, code",
    [
        ("noisy", "--min-cosine", "0.99", 0),
        ("broken", "--min-cosine", "0.99", 1),
        ("noisy", "--max-abs-error", "1.0", 0),
        ("noisy", "--max-abs-error", "1e-9", 1),
        ("noisy", "--max-rel-error", "0.5", 0),
        ("broken", "--max-rel-error", "0.01", 1),
        ("noisy", "--min-top1-agreement", "0.95", 0),
        ("broken", "--min-top1-agreement", "0.95", 1),
        ("noisy", "--min-top5-overlap", "0.8", 0),
        ("broken", "--max-accuracy-drop", "0.01", 1),
        ("noisy", "--max-accuracy-drop", "0.01", 0),
        ("broken", "--min-accuracy", "0.95", 1),
        ("noisy", "--max-latency-ratio", "1000", 0),
        ("noisy", "--max-latency-ratio", "1e-6", 1),
        ("noisy", "--max-size-ratio", "1.01", 0),
        ("noisy", "--max-size-ratio", "0.5", 1),
    ],
)
def test_threshold_exit_codes(candidates, which, gate, limit, code):
    extra = ("--labels", DIGITS_Y) if "accuracy" in gate else ()
    got, out, err = _validate_cli(DIGITS, candidates[which], "--data", DIGITS_X, gate, limit, *extra)
    assert got == code, out + err
    name = gate[2:].replace("-", "_")
    line = next(line for line in out.splitlines() if line.startswith(name + " "))
    assert ("PASS" if code == 0 else "FAIL") in line.split()


def test_json_check_names_worst_value_and_where(candidates):
    code, out, _ = _validate_cli(DIGITS, candidates["broken"], "--data", DIGITS_X, "--min-top1-agreement", "0.95",
                                 "--json")
    data = json.loads(out)
    assert code == 1 and data["passed"] is False
    check = next(c for c in data["checks"] if c["name"] == "min_top1_agreement")
    assert check == {"name": "min_top1_agreement", "limit": 0.95, "observed": pytest.approx(
        data["providers"][0]["fidelity"][0]["top1_agreement"]), "where": "cpu/logits", "passed": False,
        "reason": None}


def test_candidate_with_nan_fails_even_without_thresholds(tmp_path):
    ref = tiny_model(tmp_path / "ref.onnx", op="Relu")
    cand = tiny_model(tmp_path / "cand.onnx", op="Log")  # log of negative random inputs -> NaN
    code, out, _ = _validate_cli(ref, cand, "--shape", "x=1x4")
    assert code == 1
    assert "outputs_comparable" in out and "NaN/inf" in out


def test_changed_output_shape_fails(tmp_path):
    ref = tiny_model(tmp_path / "ref.onnx", inputs=(("x", TensorProto.FLOAT, ["N", 4]),))
    model = onnx.load(str(ref))
    axes = onnx.helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    model.graph.initializer.append(axes)
    model.graph.node[0].output[0] = "r"
    model.graph.node.append(onnx.helper.make_node("ReduceSum", ["r", "axes"], ["y"], keepdims=1))
    onnx.save(model, str(tmp_path / "cand.onnx"))
    result = validate(ref, tmp_path / "cand.onnx", shape={"x": (1, 4)}, runs=2, warmup=0, memory=False)
    assert not result.passed
    assert "shape mismatch" in result.providers[0].fidelity[0].error


@pytest.mark.parametrize(
    "cand_inputs, message",
    [
        ((("z", TensorProto.FLOAT, ["N", 4]),), r"candidate lacks input\(s\) \['x'\].*extra input\(s\) \['z'\]"),
        ((("x", TensorProto.DOUBLE, ["N", 4]),), r"input 'x' is float32 in the reference but float64"),
        ((("x", TensorProto.FLOAT, ["N", 4, 1]),), r"input 'x' has rank 2 \[N,4\] in the reference but rank 3"),
        ((("x", TensorProto.FLOAT, ["N", 5]),), r"input 'x' axis 1 is 4 in the reference but 5"),
    ],
)
def test_mismatched_inputs_are_a_clear_error(tmp_path, cand_inputs, message):
    ref = tiny_model(tmp_path / "ref.onnx")
    cand = tiny_model(tmp_path / "cand.onnx", inputs=cand_inputs)
    with pytest.raises(ModelMismatchError, match=message):
        validate(ref, cand, memory=False)
    code, out, err = _validate_cli(ref, cand)
    assert code == 2 and out == ""
    assert err.startswith("onnxsparse: error: reference") and "take different inputs" in err
    assert len(err.strip().splitlines()) == 1


def test_mismatched_output_names_need_output_map(tmp_path):
    ref = tiny_model(tmp_path / "ref.onnx", outputs=("y",))
    cand = tiny_model(tmp_path / "cand.onnx", outputs=("y_pruned",))
    code, _, err = _validate_cli(ref, cand)
    assert code == 2
    assert "reference output 'y' has no candidate output 'y'" in err and "--output-map" in err
    code, out, err = _validate_cli(ref, cand, "--output-map", "y=y_pruned", "--max-abs-error", "0", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["settings"]["output_pairs"] == [{"reference": "y", "candidate": "y_pruned"}]
    assert data["providers"][0]["fidelity"][0]["max_abs_error"] == 0


def test_extra_candidate_outputs_are_noted(tmp_path):
    ref = tiny_model(tmp_path / "ref.onnx", outputs=("y",))
    cand = tiny_model(tmp_path / "cand.onnx", outputs=("y", "debug"))
    result = validate(ref, cand, runs=2, warmup=0, memory=False)
    assert result.passed
    assert any("'debug' has no reference counterpart" in note for note in result.notes)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--labels", DIGITS_Y), "--labels needs --data"),
        (("--data", DIGITS_X, "--max-accuracy-drop", "0.01"), "--max-accuracy-drop needs --labels"),
        (("--data", DIGITS_X, "--metric", "top1"), "--metric needs --labels"),
        (("--data", DIGITS_X, "--labels", DIGITS_Y, "--metric", "nope"), "unknown metric 'nope'"),
        (("--providers", "cuda,warp9"), "unknown execution provider 'warp9'"),
        (("--report", "out.pdf"), "unknown report format '.pdf'"),
        (("--data", DIGITS_X, "--batch", "0"), "--batch: must be >= 1"),  # generated flag wording
        (("--runs", "0"), "--runs: must be >= 1"),  # generated flag wording
        (("--budget", "2"), "--runs fixes the number of timed runs"),  # FAST passes --runs
        (("--data", "missing.npz"), "data not found"),
        (("--label-output", "nope"), "--label-output 'nope' is not a reference output"),
    ],
)
def test_bad_input_exits_2(candidates, args, message):
    code, out, err = _validate_cli(DIGITS, candidates["noisy"], *args)
    assert code == 2, out + err
    assert message in err


def test_label_count_must_match(candidates, tmp_path):
    labels = tmp_path / "labels.npy"
    np.save(labels, np.load(DIGITS_Y)[:100])
    code, _, err = _validate_cli(DIGITS, candidates["noisy"], "--data", DIGITS_X, "--labels", labels)
    assert code == 2 and "100 labels for 360 data samples" in err


def test_labels_from_npz_and_samples_cap(candidates, tmp_path):
    labels = tmp_path / "labels.npz"
    np.savez(labels, y=np.load(DIGITS_Y))
    result = validate(DIGITS, candidates["noisy"], data=DIGITS_X, labels=labels, samples=50, metric="top1,top5",
                      runs=2, warmup=0, memory=False)
    p = result.providers[0]
    assert p.samples == 50 and [m.name for m in p.metrics] == ["top1", "top5"]
    expected = float(np.mean(digits_predictions(DIGITS)[:50] == np.load(DIGITS_Y)[:50]))
    assert p.metrics[0].reference == pytest.approx(expected, abs=1e-12)
    two = tmp_path / "two.npz"
    np.savez(two, a=np.zeros(3), b=np.zeros(3))
    with pytest.raises(DataError, match="holds 2 arrays"):
        validate(DIGITS, candidates["noisy"], data=DIGITS_X, labels=two, memory=False)


def test_batches_and_remainder(candidates):
    result = validate(DIGITS, candidates["noisy"], data=DIGITS_X, labels=DIGITS_Y, batch=7, runs=3, warmup=0,
                      memory=False)
    p = result.providers[0]
    assert p.samples == 357 and p.reference.latency.batch == 7
    assert any("last 3 sample(s)" in note for note in result.notes)
    labels = np.load(DIGITS_Y)[:357]
    assert p.metrics[0].reference == pytest.approx(float(np.mean(digits_predictions(DIGITS)[:357] == labels)))


def test_fixed_batch_model_rejects_other_batches(tmp_path):
    ref = tiny_model(tmp_path / "ref.onnx", inputs=(("x", TensorProto.FLOAT, [2, 4]),))
    result = validate(ref, ref, runs=2, warmup=0, memory=False)
    assert result.settings["batch"] == 2 and result.providers[0].reference.latency.batch == 2
    with pytest.raises(UsageError, match="fixed batch size of 2"):
        validate(ref, ref, batch=3, memory=False)


def test_python_api_callable_package_and_in_memory_candidate(candidates):
    proto = onnx.load(str(candidates["noisy"]))
    result = onnxsparse.validate(DIGITS, proto, data=DIGITS_X, runs=2, warmup=0, memory=False, min_cosine=0.99)
    assert isinstance(result, ValidationResult) and result.passed
    assert result.candidate.path == "<in-memory candidate>" and result.candidate.size_note
    data = result.to_dict()
    assert data["passed"] is True and data["schema"] == "onnxsparse.validate/1"
    with pytest.raises(UsageError, match="unknown threshold"):
        onnxsparse.validate(DIGITS, proto, min_cosin=0.9)


def test_multi_output_model_with_random_data():
    model = sample("tiny_decoder_kv")
    shapes = ["--shape", "input_ids=1x4"] + [
        arg for i in range(2) for kind in ("key", "value")
        for arg in ("--shape", f"past_key_values.{i}.{kind}=1x4x3x8")
    ]
    code, out, err = _validate_cli(model, model, *shapes, "--max-abs-error", "0", "--min-top1-agreement", "1",
                                   "--json")
    assert code == 0, err
    data = json.loads(out)
    fidelity = {f["name"]: f for f in data["providers"][0]["fidelity"]}
    assert set(fidelity) == {"logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value"}
    assert fidelity["logits"]["classifier"] and not fidelity["present.0.key"]["classifier"]
    assert fidelity["logits"]["shape"] == [8, 4, 64] and data["settings"]["samples"] == 8


def test_memory_probe_measures_each_session(candidates):
    result = validate(DIGITS, candidates["noisy"], data=DIGITS_X, runs=3, warmup=1, memory=True,
                      max_memory_ratio=100)
    p = result.providers[0]
    for session in (p.reference, p.candidate):
        assert session.memory is not None, session.memory_note
        assert 0 < session.memory.session_bytes < session.memory.peak_rss_bytes
        assert session.memory.peak_rss_bytes > 20 * 2**20  # a Python process with onnxruntime loaded
    assert result.passed


#: Every key the JSON report has; docs/validate.md documents each one (test below).
JSON_KEYS = {
    "": {"schema", "passed", "reference", "candidate", "size_ratio", "providers", "checks", "settings",
         "environment", "notes", "fusions"},
    "reference": {"role", "path", "file_bytes", "size_note", "params", "macs", "zero_fraction", "inputs", "outputs",
                  "stats_note"},
    "providers[]": {"provider", "ep", "device", "available", "reason", "failed_model", "active_providers", "samples",
                    "reference",
                    "candidate", "latency_ratio", "speedup", "fidelity", "metrics", "noise",
                    "latency_mode"},
    "providers[].reference": {"session_seconds", "session_samples_s", "latency", "memory", "memory_note"},
    "providers[].reference.latency": {"runs", "batch", "mean_ms", "std_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms",
                                      "max_ms", "throughput", "stopped_by", "budget_seconds", "loop_seconds",
                                      "samples_ms"},
    "providers[].reference.memory": {"peak_rss_bytes", "session_bytes", "method"},
    "providers[].fidelity[]": {"name", "candidate_name", "shape", "dtype", "classifier", "elements",
                               "max_abs_error", "mean_abs_error", "rel_error", "cosine", "cosine_min",
                               "top1_agreement", "top5_overlap", "exact_match", "nonfinite", "error"},
    "providers[].metrics[]": {"name", "output", "reference", "candidate", "drop", "higher_is_better"},
    "checks[]": {"name", "limit", "observed", "where", "passed", "reason"},
    "settings": {"data", "samples", "labels", "metrics", "providers", "threads", "batch", "warmup", "runs",
                 "budget_seconds", "min_runs", "max_runs", "memory", "session_repeats", "seed", "output_pairs",
                 "thresholds", "noise"},
    "environment": {"onnxsparse", "onnxruntime", "available_providers", "python", "platform", "cpu", "cpu_count"},
}


def test_json_keys_are_stable_and_documented(candidates, tmp_path):
    report = tmp_path / "r.json"
    code, _, err = cli("validate", DIGITS, candidates["noisy"], "--data", DIGITS_X, "--labels", DIGITS_Y,
                       "--runs", "3", "--warmup", "0", "--min-cosine", "0.9", "--report", report, "-q")
    assert code == 0, err
    data = json.loads(report.read_text())
    p = data["providers"][0]
    found = {
        "": data, "reference": data["reference"], "providers[]": p, "providers[].reference": p["reference"],
        "providers[].reference.latency": p["reference"]["latency"],
        "providers[].reference.memory": p["reference"]["memory"], "providers[].fidelity[]": p["fidelity"][0],
        "providers[].metrics[]": p["metrics"][0], "checks[]": data["checks"][0], "settings": data["settings"],
        "environment": data["environment"],
    }
    for path, keys in JSON_KEYS.items():
        assert set(found[path]) == keys, path
    assert set(data["candidate"]) == JSON_KEYS["reference"]
    docs = (ROOT / "docs" / "validate.md").read_text()
    for keys in JSON_KEYS.values():
        for key in keys:
            assert f"`{key}`" in docs, f"docs/validate.md does not document `{key}`"


def test_missing_model_file_exits_2(candidates):
    code, _, err = _validate_cli(Path("nope.onnx"), candidates["noisy"])
    assert code == 2 and "model file not found" in err


def test_errors_are_onnxsparse_errors(tmp_path):
    ref = tiny_model(tmp_path / "ref.onnx")
    with pytest.raises(OnnxSparseError):
        validate(ref, tiny_model(tmp_path / "c.onnx", inputs=(("q", TensorProto.FLOAT, ["N", 4]),)), memory=False)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal(candidates, monkeypatch):
    tty = _Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    validate(DIGITS, candidates["noisy"], data=DIGITS_X, samples=4, runs=2, warmup=0, memory=False, progress=True)
    assert "cpu: outputs" in tty.getvalue() and "cpu: latency" in tty.getvalue()
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    validate(DIGITS, candidates["noisy"], data=DIGITS_X, samples=4, runs=2, warmup=0, memory=False, progress=False)
    assert quiet.getvalue() == ""
    code, _, err = cli("validate", DIGITS, candidates["noisy"], "--runs", "2", "--no-memory")  # stderr not a tty
    assert code == 0 and err == ""


def test_prune_then_validate_digits(tmp_path):
    """The real pipeline: prune the trained CNN, then validate it against the original."""
    pruned = tmp_path / "pruned.onnx"
    code, _, err = cli("prune", DIGITS, "-o", pruned, "--channels", "0.5", "-q")
    assert code == 0, err
    code, out, err = cli("validate", DIGITS, pruned, "--data", DIGITS_X, "--labels", DIGITS_Y, *FAST)
    assert code == 0, err
    labels = np.load(DIGITS_Y)
    ref_acc = float(np.mean(digits_predictions(DIGITS) == labels))
    cand_acc = float(np.mean(digits_predictions(pruned) == labels))
    row = next(line.split() for line in out.splitlines() if line.startswith("cpu") and " top1 " in line)
    assert float(row[3]) == pytest.approx(ref_acc, abs=1e-4) and float(row[4]) == pytest.approx(cand_acc, abs=1e-4)
    assert f"top1 {ref_acc:.4f} -> {cand_acc:.4f}" in out
    assert re.search(r"p50 latency \d+\.\d{3}x on cpu", out)

    data = json.loads(cli("validate", DIGITS, pruned, "--data", DIGITS_X, "--labels", DIGITS_Y, *FAST, "--json")[1])
    (p,) = data["providers"]
    assert p["metrics"][0]["reference"] == pytest.approx(ref_acc, abs=1e-12)
    assert p["metrics"][0]["candidate"] == pytest.approx(cand_acc, abs=1e-12)
    assert p["latency_ratio"] > 0
    assert data["candidate"]["params"] < data["reference"]["params"]
    assert data["size_ratio"] == pytest.approx(pruned.stat().st_size / DIGITS.stat().st_size)
