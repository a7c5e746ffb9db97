"""onnxruntime's fused attention ops (``com.microsoft`` domain).

* ``Attention``: the node holds the packed ``[in, Wq | Wk | Wv]`` weight and bias
  itself; removing a head slices its columns out of each of the three segments
  and lowers ``num_heads`` (and ``qkv_hidden_sizes`` when set).  The output
  ``[B, S, H*Dv]`` is followed to the output projection.
* ``MultiHeadAttention``: Q, K and V come from separate projections (optionally
  with the packed bias on the node); ``past_key``/``past_value`` graph inputs
  and ``present_*`` graph outputs are a signature change.
* ``GroupQueryAttention``: as above with ``kv_num_heads``; query head ``h``
  reads KV head ``h // (num_heads / kv_num_heads)``, so whole groups go.

All three are proven with the same propagation engine as decomposed attention
(the node is one more rule).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ._graph import Skip, attr_int, attr_ints, is_const, rank_of, set_attr_int, set_attr_ints, static_shape
from ._track import Region, Removal, ScoreTensor, Track, head_units, rule
from .blocks import Block, SkippedBlock, block_name
from .decomposed import find_projections
from .registry import register_matcher

__all__ = ["match_ms_attention", "match_ms_multihead", "match_ms_gqa"]

MS = "com.microsoft"


def _heads_of(track: Track, heads: int, what: str, node: ir.Node) -> np.ndarray:
    if track.size % heads:
        raise Skip(f"{node.op_type} {node.name!r}: {what} width {track.size} is not a multiple of {heads} heads")
    grid = track.units.reshape(heads, track.size // heads)
    if not (grid == grid[:, :1]).all():
        raise Skip(f"{node.op_type} {node.name!r}: {what} columns do not group into heads")
    return grid[:, 0].copy()


def _fused_rule(node: ir.Node, region: Region, *, q_idx: int, k_idx: int, v_idx: int, bias_idx: int | None,
                mask_idx: tuple[int, ...], past: tuple[int, int] | None, heads_attr: str,
                kv_heads_attr: str | None, sink_idx: int | None = None) -> None:
    """Shared rule for MultiHeadAttention / GroupQueryAttention / ONNX Attention with 3-D inputs."""
    tq, tk, tv = (region.track(node.inputs[i]) if i < len(node.inputs) else None for i in (q_idx, k_idx, v_idx))
    if tq is None or tk is None or tv is None:
        raise Skip(f"{node.op_type} {node.name!r}: Q, K and V are not all traced to projections")
    if tq.space != "q" or tk.space != "kv" or tv.space != "kv":
        raise Skip(f"{node.op_type} {node.name!r}: Q/K/V inputs are in unexpected positions")
    for t, i in ((tq, q_idx), (tk, k_idx), (tv, v_idx)):
        if t.axis != rank_of(node.inputs[i]) - 1:  # type: ignore[operator]
            raise Skip(f"{node.op_type} {node.name!r}: the pruned axis is not the hidden axis of input {i}")
    hq = attr_int(node, heads_attr)
    hkv = attr_int(node, kv_heads_attr) if kv_heads_attr else hq
    if not hq or not hkv or hq % hkv:
        raise Skip(f"{node.op_type} {node.name!r}: bad head counts {hq}/{hkv}")
    q_heads = _heads_of(tq, hq, "query", node)
    k_heads = _heads_of(tk, hkv, "key", node)
    v_heads = _heads_of(tv, hkv, "value", node)
    if not np.array_equal(k_heads, v_heads):
        raise Skip(f"{node.op_type} {node.name!r}: key and value heads are in different orders")
    rep = hq // hkv
    region.pair(Track(0, "q", q_heads), Track(0, "kv", np.repeat(k_heads, rep)), node)
    dv = tv.size // hkv
    if bias_idx is not None and bias_idx < len(node.inputs) and node.inputs[bias_idx] is not None:
        bias = node.inputs[bias_idx]
        if not is_const(bias) or bias.const_value.shape[0] != tq.size + tk.size + tv.size:  # type: ignore
            raise Skip(f"{node.op_type} {node.name!r}: packed bias is not a constant of the expected size")

        def act(removal: Removal, node: ir.Node = node, idx: int = bias_idx) -> None:
            from ._graph import replace_const

            cur = node.inputs[idx]
            keep = np.concatenate([removal.keep(tq), removal.keep(tk), removal.keep(tv)])
            replace_const(region.graph, cur, cur.const_value.numpy()[keep], [(node, idx)])  # type: ignore

        region.actions.append(act)
    for i in mask_idx:
        if i < len(node.inputs) and node.inputs[i] is not None:
            region.side_input(node, i, 4, 1, Track(1, "q", q_heads))
    if sink_idx is not None and sink_idx < len(node.inputs) and node.inputs[sink_idx] is not None:
        region.side_input(node, sink_idx, 1, 0, Track(0, "q", q_heads))
    if past is not None:
        for i in past:
            if i < len(node.inputs) and node.inputs[i] is not None:
                value = node.inputs[i]
                shape = static_shape(value)
                if shape is None or len(shape) != 4:
                    raise Skip(f"{node.op_type} {node.name!r}: past state {value.name!r} is not [B, H, S, D]")
                if region.track(value) is None:
                    region.side_input(node, i, 4, 1, Track(1, "kv", k_heads))
    region.set(node.outputs[0], Track(rank_of(node.outputs[0]) - 1 if rank_of(node.outputs[0]) else 2, "q",
                                      np.repeat(q_heads, dv)))
    for o in (1, 2):
        if o < len(node.outputs) and node.outputs[o].name:
            region.set(node.outputs[o], Track(1, "kv", k_heads))
    if len(node.outputs) > 3 and (node.outputs[3].uses() or node.outputs[3].is_graph_output()):
        raise Skip(f"{node.op_type} {node.name!r}: its attention-probabilities output is used")

    def heads_act(removal: Removal) -> None:
        set_attr_int(node, heads_attr, removal.count(Track(0, "q", q_heads)))
        if kv_heads_attr:
            set_attr_int(node, kv_heads_attr, removal.count(Track(0, "kv", k_heads)))

    region.actions.append(heads_act)
    region.attention_nodes.append(node)


@rule("MultiHeadAttention", domain=MS)
def _mha_rule(node: ir.Node, region: Region) -> None:
    _fused_rule(node, region, q_idx=0, k_idx=1, v_idx=2, bias_idx=3, mask_idx=(5,), past=(6, 7),
                heads_attr="num_heads", kv_heads_attr=None)


@rule("GroupQueryAttention", domain=MS)
def _gqa_rule(node: ir.Node, region: Region) -> None:
    _fused_rule(node, region, q_idx=0, k_idx=1, v_idx=2, bias_idx=None, mask_idx=(10,), past=(3, 4),
                heads_attr="num_heads", kv_heads_attr="kv_num_heads", sink_idx=11)


def _projection_of(node: ir.Node, idx: int, role: str) -> ir.Node:
    if idx >= len(node.inputs) or node.inputs[idx] is None:
        raise Skip(f"{node.op_type} {node.name!r}: no separate {role} input (packed QKV is not supported)")
    value = node.inputs[idx]
    if rank_of(value) != 3:
        raise Skip(f"{node.op_type} {node.name!r}: {role} input is not [batch, seq, hidden]")
    found = find_projections(value, limit=4)
    if len(found) != 1:
        raise Skip(f"{node.op_type} {node.name!r}: {role} is not computed by one constant-weight projection")
    return next(iter(found))


def _proj_width(proj: ir.Node) -> int:
    from ._track import projection_weight

    w, axis = projection_weight(proj)
    return int(w.const_value.shape[axis])  # type: ignore[union-attr]


def _match_separate(graph: ir.Graph, node: ir.Node, form: str, kv_attr: str | None) -> Block:
    hq = attr_int(node, "num_heads")
    hkv = attr_int(node, kv_attr) if kv_attr else hq
    if not hq or not hkv:
        raise Skip(f"{node.op_type} {node.name!r}: head counts missing")
    projs = [_projection_of(node, i, r) for i, r in ((0, "query"), (1, "key"), (2, "value"))]
    if len(set(projs)) < 3:
        raise Skip(f"{node.op_type} {node.name!r}: Q, K and V share a projection")
    widths = [_proj_width(p) for p in projs]
    if widths[0] % hq or widths[1] % hkv or widths[2] % hkv:
        raise Skip(f"{node.op_type} {node.name!r}: projection widths {widths} do not divide into heads")
    d = widths[0] // hq
    region = Region(graph)
    region.seed_projection(projs[0], "q", head_units(hq, d))
    region.seed_projection(projs[1], "kv", head_units(hkv, widths[1] // hkv))
    region.seed_projection(projs[2], "kv", head_units(hkv, widths[2] // hkv))
    region.propagate()
    if node not in region.attention_nodes:
        raise Skip(f"{node.op_type} {node.name!r}: Q/K/V projections do not reach it directly")
    name = block_name([*projs, node, *region.sinks], node.name or node.op_type, region)
    return Block(name=name, kind="attention", form=form, region=region, anchor=node, n_units=hkv,
                 q_heads=hq, kv_heads=hkv, head_size=d,
                 details={"projections": [p.name for p in projs],
                          "output_projections": [s.name for s in region.sinks]})


def _match_packed(graph: ir.Graph, node: ir.Node) -> Block:
    """com.microsoft Attention: packed QKV weight on the node."""
    h = attr_int(node, "num_heads")
    weight = node.inputs[1]
    if not h or not is_const(weight) or len(weight.const_value.shape) != 2:  # type: ignore[union-attr]
        raise Skip(f"Attention {node.name!r}: weights are not a constant matrix")
    total = int(weight.const_value.shape[1])  # type: ignore[union-attr]
    sizes = attr_ints(node, "qkv_hidden_sizes") or [total // 3] * 3
    if sum(sizes) != total or any(s % h for s in sizes) or sizes[0] != sizes[1]:
        raise Skip(f"Attention {node.name!r}: QKV sizes {sizes} do not divide into {h} heads")
    if len(node.inputs) > 4 and node.inputs[4] is not None:
        raise Skip(f"Attention {node.name!r}: past state input is not supported")
    if any(o.name and (o.uses() or o.is_graph_output()) for o in node.outputs[1:]):
        raise Skip(f"Attention {node.name!r}: present output is used")
    dq, dv = sizes[0] // h, sizes[2] // h
    heads = np.arange(h)
    tq, tk, tv = Track(0, "q", head_units(h, dq)), Track(0, "kv", head_units(h, dq)), Track(0, "kv", head_units(h, dv))
    region = Region(graph)
    region.kv_of_q = {i: i for i in range(h)}
    out = node.outputs[0]
    out_rank = rank_of(out) or 3
    region.set(out, Track(out_rank - 1, "q", np.repeat(heads, dv)))
    region.touched.add(node)
    region.attention_nodes.append(node)
    region.scores.append(ScoreTensor(weight, 1, Track(1, "q", np.concatenate([tq.units, tk.units, tv.units]))))

    def keep(removal: Removal) -> np.ndarray:
        return np.concatenate([removal.keep(tq), removal.keep(tk), removal.keep(tv)])

    def act(removal: Removal) -> None:
        from ._graph import replace_const

        k = keep(removal)
        w = node.inputs[1]
        replace_const(graph, w, w.const_value.numpy()[:, k], [(node, 1)])  # type: ignore[union-attr]
        b = node.inputs[2] if len(node.inputs) > 2 else None
        if b is not None:
            replace_const(graph, b, b.const_value.numpy()[k], [(node, 2)])  # type: ignore[union-attr]
        kept = removal.count(Track(0, "q", heads))
        set_attr_int(node, "num_heads", kept)
        if node.attributes.get("qkv_hidden_sizes") is not None:
            set_attr_ints(node, "qkv_hidden_sizes", [int(removal.keep(t).sum()) for t in (tq, tk, tv)])

    b = node.inputs[2] if len(node.inputs) > 2 else None
    if b is not None and (not is_const(b) or int(b.const_value.shape[0]) != total):  # type: ignore[union-attr]
        raise Skip(f"Attention {node.name!r}: bias is not a constant of size {total}")
    region.actions.append(act)
    if len(node.inputs) > 5 and node.inputs[5] is not None:
        region.side_input(node, 5, 4, 1, Track(1, "q", heads))
    region.propagate()
    name = block_name([node, *region.sinks], node.name or "Attention", region)
    return Block(name=name, kind="attention", form="ms_attention", region=region, anchor=node, n_units=h,
                 q_heads=h, kv_heads=h, head_size=dq,
                 details={"projections": [node.name], "output_projections": [s.name for s in region.sinks]})


def _each(graph: ir.Graph, op_type: str, form: str, fn) -> list[Block | SkippedBlock]:
    found: list[Block | SkippedBlock] = []
    for node in list(graph):
        if node.domain != MS or node.op_type != op_type:
            continue
        try:
            found.append(fn(graph, node))
        except Skip as exc:
            found.append(SkippedBlock(node.name or op_type, "attention", form, str(exc)))
    return found


@register_matcher("ms_attention")
def match_ms_attention(graph: ir.Graph) -> list[Block | SkippedBlock]:
    return _each(graph, "Attention", "ms_attention", _match_packed)


@register_matcher("ms_multihead")
def match_ms_multihead(graph: ir.Graph) -> list[Block | SkippedBlock]:
    return _each(graph, "MultiHeadAttention", "ms_multihead",
                 lambda g, n: _match_separate(g, n, "ms_multihead", None))


@register_matcher("ms_gqa")
def match_ms_gqa(graph: ir.Graph) -> list[Block | SkippedBlock]:
    return _each(graph, "GroupQueryAttention", "ms_gqa",
                 lambda g, n: _match_separate(g, n, "ms_gqa", "kv_num_heads"))
