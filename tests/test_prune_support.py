"""Shared utilities for the pruning tests (plus tests of the utilities themselves).

* :func:`make_model` builds small models with ``onnx.helper``;
* :func:`randomize` gives normalised models sensible random weights (He-scaled
  conv/linear weights, positive BN variances) so equivalence tests mean
  something even for the onnx "light" models whose weights are all 0.02;
* :func:`check_oracle` is the masked-equivalence oracle: the pruned model must
  match the original model with the removed channels masked at every
  contraction (see ``onnxsparse/graph/masking.py`` for why that masking is
  exact), pass ``onnx.checker`` (full check) and keep the I/O signature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from helpers import run, session
from onnx import TensorProto, helper, numpy_helper

from onnxsparse import normalize
from onnxsparse.graph import DependencyGraph, PrunePlan, apply_plan, build_groups, masked_copy

RTOL = 1e-4
ATOL = 1e-5

__all__ = [
    "make_model",
    "randomize",
    "random_plan",
    "signature",
    "check_oracle",
    "expose_logits",
    "assert_close",
]


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[tuple[str, Sequence[int | str]]],
    outputs: Sequence[tuple[str, Sequence[int | str] | None]],
    inits: Mapping[str, np.ndarray] | None = None,
    *,
    opset: int = 17,
    dtype: int = TensorProto.FLOAT,
) -> ir.Model:
    """A normalised onnx_ir model from nodes, ``(name, dims)`` I/O and initializer arrays."""
    graph = helper.make_graph(
        list(nodes),
        "test",
        [helper.make_tensor_value_info(n, dtype, list(d)) for n, d in inputs],
        [helper.make_tensor_value_info(n, dtype, None if d is None else list(d)) for n, d in outputs],
        [numpy_helper.from_array(np.asarray(a), name) for name, a in (inits or {}).items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    # Outputs declared without dims take the inferred ones (the checker wants a shape).
    inferred = onnx.shape_inference.infer_shapes(proto)
    known = {vi.name: vi for vi in (*inferred.graph.value_info, *inferred.graph.output) if vi.type.tensor_type.HasField("shape")}
    for out, (_, dims) in zip(proto.graph.output, outputs):
        if dims is None and out.name in known:
            out.type.CopyFrom(known[out.name].type)
    onnx.checker.check_model(proto, full_check=True)
    return normalize(ir.from_proto(proto))


def _fan_in(node: ir.Node, index: int, shape: tuple[int, ...]) -> int:
    op = node.op_type
    if op == "Conv":
        return int(np.prod(shape[1:]))
    if op == "ConvTranspose":
        return int(shape[0] * np.prod(shape[2:])) // max(node.attributes.get_int("group", 1), 1)
    if op == "Gemm":
        trans = node.attributes.get_int("transB" if index == 1 else "transA", 0)
        if index == 1:
            return shape[1] if trans else shape[0]
        return shape[0] if trans else shape[1]
    if op == "MatMul":
        return shape[-2] if index == 1 else shape[-1]
    return 1


def randomize(model: ir.Model, seed: int = 0) -> ir.Model:
    """Replace every float initializer by seeded random values of a sensible scale (in place)."""
    rng = np.random.default_rng(seed)
    users: dict[str, tuple[ir.Node, int]] = {}
    for node in model.graph:
        for i, v in enumerate(node.inputs):
            if v is not None and v.is_initializer() and v.name not in users:
                users[v.name] = (node, i)
    for name, value in model.graph.initializers.items():
        arr = value.const_value.numpy()
        if arr.dtype.kind != "f" or name not in users:
            continue
        node, index = users[name]
        shape = arr.shape
        op = node.op_type
        if arr.size == 1:
            continue  # scalars (Clip bounds, eps-like constants) keep their meaning
        if op in ("BatchNormalization",):
            new = {1: rng.uniform(0.5, 1.5, shape), 2: rng.normal(0, 0.2, shape),
                   3: rng.normal(0, 0.2, shape), 4: rng.uniform(0.5, 2.0, shape)}[index]
        elif op in ("InstanceNormalization", "GroupNormalization", "LayerNormalization"):
            new = rng.uniform(0.5, 1.5, shape) if index == 1 else rng.normal(0, 0.2, shape)
        elif op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and index in (0, 1) and arr.ndim >= 2:
            new = rng.normal(0, np.sqrt(2.0 / max(_fan_in(node, index, shape), 1)), shape)
        elif op in ("Mul", "Div", "PRelu"):
            new = rng.uniform(0.5, 1.5, shape)
        else:
            new = rng.normal(0, 0.2, shape)
        value.const_value = ir.Tensor(np.asarray(new, dtype=arr.dtype), name=name)
    return model


def expose_logits(model: ir.Model) -> ir.Model:
    """Add the input of every Softmax as a graph output (softmax hides differences)."""
    names = {v.name for v in model.graph.outputs}
    for node in model.graph:
        if node.op_type == "Softmax" and node.inputs[0].name not in names:
            model.graph.outputs.append(node.inputs[0])
    return model


def random_plan(dg: DependencyGraph, ratio: float, seed: int = 0) -> PrunePlan:
    """Remove a random ``ratio`` of every prunable group (at least one unit when possible)."""
    rng = np.random.default_rng(seed)
    removed = {}
    for g in dg.prunable:
        k = min(max(int(g.size * ratio), 1), g.size - 1)
        removed[g.id] = rng.choice(g.size, k, replace=False)
    return PrunePlan.create(dg, removed)


def signature(proto: onnx.ModelProto) -> tuple:
    def dims(vi):
        t = vi.type.tensor_type
        return (t.elem_type, tuple(d.dim_param or d.dim_value for d in t.shape.dim))

    return (
        tuple((v.name, dims(v)) for v in proto.graph.input),
        tuple((v.name, dims(v)) for v in proto.graph.output),
    )


def assert_close(actual: Sequence[np.ndarray], expected: Sequence[np.ndarray], rtol: float = RTOL, atol: float = ATOL) -> None:
    """Elementwise ``rtol`` plus ``atol`` scaled by the output's magnitude (never loose)."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        scale = max(1.0, float(np.max(np.abs(e)))) if e.size else 1.0
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol * scale)


