"""Sparse storage survives onnxscript's optimizer (issue 14).

``onnxscript.optimizer.optimize_ir`` folds every node whose inputs are constants;
decode subgraphs read their payload through guards it never folds
(``formats._graph``), so the stored tensors stay stored, decode bit-exactly and
the file stays small.  A tool that does fold them leaves stale metadata, which
``densify`` drops with a warning.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from helpers import random_feeds, run, sample
from onnxscript import optimizer

from onnxsparse import formats as F
from onnxsparse.io import load_model, max_runtime_ir_version
from onnxsparse.passes.densify import densify
from onnxsparse.passes.sparsify import sparsify

DECODERS = [(fmt, decoder) for fmt in ("bitmask", "delta", "csr", "bsr") for decoder in F.FORMATS.get(fmt).decoders]


def _stored(fmt: str, decoder: str) -> tuple[ir.Model, dict[str, np.ndarray]]:
    """digits_cnn pruned to 70% and stored in ``fmt``, and the dense pruned weights it must decode to."""
    model = load_model(sample("digits_cnn"))
    sparsify(model, sparsity=0.7, format=fmt, decoders={fmt: decoder}, min_size=1000)
    specs = F.read_storage(model)
    assert specs and {s.format for s in specs.values()} == {fmt}
    expected = {name: F.decode_stored(model, spec) for name, spec in specs.items()}
    return model, expected


def _arrays(model: ir.Model) -> dict[str, int]:
    """Initializer name -> element count."""
    return {name: value.const_value.size for name, value in model.graph.initializers.items()}


def _assert_nothing_folded(before: dict[str, int], model: ir.Model) -> None:
    """No new initializer beyond a few elements (a folded weight or fill buffer), none grown or lost."""
    after = _arrays(model)
    assert {name: size for name, size in after.items() if name not in before and size > 8} == {}
    assert {name: size for name, size in before.items() if after.get(name) != size} == {}


def _value(model: ir.Model, name: str) -> ir.Value:
    return next(v for node in model.graph for v in node.outputs if v.name == name)


def _assert_decodes(model: ir.Model, expected: dict[str, np.ndarray]) -> None:
    densify(model)
    for name, array in expected.items():
        got = model.graph.initializers[name].const_value.numpy()
        assert got.dtype == array.dtype and np.array_equal(got.view(np.uint8), array.view(np.uint8)), name
    assert not F.read_storage(model)
    assert not any(F.is_decode_node(node) for node in model.graph)


@pytest.mark.parametrize(("fmt", "decoder"), DECODERS)
def test_optimize_ir_keeps_storage(fmt: str, decoder: str) -> None:
    model, expected = _stored(fmt, decoder)
    arrays = _arrays(model)
    feeds = random_feeds(model, seed=3)
    before = run(model, feeds)
    optimizer.optimize_ir(model)
    assert set(F.read_storage(model)) == set(expected)
    _assert_nothing_folded(arrays, model)
    for x, y in zip(before, run(model, feeds)):
        assert np.array_equal(x, y)
    _assert_decodes(model, expected)


def test_optimize_modelproto_keeps_storage() -> None:
    model, expected = _stored("delta", "unpool")
    proto = optimizer.optimize(ir.to_proto(model))
    optimized = load_model(proto)
    assert set(F.read_storage(optimized)) == set(expected)
    _assert_nothing_folded(_arrays(model), optimized)
    _assert_decodes(optimized, expected)


def test_onnxruntime_still_folds_the_decode(tmp_path) -> None:
    model, _ = _stored("bitmask", "scatter")
    optimizer.optimize_ir(model)
    proto = ir.to_proto(model)
    proto.ir_version = min(proto.ir_version, max_runtime_ir_version())
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "folded.onnx")
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    folded = load_model(tmp_path / "folded.onnx")
    left = [node.op_type for node in folded.graph if (node.name or "").startswith(F.NODE_PREFIX)]
    assert left == [], left  # guards included: nothing decodes at inference time


def test_densify_drops_stale_metadata(caplog) -> None:
    model, expected = _stored("csr", "unpool")
    readers = {name: [(use.node.name, use.idx) for use in _value(model, name).uses()] for name in expected}
    # a folder that ignores the guards turns every decode subgraph into a dense initializer
    # (onnxscript 0.5 names it after the folded node, later versions keep the tensor's name)
    optimizer.fold_constants(model, input_size_limit=1 << 30, output_size_limit=1 << 30,
                             should_fold=lambda node: True)
    assert set(F.read_storage(model)) == set(expected)  # the metadata is now stale
    with caplog.at_level(logging.WARNING, logger="onnxsparse.formats.storage"):
        densify(model)
    assert not F.read_storage(model)
    assert sum("decode nodes are gone" in r.getMessage() for r in caplog.records) == len(expected)
    nodes = {node.name: node for node in model.graph}
    for name, array in expected.items():
        for node, index in readers[name]:
            assert np.array_equal(nodes[node].inputs[index].const_value.numpy(), array)


def test_densify_evaluates_when_payload_initializers_are_renamed(caplog) -> None:
    model, expected = _stored("delta", "unpool")
    name = next(iter(expected))
    payload = F.read_storage(model)[name].inputs["values"]
    model.graph.initializers[payload].name = payload + ".renamed"  # e.g. an initializer deduplication
    with caplog.at_level(logging.WARNING, logger="onnxsparse.formats.storage"):
        _assert_decodes(model, expected)
    assert any("missing initializers" in r.getMessage() for r in caplog.records)


def test_densify_cli_warns_about_stale_metadata(tmp_path) -> None:
    import subprocess
    import sys

    from onnxsparse.io import save_model

    model, expected = _stored("bitmask", "scatter")
    optimizer.fold_constants(model, input_size_limit=1 << 30, output_size_limit=1 << 30,
                             should_fold=lambda node: True)
    save_model(model, tmp_path / "stale.onnx")
    done = subprocess.run([sys.executable, "-m", "onnxsparse", "densify", str(tmp_path / "stale.onnx"), "-o",
                           str(tmp_path / "dense.onnx")], capture_output=True, text=True, check=False)
    code, err = done.returncode, done.stderr  # the CLI's log handler writes to the process's stderr
    assert code == 0, err
    assert err.count("decode nodes are gone; dropping the entry") == len(expected)
    assert not F.read_storage(load_model(tmp_path / "dense.onnx"))
