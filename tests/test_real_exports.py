"""Every command on models exported by the real exporters (``samples/models/real_*.onnx``).

The files come from ``samples/export_real.py`` (PyTorch TorchScript and dynamo,
skl2onnx, tf2onnx, paddle2onnx, plus "model zoo" variants: fp16, opset 11,
external data, Dropout/Identity leftovers); ``real_manifest.json`` beside them says
which exporter wrote each.  For every file:

* ``inspect``: valid JSON, parameter count equal to the per-weight table, MACs
  known once every symbolic dim is fixed, and equal across the TorchScript and
  dynamo exports of one architecture;
* ``prune --channels``: the masked-equivalence oracle (the pruned model equals
  the original with the removed channels masked at every contraction);
* ``prune --heads --ffn`` on transformers: the head oracle of ``test_heads.py``;
  every attention block is pruned or skipped with a reason we accept;
* ``sparsify`` + ``densify``: the decoded weights are the original weights with
  zeros written in, the sparse file computes what its densified copy computes;
* ``quantize --mode dynamic`` of that half-zero model keeps every zero exact.

Skipped groups must give a reason, and only reasons listed in :data:`ACCEPTED`
(real refusals: LayerNorm over the channel axis, graph I/O, ...) may appear:
anything else is a regression or a new pattern to support.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import SAMPLES, cli, session
from test_heads import masked_reference
from test_prune_support import signature

from onnxsparse import load_model, normalize
from onnxsparse.graph import apply_plan, build_groups, masked_copy
from onnxsparse.io import max_runtime_ir_version, to_proto
from onnxsparse.passes.prune import plan_pruning
from onnxsparse.passes.prune_heads import prune_heads

MANIFEST = json.loads((SAMPLES / "real_manifest.json").read_text())
MODELS = sorted(p.stem for p in SAMPLES.glob("real_*.onnx"))

#: value of every symbolic dim in test inputs (anything else: the batch size)
DIMS = {"seq": 7, "height": 32, "width": 32}
BATCH = 2
FP16 = {name for name in MODELS if "fp16" in name}

#: Skip reasons that are real refusals (the group truly cannot lose channels).
ACCEPTED = (
    r"is a graph (input|output)",
    r"normalises over axis",  # LayerNorm/Softmax over the pruned axis
    r"pruned by --ffn",  # blocked for --channels because --heads/--ffn pruned it
    r"only one removable unit",  # e.g. the "3" of a packed qkv [B, N, 3, H, D] reshape
)
#: Extra accepted reasons per model (known limits, listed in the report), as regexes.
ACCEPTED_FOR: dict[str, tuple[str, ...]] = {
    # Keras MultiHeadAttention (EinsumDense lowered by tf2onnx), for --channels: the head split is a
    # Reshape of run-time dims computed by ReduceProd; the output projection merges (H, D) through a
    # Reshape we cannot pair.  The FFN's hidden layer is prunable.  (--heads prunes it: ATTENTION.)
    "real_tf_keras_mha": (r"computed at run time", r"cannot pair input and output axes"),
    # the scaler's per-feature attributes (the features are the graph input anyway)
    "real_sklearn_pipeline_zipmap": (r"per-feature offset/scale",),
    # timm's packed qkv Reshape(B, N, 3, H, D): channels cannot split heads there (--heads does)
    **{name: (r"inner factor of split axis",) for name in ("real_torch_vit_dynamo", "real_torch_vit_ts", "real_zoo_fp16_vit")},
    # TorchScript's cls_token.expand(B, -1, -1) goes through Where(Equal(shape, -1), 1, shape)
    **{name: (r"Expand '/Expand': target shape is computed at run time",) for name in ("real_torch_vit_ts", "real_zoo_fp16_vit")},
}

#: Transformers: attention blocks every export must have (heads pruned, none skipped).
ATTENTION = {
    "real_torch_bert_ts": 2, "real_torch_bert_dynamo": 2,
    "real_torch_gpt2_ts": 2, "real_torch_gpt2_dynamo": 2,
    "real_torch_vit_ts": 2, "real_torch_vit_dynamo": 2, "real_zoo_fp16_vit": 2,
    "real_tf_keras_mha": 1,  # tf2onnx's Einsum lowering, folded back by transformer/tf_einsum.py
}  # fmt: skip
#: Attention models whose FFN --ffn does not reach (Keras Dense's Tensordot lowering,
#: Reshape -> MatMul -> Reshape(Cast(Concat(int32 dims))), is reached: real_tf_keras_mha is not here).
NO_FFN: set[str] = set()


def test_every_committed_model_is_in_the_manifest() -> None:
    assert MODELS, "no real_*.onnx files: run samples/export_real.py"
    assert set(MODELS) == set(MANIFEST["models"])
    total = sum(p.stat().st_size for p in SAMPLES.glob("real_*"))
    assert total < 8_000_000


# ----------------------------------------------------------------------------- helpers


def _path(name: str) -> Path:
    return SAMPLES / f"{name}.onnx"


def _serialize(proto: onnx.ModelProto) -> bytes:
    proto.ir_version = min(proto.ir_version, max_runtime_ir_version())
    return proto.SerializeToString()


def _feeds(proto: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs from the declared signature; integer inputs are ids/masks in range."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in proto.graph.initializer}
    feeds = {}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else DIMS.get(d.dim_param, BATCH)
                 for d in t.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        if dtype.kind == "f":
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif "mask" in vi.name:
            mask = np.ones(shape, dtype)
            mask[..., -2:] = 0
            feeds[vi.name] = mask
        else:  # token ids: below the smallest vocabulary (token types: 0/1)
            feeds[vi.name] = rng.integers(0, 2 if "type" in vi.name else 32, shape).astype(dtype)
    return feeds


def _arrays(outputs: list[Any]) -> list[np.ndarray]:
    """Outputs as float64 arrays (ZipMap's list of dicts becomes a matrix)."""
    out = []
    for o in outputs:
        if isinstance(o, list) and o and isinstance(o[0], dict):
            o = np.array([[d[k] for k in sorted(d)] for d in o])
        out.append(np.asarray(o, dtype=np.float64))
    return out


def _tolerance(name: str, expected: np.ndarray) -> tuple[float, float]:
    """(rtol, atol): float32 as in test_prune_support; float16 a few ulps of the output's scale."""
    peak = float(np.abs(expected).max()) if expected.size else 1.0
    if name in FP16:
        return 1e-2, 1e-2 * max(peak, 1e-3)
    return 1e-4, 1e-5 * max(1.0, peak)


def _assert_close(name: str, actual: list[Any], expected: list[Any], what: str) -> None:
    for a, e in zip(_arrays(actual), _arrays(expected)):
        assert a.shape == e.shape, what
        rtol, atol = _tolerance(name, e)
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=f"{name}: {what}")


