"""Residual blocks (:mod:`onnxsparse.passes.blocks`): found by structure, removed exactly.

Oracle: removing a block's branch must give exactly the outputs of the model whose branch output
``f(x)`` is replaced by zeros, at batch 3 x sequence 6 (the exports used 2 x 7), with onnxruntime's
graph optimisations off on both sides (so no fusion difference can hide or fake a mismatch).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from helpers import ROOT, random_feeds, sample

from onnxsparse.errors import UsageError
from onnxsparse.io import load_model
from onnxsparse.passes.blocks import find_blocks, remove_blocks, remove_found
from onnxsparse.passes.prune import prepare_for_analysis

CORPUS = ROOT / "samples" / "corpus"
DIMS = {"batch": 3, "seq": 6}  # the exports used batch 2, sequence 7 (samples/export_*.py)


@functools.cache
def _analysed(path: Path) -> ir.Model:
    return prepare_for_analysis(load_model(path))


def _prepared(path: Path) -> ir.Model:
    """A fresh copy of the model as sensitivity analyses it."""
    return _analysed(path).clone()


@functools.cache
def _blocks(path: Path) -> tuple:
    return tuple(find_blocks(_prepared(path)))


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    from onnxsparse.io import max_runtime_ir_version

    proto = ir.to_proto(model)
    proto.ir_version = min(proto.ir_version, max_runtime_ir_version())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})


def _zeroed(path: Path, adds: list[str]) -> ir.Model:
    """The masked oracle: the branch input of each named Add replaced by zeros of its shape."""
    model = _prepared(path)
    blocks = {b.add: b for b in _blocks(path)}
    nodes = {n.name: n for n in model.graph}
    for name in adds:
        add = nodes[name]
        index = 1 - blocks[name].x_index
        fx = add.inputs[index]
        shape = ir.node("Shape", [fx])
        zero = ir.node("ConstantOfShape", [shape.outputs[0]],
                       attributes={"value": ir.tensor(np.zeros(1, fx.dtype.numpy()))})
        model.graph.insert_before(add, [shape, zero])
        add.replace_input_with(index, zero.outputs[0])
    return model


def _feeds(path: Path) -> dict[str, np.ndarray]:
    feeds = random_feeds(path, batch=DIMS["batch"], seed=1, dims=DIMS)
    if "input_ids" in feeds:
        feeds["input_ids"] = np.random.default_rng(2).integers(0, 50, feeds["input_ids"].shape).astype(np.int64)
    if "attention_mask" in feeds:
        feeds["attention_mask"] = np.ones_like(feeds["attention_mask"])
        feeds["attention_mask"][0, -2:] = 0
    return feeds


def _assert_exact(path: Path, ids: list[int], *, search_again: bool) -> None:
    """``search_again``: through :func:`remove_blocks` (a new search), else :func:`remove_found`."""
    blocks = _blocks(path)
    adds = [blocks[i].add for i in ids]
    feeds = _feeds(path)
    if search_again:
        removed = remove_blocks(_prepared(path), ids)
    else:
        removed = _prepared(path)
        remove_found(removed, [blocks[i] for i in ids])
    names = {n.name for n in removed.graph}
    assert not any(n in names for i in ids for n in blocks[i].nodes), "branch nodes left behind"
    got = _run(removed, feeds)
    want = _run(_zeroed(path, adds), feeds)
    reference = _run(_prepared(path), feeds)
    assert [o.name for o in removed.graph.outputs] == [o.name for o in _prepared(path).graph.outputs]
    for g, w, r in zip(got, want, reference):
        assert g.shape == w.shape == r.shape
        np.testing.assert_array_equal(g, w)
    assert any(not np.array_equal(g, r) for g, r in zip(got, reference)), "removal changed nothing"


CASES = {
    # path: (removable blocks, declined blocks)
    sample("digits_transformer"): (4, 0),
    sample("hf_bert_eager_ts"): (4, 0),
    sample("hf_llama_sdpa_dynamo"): (4, 0),
    sample("real_torch_resnet18_dynamo"): (5, 3),
    CORPUS / "resnet_none_ts.onnx": (1, 1),
    sample("real_torch_resnet_bottleneck_ts"): (1, 4),
    # parallel attention + MLP: Add(mlp, attn) is declined, Add(that, x) removes the whole layer
    CORPUS / "gpt_neox_sdpa_dynamo.onnx": (2, 2),
    sample("real_tf_keras_mha"): (2, 0),
    sample("mobilenet_block"): (2, 0),
    sample("real_torch_mobilenetv2_ts"): (4, 0),
}


@pytest.mark.parametrize("path", list(CASES), ids=lambda p: p.stem)
def test_each_block_and_all_blocks_equal_the_zeroed_branch(path: Path) -> None:
    blocks = _blocks(path)
    removable = [b.id for b in blocks if b.removable]
    assert (len(removable), len(blocks) - len(removable)) == CASES[path]
    for b in blocks:
        if b.removable:
            assert b.nodes and b.macs and b.macs > 0 and b.params > 0
    for i in removable[:2]:
        _assert_exact(path, [i], search_again=False)
    _assert_exact(path, removable, search_again=True)


def test_transformer_blocks_are_attention_and_mlp_of_each_layer() -> None:
    blocks = find_blocks(_prepared(sample("hf_llama_sdpa_dynamo")))
    ops = [{n.op_type for n in _prepared(sample("hf_llama_sdpa_dynamo")).graph if n.name in b.nodes} for b in blocks]
    # attention sub-blocks read the shared rotary tables / mask (side inputs); MLP sub-blocks read only x
    assert [bool(b.side_inputs) for b in blocks] == [True, False, True, False]
    assert all("MatMul" in o for o in ops)
    # the residual stream: each block's x is the previous block's Add output
    adds = {b.add: b for b in blocks}
    model = _prepared(sample("hf_llama_sdpa_dynamo"))
    outputs = {n.name: n.outputs[0].name for n in model.graph if n.name in adds}
    assert [b.x for b in blocks[1:]] == [outputs[b.add] for b in blocks[:-1]]


def test_downsample_shortcuts_are_declined_with_the_shape_change() -> None:
    blocks = find_blocks(_prepared(sample("real_torch_resnet18_ts")))
    declined = [b for b in blocks if not b.removable]
    assert len(declined) == 3
    for b in declined:
        assert "projection/downsample" in b.reason and "->" in b.reason
        with pytest.raises(UsageError, match="cannot be removed"):
            remove_blocks(_prepared(sample("real_torch_resnet18_ts")), [b.id])
    with pytest.raises(UsageError, match="no residual block 99"):
        remove_blocks(_prepared(sample("real_torch_resnet18_ts")), [99])


def test_densenet_has_no_residual_add() -> None:
    assert find_blocks(_prepared(sample("densenet_block"))) == []


def _broadcast_model(path: Path) -> None:
    """``y = x + Conv(GlobalAveragePool(x))``: f(x) is N x C x 1 x 1, broadcast over x's H x W."""
    from onnx import TensorProto, helper

    w = np.random.default_rng(0).standard_normal((4, 4, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
         helper.make_node("Conv", ["p", "w"], ["f"]),
         helper.make_node("Add", ["x", "f"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 5, 5])],
        [onnx.numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)


def test_broadcast_branch_is_declined(tmp_path: Path) -> None:
    path = tmp_path / "se.onnx"
    _broadcast_model(path)
    (block,) = find_blocks(load_model(path))
    assert not block.removable and "broadcasts" in block.reason and "x batchx4x5x5" in block.reason and "batchx4x1x1" in block.reason


def test_graph_output_add_keeps_its_name(tmp_path: Path) -> None:
    """A block whose Add output is the graph output: an Identity keeps the output name."""
    from onnx import TensorProto, helper

    w = np.random.default_rng(0).standard_normal((4, 4, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("Conv", ["r", "w"], ["f"], pads=[1, 1, 1, 1]),
         helper.make_node("Add", ["r", "f"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 5, 5])],
        [onnx.numpy_helper.from_array(w, "w")])
    path = tmp_path / "res.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    (block,) = find_blocks(load_model(path))
    assert block.removable and block.x == "r" and block.macs == 4 * 4 * 9 * 25 and block.params == w.size
    model = remove_blocks(load_model(path), [0])
    assert [o.name for o in model.graph.outputs] == ["y"] and "w" not in model.graph.initializers
    x = np.random.default_rng(1).standard_normal((2, 4, 5, 5)).astype(np.float32)
    (y,) = _run(model, {"x": x})
    np.testing.assert_array_equal(y, np.maximum(x, 0))


def test_inspect_lists_found_and_declined_blocks() -> None:
    from helpers import cli, cli_json

    data = cli_json("inspect", str(sample("real_torch_resnet18_ts")), "--json")
    blocks = data["residual_blocks"]
    assert [b["removable"] for b in blocks] == [True, True, False, True, False, True, False, True]
    assert all(b["macs"] > 0 and b["params"] > 0 for b in blocks if b["removable"])
    assert all("batchx" in b["reason"] and "downsample" in b["reason"] for b in blocks if not b["removable"])
    code, out, err = cli("inspect", str(sample("real_torch_resnet18_ts")))
    assert code == 0, err
    assert "Residual blocks (x + f(x), removable whole): 5 of 8" in out
    code, out, err = cli("inspect", str(sample("densenet_block")))
    assert code == 0 and "Residual blocks: none" in out, err
