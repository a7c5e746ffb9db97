"""Properties over random valid graphs (:mod:`graphgen`): residuals, concats, splits, grouped and
depthwise convs, reshapes into tokens, MLPs and decomposed multi-head attention.

1. ``prune(model, channels=r, heads=h)`` (criterion l2 or random; round_to 1, 2 or auto; per-group or
   global ranking) gives a model that passes the full checker, keeps the I/O signature (symbolic batch
   included), runs at batch 3 (the MAC count binds the batch to 1) and computes what the original computes
   with the removed units masked (:func:`helpers.assert_pruned_matches_masked`).  On graphs with attention,
   every multi-head block is one head group and pruning heads alone passes the same oracle.
2. A pass twice is safe: pruning the pruned model at ratio 0 removes nothing and keeps the outputs bit
   for bit; pruning it again at ``r`` passes the same oracle.
3. ``sparsify`` (on 4x wider graphs, so that weights outgrow their decode graphs) in every format stores
   the zeroed weights so that ``densify`` gives them back bit-exactly (in memory and through a saved file)
   and the stored model's outputs equal the dense zeroed model's bit for bit; sparsifying the stored
   model again writes the same model.
4. The dependency graph's index maps stay inside their slots, units never share a position, slot sizes
   are the tensors' sizes, and keep-masks remove exactly the mapped positions.

Every property is ``derandomize=True`` (the same examples on every run).  Examples whose masking
changes nothing (the removed units are dead, e.g. negative before a Relu, for the drawn inputs) prove
nothing and are rejected, not passed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from graphgen import Graph, graphs
from helpers import assert_pruned_matches_masked, random_feeds, run, runtime_bytes
from hypothesis import event, given, reject, settings
from hypothesis import strategies as st
from test_formats_util import initializer_arrays, same_bits
from test_prune_support import signature

import onnxsparse
from onnxsparse import load_model
from onnxsparse.graph import PrunePlan, build_groups, masked_copy
from onnxsparse.graph.kinds import HEAD_KINDS
from onnxsparse.passes.prune import PruneResult, prepare_for_analysis

#: the batch every property runs at (the analysis binds symbolic dims to 1 for its MAC count)
BATCH = 3
FORMATS = ("auto", "csr", "bsr", "bitmask", "delta", "coo")
#: channel multiplier of the sparse-storage graphs: a decode graph costs ~0.4-6 KB, smaller weights stay dense
WIDTH = 4
PROPERTY = settings(max_examples=40, deadline=None, derandomize=True)

ratios = st.sampled_from([0.25, 0.5, 0.75])
head_ratios = st.sampled_from([0.0, 0.5, 0.75])
criteria = st.sampled_from(["l2", "random"])


def _prune(proto: onnx.ModelProto, channels: float, heads: float, criterion: str, round_to: int | str = 1,
           global_ranking: bool = False) -> PruneResult:
    return onnxsparse.prune(proto, channels=channels, heads=heads, criterion=criterion, round_to=round_to,
                            global_ranking=global_ranking, measure=False)


def _check_pruned(graph: Graph, source: onnx.ModelProto, result: PruneResult, seed: int = 1) -> onnx.ModelProto:
    """The oracle for one ``prune`` run on ``source``: returns the pruned model as a proto."""
    pruned = ir.to_proto(result.model)
    assert signature(pruned) == signature(source), graph
    pruned_bytes = runtime_bytes(pruned)
    onnx.checker.check_model(pruned_bytes, full_check=True)
    # The masked oracle needs the analysed model before the rewrite: redo the analysis on a fresh copy
    # (deterministic: the same groups, asserted) and mask the groups prune removed.
    fresh = prepare_for_analysis(load_model(source))
    dg = build_groups(fresh)
    assert [str(g.root) for g in dg.groups] == [str(g.root) for g in result.plan.graph.groups], graph
    plan = PrunePlan.create(dg, dict(result.plan.removed))
    assert plan.removed == result.plan.removed, graph
    if not plan.removed:
        event("nothing removed")
        _assert_same_outputs(pruned_bytes, runtime_bytes(source), _feeds(source, seed))
        return pruned
    kinds = {dg.groups[gid].kind for gid in plan.removed}
    for kind in sorted(kinds):
        event(f"removed {kind}s")
    masked = runtime_bytes(masked_copy(fresh, plan))
    try:
        assert_pruned_matches_masked(repr(graph), runtime_bytes(fresh), masked, pruned_bytes, _feeds(source, seed))
    except AssertionError as exc:
        if "masking changed nothing" in str(exc):  # checked after every output matched: a vacuous example
            reject()
        raise
    return pruned


def _feeds(model: onnx.ModelProto, seed: int) -> dict[str, np.ndarray]:
    return random_feeds(model, batch=BATCH, seed=seed)


def _assert_same_outputs(a: object, b: object, feeds: dict[str, np.ndarray]) -> None:
    """Bit for bit (``a``, ``b``: anything :func:`helpers.run` takes)."""
    outputs = run(a, feeds), run(b, feeds)
    assert len(outputs[0]) == len(outputs[1])
    for x, y in zip(*outputs):
        assert same_bits(x, y)


# ------------------------------------------------------------------ 1. prune matches the masked model


@PROPERTY
@given(graph=graphs(), channels=ratios, heads=head_ratios, criterion=criteria,
       round_to=st.sampled_from([1, 2, "auto"]), global_ranking=st.booleans())
def test_prune_matches_masked_model(graph: Graph, channels: float, heads: float, criterion: str,
                                    round_to: int | str, global_ranking: bool) -> None:
    _check_pruned(graph, graph.proto, _prune(graph.proto, channels, heads, criterion, round_to, global_ranking))


@settings(max_examples=20, deadline=None, derandomize=True)
@given(graph=graphs(attention=True), heads=st.sampled_from([0.34, 0.5, 0.75]), criterion=criteria)
def test_prune_heads_matches_masked_model(graph: Graph, heads: float, criterion: str) -> None:
    """Token graphs with attention, heads only: every drawn attention block has a head group."""
    result = _prune(graph.proto, 0.0, heads, criterion)
    blocks = sum(b.kind == "attention" and b.get("heads") > 1 for b in graph.spec.blocks)
    head_groups = [g for g in result.plan.graph.prunable if g.kind in HEAD_KINDS]
    assert len(head_groups) == blocks, (graph, [g.describe() for g in result.plan.graph.groups])
    _check_pruned(graph, graph.proto, result)


# ------------------------------------------------------------------ 2. a pass twice is safe


@settings(max_examples=25, deadline=None, derandomize=True)
@given(graph=graphs(), channels=ratios, heads=head_ratios, criterion=criteria)
def test_prune_twice_is_safe(graph: Graph, channels: float, heads: float, criterion: str) -> None:
    once = _check_pruned(graph, graph.proto, _prune(graph.proto, channels, heads, criterion))
    again = _prune(once, 0.0, 0.0, criterion)
    assert not again.report.pruned_groups
    noop = ir.to_proto(again.model)
    assert signature(noop) == signature(once)
    _assert_same_outputs(runtime_bytes(noop), runtime_bytes(once), _feeds(once, seed=2))
    _check_pruned(graph, once, _prune(once, channels, heads, criterion), seed=3)


# ------------------------------------------------------------------ 3. sparse storage round-trips exactly


@settings(max_examples=50, deadline=None, derandomize=True)
@given(graph=graphs(max_blocks=8, width=WIDTH), sparsity=st.sampled_from([0.75, 0.9, 0.97]),
       fmt=st.sampled_from(FORMATS), pattern=st.sampled_from(["unstructured", "2:4", "block:2x2"]))
def test_sparsify_densify_round_trip_is_bit_exact(graph: Graph, sparsity: float, fmt: str, pattern: str) -> None:
    kwargs = {"sparsity": None if pattern == "2:4" else sparsity, "pattern": pattern, "min_size": 0}
    zeroed = load_model(graph.proto)
    onnxsparse.sparsify(zeroed, format="dense", **kwargs)
    stored = load_model(graph.proto)
    report = onnxsparse.sparsify(stored, format=fmt, **kwargs)
    for row in report.tensors:
        if row.pruned:
            event(f"a pruned weight stored as {row.format}")
    dense = initializer_arrays(zeroed)
    stored_proto = ir.to_proto(stored)
    feeds = _feeds(graph.proto, seed=4)
    _assert_same_outputs(zeroed, stored, feeds)

    _assert_densifies_to(load_model(stored_proto), dense)

    again = load_model(stored_proto)
    onnxsparse.sparsify(again, format=fmt, min_size=0)
    assert ir.to_proto(again).SerializeToString() == stored_proto.SerializeToString()

    with tempfile.TemporaryDirectory() as folder:  # through a file (coo becomes ONNX sparse_initializer)
        path = onnxsparse.save_model(stored, Path(folder) / "sparse.onnx")
        _assert_same_outputs(path, zeroed, feeds)
        _assert_densifies_to(load_model(path), dense)


def _assert_densifies_to(model: ir.Model, dense: dict[str, np.ndarray]) -> None:
    onnxsparse.densify(model)
    restored = initializer_arrays(model)
    assert sorted(restored) == sorted(dense)
    for name, array in dense.items():
        assert same_bits(restored[name], array), name


# ------------------------------------------------------------------ 4. dependency-graph invariants


@PROPERTY
@given(graph=graphs(), seed=st.integers(0, 2**16))
def test_index_maps_stay_inside_their_slots(graph: Graph, seed: int) -> None:
    model = prepare_for_analysis(load_model(graph.proto))
    dims = {v.name: tuple(v.shape) for v in _values(model) if v.shape is not None}
    dg = build_groups(model)
    owner: dict[tuple[str, int, int], int] = {}
    for g in dg.groups:
        assert g.size >= 1 and g.root in {m.slot for m in g.members}, g.describe()
        for m in g.members:
            table = m.index_map.table(g.size)
            assert table.shape[0] == g.size and table.size, g.describe()
            assert 0 <= table.min() and table.max() < m.slot.size, g.describe()
            assert np.unique(table).size == table.size, g.describe()  # units never share a position
            if not m.slot.virtual:
                shape = dims[m.slot.value]
                assert m.slot.axis < len(shape) and shape[m.slot.axis] == m.slot.size, (g.describe(), shape)
            for position in table.reshape(-1):  # a position belongs to one unit of one group
                key = (m.slot.value, m.slot.axis, int(position))
                assert owner.setdefault(key, g.id) == g.id, (g.describe(), key)
    rng = np.random.default_rng(seed)
    removed = {g.id: rng.choice(g.size, rng.integers(1, g.size), replace=False)
               for g in dg.prunable if g.size > 1}
    masks = dg.keep_masks(removed)
    for gid, units in removed.items():
        g = dg.groups[gid]
        for m in g.members:
            mask = masks[m.slot.key]
            assert mask.shape == (m.slot.size,)
            table = m.index_map.table(g.size)
            gone = np.zeros(g.size, bool)
            gone[units] = True
            # other groups may share the slot (a Concat output): only this group's positions are checked
            assert not mask[table[gone]].any() and mask[table[~gone]].all(), g.describe()


def _values(model: ir.Model) -> list[ir.Value]:
    values = list(model.graph.inputs) + list(model.graph.initializers.values())
    values += [out for node in model.graph for out in node.outputs]
    return values


# ------------------------------------------------------------------ regressions the properties found


def test_sparsify_twice_writes_the_same_model_when_names_do_not_sort_in_graph_order() -> None:
    """Found by the sparsify property: ``expand_all`` re-created the dense weights sorted by name
    (``w10`` before ``w2``), so re-sparsifying a stored model stored them in another order."""
    from test_prune_support import make_model

    rng = np.random.default_rng(0)
    inits = {"w2": rng.standard_normal((32, 32)).astype(np.float32),
             "w10": rng.standard_normal((32, 32)).astype(np.float32)}
    nodes = [onnx.helper.make_node("MatMul", ["x", "w2"], ["h"]), onnx.helper.make_node("MatMul", ["h", "w10"], ["y"])]
    model = make_model(nodes, [("x", ["N", 32])], [("y", ["N", 32])], inits)
    onnxsparse.sparsify(model, sparsity=0.9, format="csr", min_size=0)
    once = ir.to_proto(model)
    again = load_model(once)
    onnxsparse.sparsify(again, format="csr", min_size=0)
    assert ir.to_proto(again).SerializeToString() == once.SerializeToString()