def _differs(name: str, a: list[Any], b: list[Any]) -> bool:
    """``a`` and ``b`` differ by more than the oracle's tolerance somewhere."""
    for x, y in zip(_arrays(a), _arrays(b)):
        rtol, atol = _tolerance(name, y)
        if not np.allclose(x, y, rtol=rtol, atol=atol):
            return True
    return False


def _check_reasons(name: str, groups: list[tuple[str, ...]]) -> None:
    """Every skipped group has a reason, and at least one of them is an accepted refusal."""
    accepted = ACCEPTED + ACCEPTED_FOR.get(name, ())
    for reasons in groups:
        assert reasons and all(reasons), f"{name}: a group was skipped without a reason"
        assert any(re.search(p, r) for p in accepted for r in reasons), f"{name}: unexpected skip: {reasons}"


def _prepared(name: str) -> ir.Model:
    model = load_model(_path(name))
    ir.external_data.load_to_model(model)  # the oracle runs models from bytes
    model = normalize(model)
    model.ir_version = max(model.ir_version, 4)
    return model


# ----------------------------------------------------------------------------- inspect


def _shapes(name: str) -> list[str]:
    """``--shape`` for every input (symbolic and anonymous dynamic dims fixed)."""
    proto = onnx.load(str(_path(name)), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    out = []
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.dim_value > 0 else DIMS.get(d.dim_param, 1) for d in vi.type.tensor_type.shape.dim]
        out.append(f"--shape={vi.name}={'x'.join(map(str, dims))}")
    return out


def _inspect(name: str) -> dict[str, Any]:
    code, out, err = cli("inspect", _path(name), "--json", "--all", *_shapes(name))
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("name", MODELS)
def test_inspect(name: str) -> None:
    info = _inspect(name)
    assert info["params"] > 1000
    assert info["params"] == sum(w["params"] for w in info["per_weight"])
    assert info["macs"] and info["macs"] >= info["params"] // 4, info.get("unknown_macs")
    assert not info["unknown_macs"]
    assert "prunable_groups" in info, info.get("prunable_groups_error")
    for group in info["prunable_groups"]:
        assert group["prunable"] or group["reasons"]


@pytest.mark.parametrize("arch", sorted({n[len("real_torch_"):-len("_ts")] for n in MODELS if n.startswith("real_torch_") and n.endswith("_ts")}))
def test_torchscript_and_dynamo_exports_count_the_same_macs(arch: str) -> None:
    ts, dyn = f"real_torch_{arch}_ts", f"real_torch_{arch}_dynamo"
    if dyn not in MODELS:
        pytest.fail(f"{dyn} missing: {MANIFEST['skipped'].get(dyn)}")
    assert _inspect(ts)["macs"] == _inspect(dyn)["macs"]


# ----------------------------------------------------------------------------- prune --channels


