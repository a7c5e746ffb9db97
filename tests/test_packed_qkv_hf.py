"""Column-packed projections of Hugging Face exports, split before matching (``packed_qkv.py``).

* The split alone (no pruning) is exact on every GPT-2 / Phi-3 / GPT-NeoX corpus export and leaves
  no packed weight behind (GPT-2's ``c_attn``, Phi-3's ``qkv_proj`` and ``gate_up_proj``, GPT-NeoX's
  per-head interleaved ``query_key_value``).
* Hand-built forms that are not an exact column split are left alone: overlapping or gapped Slices,
  a Reshape whose last entry does not divide the packed width, a Split on another axis, pieces that
  are graph outputs.
* A hand-built per-head interleaved projection (``[B, S, H, 3D]`` then a last-axis Split) is split
  into the right columns: head *h*'s Q is columns ``h*3D .. h*3D+D-1``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from helpers import ROOT
from onnx import TensorProto, helper, numpy_helper

from onnxsparse import load_model, normalize
from onnxsparse.io import max_runtime_ir_version
from onnxsparse.transformer.packed_qkv import fold_own_dim_targets, unpack_packed_qkv

CORPUS = ROOT / "samples" / "corpus"
PACKED = [n for n in ("gpt2_sdpa_ts", "gpt2_sdpa_dynamo", "gpt2_eager_ts", "gpt2_eager_dynamo",
                      "phi3_sdpa_ts", "phi3_sdpa_dynamo", "gpt_neox_sdpa_ts", "gpt_neox_sdpa_dynamo")
          if (CORPUS / f"{n}.onnx").exists()]
#: packed projections per export (2 layers): c_attn; qkv_proj + gate_up_proj; query_key_value
PACKED_COUNT = {"gpt2": 2, "phi3": 4, "gpt_neox": 2}


def _run(model: ir.Model | onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    proto.ir_version = min(proto.ir_version, max_runtime_ir_version())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize("name", PACKED)
def test_split_alone_is_exact(name: str) -> None:
    path = CORPUS / f"{name}.onnx"
    original = onnx.load(str(path))
    model = load_model(path)
    normalize(model)
    packed = {n.name: n.inputs[1].name for n in model.graph if n.op_type in ("MatMul", "Gemm")}
    done = unpack_packed_qkv(model.graph)
    assert len(done) == PACKED_COUNT[name.rsplit("_", 2)[0]], done
    fold_own_dim_targets(model.graph)
    names = {n.name for n in model.graph}
    for node_name in done:  # the packed projection and its weight are gone
        assert node_name not in names and packed[node_name] not in model.graph.initializers
    rng = np.random.default_rng(1)
    feeds = {"input_ids": rng.integers(3, 128, (2, 11)).astype(np.int64)}
    if any(i.name == "attention_mask" for i in original.graph.input):
        feeds["attention_mask"] = np.ones((2, 11), np.int64)
    for a, b in zip(_run(original, feeds), _run(model, feeds)):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * float(np.abs(a).max()))


def _packed_model(tail: str, heads: int = 2, d: int = 4, bias: bool = True) -> onnx.ModelProto:
    """x [B, S, 8] -> MatMul(W [8, 3*H*D]) (+ b) -> ``tail`` -> q, k, v outputs."""
    rng = np.random.default_rng(0)
    n = 3 * heads * d
    inits = [numpy_helper.from_array(rng.standard_normal((8, n)).astype(np.float32), "W")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["mm"])]
    cur = "mm"
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b"))
        nodes.append(helper.make_node("Add", [cur, "b"], ["p"]))
        cur = "p"
    outs = ["q", "k", "v"]

    def const(name: str, values: list[int] | int, dtype=np.int64) -> str:
        inits.append(numpy_helper.from_array(np.array(values, dtype), name))
        return name

    if tail in ("split", "split_as_outputs"):
        nodes.append(helper.make_node("Split", [cur, const("sizes", [heads * d] * 3)], outs, axis=-1))
    elif tail == "split_axis1":
        nodes.append(helper.make_node("Split", [cur], outs, axis=1, num_outputs=3))
    elif tail in ("slices", "slices_overlap", "slices_gap"):
        w = heads * d
        bounds = {"slices": [(0, w), (w, 2 * w), (2 * w, 1 << 62)],
                  "slices_overlap": [(0, w + 1), (w, 2 * w), (2 * w, 3 * w)],
                  "slices_gap": [(0, w - 1), (w, 2 * w), (2 * w, 3 * w)]}[tail]
        for i, (s, e) in enumerate(bounds):
            nodes.append(helper.make_node("Slice", [cur, const(f"s{i}", [s]), const(f"e{i}", [e]), const(f"a{i}", [-1])],
                                          [outs[i]]))
    elif tail in ("interleaved", "bad_reshape"):
        last = 3 * d if tail == "interleaved" else 5
        nodes.append(helper.make_node("Reshape", [cur, const("shape", [0, 0, -1, last])], ["r"]))
        nodes.append(helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Split", ["t"], outs, axis=3, num_outputs=3))
    elif tail in ("interleaved_runtime", "interleaved_runtime_int32"):
        # TorchScript's ``view(b, s, H, 3D)``: the target read at run time, the last entry a constant;
        # tf2onnx-style int32 pieces behind a Cast in the second form
        dtype = np.int32 if tail.endswith("int32") else np.int64
        nodes.append(helper.make_node("Shape", ["x"], ["sh"]))  # a target reading the packed value is refused
        pieces = []
        for i in (0, 1):
            nodes.append(helper.make_node("Gather", ["sh", const(f"i{i}", i)], [f"g{i}"], axis=0))
            src = f"g{i}"
            if dtype is np.int32:
                nodes.append(helper.make_node("Cast", [src], [f"g{i}_32"], to=TensorProto.INT32))
                src = f"g{i}_32"
            nodes.append(helper.make_node("Unsqueeze", [src, const(f"u{i}", [0])], [f"d{i}"]))
            pieces.append(f"d{i}")
        concat_out = "shape32" if dtype is np.int32 else "shape"
        nodes.append(helper.make_node("Concat", [*pieces, const("tail", [heads, 3 * d], dtype)], [concat_out], axis=0))
        if dtype is np.int32:
            nodes.append(helper.make_node("Cast", ["shape32"], ["shape"], to=TensorProto.INT64))
        nodes.append(helper.make_node("Reshape", [cur, "shape"], ["r"]))
        nodes.append(helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Split", ["t"], outs, axis=3, num_outputs=3))
    results = outs
    if not tail.endswith("_as_outputs"):
        results = [f"{o}_out" for o in outs]
        nodes += [helper.make_node("Identity", [o], [r]) for o, r in zip(outs, results)]
    for i, node in enumerate(nodes):
        node.name = f"{node.op_type}_{i}"
    graph = helper.make_graph(nodes, "packed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 8])],
                              [helper.make_tensor_value_info(r, TensorProto.FLOAT, None) for r in results], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


@pytest.mark.parametrize("tail", ["split", "slices", "interleaved", "interleaved_runtime", "interleaved_runtime_int32"])
def test_hand_built_forms_are_split_exactly(tail: str) -> None:
    proto = _packed_model(tail)
    model = ir.from_proto(proto)
    assert unpack_packed_qkv(model.graph)
    assert "W" not in model.graph.initializers
    x = np.random.default_rng(2).standard_normal((2, 5, 8)).astype(np.float32)
    for a, b in zip(_run(proto, {"x": x}), _run(model, {"x": x})):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


def test_interleaved_columns_are_per_head() -> None:
    heads, d = 2, 4
    model = ir.from_proto(_packed_model("interleaved", heads, d, bias=False))
    w = model.graph.initializers["W"].const_value.numpy()
    unpack_packed_qkv(model.graph)
    q = next(n for n in model.graph if n.op_type == "MatMul" and n.name.endswith(".q"))
    expected = np.concatenate([w[:, h * 3 * d: h * 3 * d + d] for h in range(heads)], axis=1)
    np.testing.assert_array_equal(q.inputs[1].const_value.numpy(), expected)


@pytest.mark.parametrize("tail", ["split_axis1", "slices_overlap", "slices_gap", "bad_reshape", "split_as_outputs"])
def test_forms_that_are_not_a_column_split_are_left_alone(tail: str) -> None:
    model = ir.from_proto(_packed_model(tail))
    before = [n.op_type for n in model.graph]
    assert unpack_packed_qkv(model.graph) == []
    assert [n.op_type for n in model.graph] == before



@pytest.mark.parametrize("tail", ["interleaved_runtime", "interleaved_runtime_int32"])
def test_runtime_target_is_copied_per_piece(tail: str) -> None:
    """Each piece's Reshape gets its own copy of the run-time target (``_runtime_shape.set_entries``)
    with the last entry set to its width; the batch and sequence stay read at run time, and the
    packed target's nodes are gone with the packed projection."""
    heads, d = 2, 4
    model = ir.from_proto(_packed_model(tail, heads, d))
    assert unpack_packed_qkv(model.graph)
    reshapes = [n for n in model.graph if n.op_type == "Reshape"]
    assert len(reshapes) == 3
    for rs in reshapes:
        target = rs.inputs[1].producer()
        concat = target.inputs[0].producer() if target.op_type == "Cast" else target
        assert concat.op_type == "Concat" and concat.inputs[-1].const_value.numpy().tolist() == [heads, d]
        assert concat.inputs[-1].const_value.numpy().dtype == (np.int32 if tail.endswith("int32") else np.int64)
        assert concat.inputs[0].producer().op_type == "Unsqueeze"  # still read from the input's shape
    assert len({id(rs.inputs[1]) for rs in reshapes}) == 3
    assert all(n.outputs[0].name not in ("shape", "shape32") for n in model.graph)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_packed_gemm_is_split_in_its_own_layout(trans_b: int) -> None:
    """A packed ``Gemm`` (``x [B, 8]``, ``W`` stored ``[K, N]`` or, with ``transB``, ``[N, K]``) splits into
    Gemms that keep the stored layout and ``transB``, and match the packed output exactly."""
    rng = np.random.default_rng(3)
    n = 12
    w = rng.standard_normal((8, n)).astype(np.float32)
    inits = [numpy_helper.from_array(w.T.copy() if trans_b else w, "W"),
             numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([4, 4, 4], np.int64), "sizes")]
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["p"], name="gemm", transB=trans_b),
             helper.make_node("Split", ["p", "sizes"], ["q", "k", "v"], name="split", axis=-1)]
    nodes += [helper.make_node("Identity", [o], [f"{o}_out"], name=f"id_{o}") for o in "qkv"]
    graph = helper.make_graph(nodes, "packed_gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 8])],
                              [helper.make_tensor_value_info(f"{o}_out", TensorProto.FLOAT, None) for o in "qkv"], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 8
    proto = onnx.shape_inference.infer_shapes(proto)
    model = ir.from_proto(proto)
    assert unpack_packed_qkv(model.graph) == ["gemm"]
    gemms = [node for node in model.graph if node.op_type == "Gemm"]
    assert len(gemms) == 3
    for i, node in enumerate(gemms):
        assert node.attributes.get_int("transB", 0) == trans_b
        weight = node.inputs[1]
        assert weight is not None and weight.const_value is not None
        stored = weight.const_value.numpy()
        np.testing.assert_array_equal(stored, w[:, 4 * i:4 * i + 4].T if trans_b else w[:, 4 * i:4 * i + 4])
    x = rng.standard_normal((3, 8)).astype(np.float32)
    for a, b in zip(_run(proto, {"x": x}), _run(model, {"x": x})):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