_NP_TYPES = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64,
             TensorProto.INT64: np.int64, TensorProto.INT32: np.int32, TensorProto.BOOL: np.bool_}


def feeds_for(proto: onnx.ModelProto, batch: int = 2, seed: int = 0, dims: Mapping[str, int] | None = None) -> dict:
    """Random inputs from the declared signature (symbolic dims: ``dims[name]`` else ``batch``)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in proto.graph.input:
        t = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (dims or {}).get(d.dim_param, batch) for d in t.shape.dim]
        dtype = _NP_TYPES[t.elem_type]
        if np.dtype(dtype).kind == "f":
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[vi.name] = rng.integers(0, 2, shape).astype(dtype)
    return feeds


def _serialize(proto: onnx.ModelProto) -> bytes:
    from onnxsparse.io import max_runtime_ir_version

    proto.ir_version = min(proto.ir_version, max_runtime_ir_version())
    return proto.SerializeToString()


#: above this many weight bytes the "masking changed the output" guard (a third session) is skipped
_GUARD_LIMIT = 200 << 20


def check_oracle(
    model: ir.Model,
    plan: PrunePlan | None = None,
    *,
    ratio: float = 0.3,
    seed: int = 0,
    batch: int = 2,
    dims: Mapping[str, int] | None = None,
    rtol: float = RTOL,
    atol: float = ATOL,
    require_pruning: bool = True,
) -> tuple[PrunePlan, onnx.ModelProto]:
    """Prune ``model`` (in place) by ``plan`` (random if ``None``) and check it against the masked model."""
    if plan is None:
        plan = random_plan(build_groups(model), ratio, seed)
    if require_pruning:
        assert plan.removed, "nothing to prune: the oracle would be vacuous"
    original = ir.to_proto(model)
    masked = _serialize(ir.to_proto(masked_copy(model, plan)))
    apply_plan(plan)
    pruned = ir.to_proto(model)
    assert signature(pruned) == signature(original)
    pruned_bytes = _serialize(pruned)
    onnx.checker.check_model(pruned_bytes, full_check=True)
    feeds = feeds_for(original, batch=batch, seed=seed + 1, dims=dims)
    expected = run(session(masked), feeds)
    actual = run(session(pruned_bytes), feeds)
    assert_close(actual, expected, rtol, atol)
    weight_bytes = sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)
    if plan.removed and weight_bytes < _GUARD_LIMIT:  # masking must matter, or the test proves nothing
        reference = run(session(_serialize(original)), feeds)
        assert any(not np.allclose(r, e, rtol=1e-3, atol=1e-4) for r, e in zip(reference, expected))
    return plan, pruned


# ----------------------------------------------------------------- self-tests


def test_randomize_gives_positive_variances_and_new_values() -> None:
    x = np.ones(4, np.float32)
    model = make_model(
        [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])],
        [("x", [1, 4, 2, 2])],
        [("y", [1, 4, 2, 2])],
        {"s": x, "b": x, "m": x, "v": x},
    )
    randomize(model, seed=3)
    var = model.graph.initializers["v"].const_value.numpy()
    assert (var > 0).all() and not np.allclose(var, 1)


def test_assert_close_fails_on_real_differences() -> None:
    import pytest

    with pytest.raises(AssertionError):
        assert_close([np.array([1.0, 2.0])], [np.array([1.0, 2.01])])
    assert_close([np.array([1000.0])], [np.array([1000.0 + 1e-3])])