@pytest.mark.parametrize("name", MODELS)
def test_prune_channels_matches_masked_model(name: str) -> None:
    model = _prepared(name)
    dg = build_groups(model)
    _check_reasons(name, [g.reasons for g in dg.skipped])
    plan, _ = plan_pruning(dg, 0.3)
    assert plan.removed, f"{name}: nothing to prune"
    original = to_proto(model)
    masked = _serialize(to_proto(masked_copy(model, plan)))
    apply_plan(plan)
    pruned = to_proto(model)
    assert signature(pruned) == signature(original)
    pruned_bytes = _serialize(pruned)
    onnx.checker.check_model(pruned_bytes, full_check=True)
    feeds = _feeds(original)
    expected = session(masked).run(None, feeds)
    actual = session(pruned_bytes).run(None, feeds)
    _assert_close(name, actual, expected, "pruned vs masked")
    reference = session(_serialize(original)).run(None, feeds)
    assert _differs(name, reference, expected), "masking changed nothing: the oracle proves nothing"


# ----------------------------------------------------------------------------- prune --heads --ffn


@pytest.mark.parametrize("name", sorted(ATTENTION))
def test_prune_heads_matches_masked_model(name: str) -> None:
    model = load_model(_path(name))
    ir.external_data.load_to_model(model)
    report = prune_heads(model, heads=0.25, ffn=0.25).report
    skipped = [s for s in report["skipped"] if s["kind"] == "attention"]
    assert not skipped, skipped
    assert len(report["attention"]) == ATTENTION[name]
    for block in report["attention"]:
        assert block["heads_kept"] < block["heads_total"]
    assert bool(report["ffn"]) == (name not in NO_FFN), report["ffn"]
    reference = masked_reference(_path(name), report)
    pruned = to_proto(model)
    onnx.checker.check_model(_serialize(pruned), full_check=True)
    ref_proto = to_proto(reference)
    assert signature(pruned) == signature(ref_proto)
    for seed, dims in enumerate(({"seq": 7}, {"seq": 4})):
        DIMS.update(dims)
        try:
            feeds = _feeds(ref_proto, seed)
        finally:
            DIMS["seq"] = 7
        expected = session(_serialize(ref_proto)).run(None, feeds)
        actual = session(_serialize(pruned)).run(None, feeds)
        _assert_close(name, actual, expected, f"heads pruned vs masked ({dims})")


@pytest.mark.parametrize("name", MODELS)
def test_prune_heads_reports_every_attention_block(name: str) -> None:
    """Models we do not expect attention in report none; a Softmax between two MatMuls is never silent."""
    if name in ATTENTION:
        return
    model = load_model(_path(name))
    report = prune_heads(model, heads=0.25).report
    for s in report["skipped"]:
        assert s["reason"]
    softmax_attention = any(n.op_type == "Softmax" for n in model.graph) and sum(
        n.op_type == "MatMul" and all(i is not None and i.const_value is None for i in n.inputs) for n in model.graph) >= 2
    if softmax_attention:
        assert report["attention"] or [s for s in report["skipped"] if s["kind"] == "attention"]


# ----------------------------------------------------------------------------- sparsify / densify / quantize


@pytest.mark.parametrize("name", MODELS)
def test_sparsify_densify_quantize(name: str, tmp_path: Path) -> None:
    src = _path(name)
    sparse, dense, quant = tmp_path / "s.onnx", tmp_path / "d.onnx", tmp_path / "q.onnx"
    code, out, err = cli("sparsify", src, "-o", sparse, "--sparsity", "0.5", "--min-size", "256", "--json")
    assert code == 0, err
    code, out, err = cli("densify", sparse, "-o", dense, "--json")
    assert code == 0, err
    original = onnx.load(str(src))
    decoded = onnx.load(str(dense))
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in original.graph.initializer}
    for node in original.graph.node:  # paddle2onnx 1.x keeps weights in Constant nodes (lifted under their name)
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            weights.setdefault(node.output[0], onnx.numpy_helper.to_array(node.attribute[0].t))
    zeros = total = 0
    for init in decoded.graph.initializer:
        if init.name not in weights:
            continue
        w, d = weights[init.name], onnx.numpy_helper.to_array(init)
        assert d.shape == w.shape and d.dtype == w.dtype, init.name
        kept = d != 0
        np.testing.assert_array_equal(d[kept], w[kept], err_msg=f"{name}: {init.name} values changed")
        if d.dtype.kind == "f" and d.size >= 256:
            zeros += int((~kept).sum())
            total += d.size
    assert total and zeros >= 0.3 * total, f"{name}: only {zeros}/{total} zeros"
    feeds = _feeds(original)
    from_sparse = session(str(sparse)).run(None, feeds)
    from_dense = session(str(dense)).run(None, feeds)
    _assert_close(name, from_sparse, from_dense, "sparse file vs densified file")

    code, out, err = cli("quantize", dense, "-o", quant, "--mode", "dynamic", "--json")
    if name in FP16:
        assert code == 2 and "float16" in err and len(err.strip().splitlines()) == 1
        assert not quant.exists()
        return
    assert code == 0, err
    report = json.loads(out)
    assert report["zeros"]["exact"] is True, report["zeros"]
    assert report["zeros"]["zeros_kept"] == report["zeros"]["zeros_before"]
    assert session(str(quant)).run(None, feeds)
