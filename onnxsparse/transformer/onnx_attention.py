"""ONNX ``Attention`` (opset 23+).

With 3-D inputs (``[B, S, H*D]`` plus ``q_num_heads`` / ``kv_num_heads``) the
node is the fused analogue of ``GroupQueryAttention``: query head ``h`` reads KV
head ``h // (q_num_heads / kv_num_heads)``; removing a KV group removes its
query heads and both attributes shrink.  With 4-D inputs (``[B, H, S, D]``, the
head split done by Reshape/Transpose before it) the head counts live in those
Reshape targets and the node itself only needs its head axis followed.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ._graph import Skip, onnx_domain, rank_of
from ._track import Region, Track, head_units, rule
from .blocks import Block, SkippedBlock, block_name
from .decomposed import find_projections, split_of
from .fused_ms import _fused_rule, _projection_of, _proj_width
from .registry import register_matcher

__all__ = ["match_onnx_attention"]


@rule("Attention")
def _attention_rule(node: ir.Node, region: Region) -> None:
    rank = rank_of(node.inputs[0])
    if rank == 3:
        _fused_rule(node, region, q_idx=0, k_idx=1, v_idx=2, bias_idx=None, mask_idx=(3,), past=(4, 5),
                    heads_attr="q_num_heads", kv_heads_attr="kv_num_heads")
        return
    if rank != 4:
        raise Skip(f"Attention {node.name!r}: inputs of unknown rank")
    tq, tk, tv = (region.track(node.inputs[i]) for i in range(3))
    if tq is None or tk is None or tv is None or {tq.axis, tk.axis, tv.axis} != {1}:
        raise Skip(f"Attention {node.name!r}: Q/K/V head axes are not axis 1")
    if tq.space != "q" or tk.space != "kv" or not tk.same(tv):
        raise Skip(f"Attention {node.name!r}: Q/K/V inputs are in unexpected positions")
    if tq.size % tk.size:
        raise Skip(f"Attention {node.name!r}: {tq.size} query heads vs {tk.size} KV heads")
    region.pair(tq, Track(1, "kv", np.repeat(tk.units, tq.size // tk.size)), node)
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        region.side_input(node, 3, 4, 1, tq)
    for i in (4, 5):
        if len(node.inputs) > i and node.inputs[i] is not None and region.track(node.inputs[i]) is None:
            region.side_input(node, i, 4, 1, tk)
    region.set(node.outputs[0], tq)
    for o in (1, 2):
        if o < len(node.outputs) and node.outputs[o].name:
            region.set(node.outputs[o], tk)
    if len(node.outputs) > 3 and (node.outputs[3].uses() or node.outputs[3].is_graph_output()):
        raise Skip(f"Attention {node.name!r}: its qk_matmul_output is used")
    region.attention_nodes.append(node)


def _match(graph: ir.Graph, node: ir.Node) -> Block:
    rank = rank_of(node.inputs[0])
    region = Region(graph)
    if rank == 3:
        from ._graph import attr_int

        hq, hkv = attr_int(node, "q_num_heads"), attr_int(node, "kv_num_heads")
        if not hq or not hkv:
            raise Skip(f"Attention {node.name!r}: q_num_heads/kv_num_heads missing")
        projs = [_projection_of(node, i, r) for i, r in ((0, "query"), (1, "key"), (2, "value"))]
        widths = [_proj_width(p) for p in projs]
        if widths[0] % hq or widths[1] % hkv or widths[2] % hkv:
            raise Skip(f"Attention {node.name!r}: projection widths {widths} do not divide into heads")
        d = widths[0] // hq
        seeds = [(projs[0], "q", head_units(hq, d)), (projs[1], "kv", head_units(hkv, widths[1] // hkv)),
                 (projs[2], "kv", head_units(hkv, widths[2] // hkv))]
    elif rank == 4:
        projs = []
        for i, role in ((0, "Q"), (1, "K"), (2, "V")):
            found = find_projections(node.inputs[i])
            if len(found) != 1:
                raise Skip(f"Attention {node.name!r}: {role} is not computed by one constant-weight projection")
            projs.append(next(iter(found)))
        splits = [split_of(p) for p in projs]
        hq, d = splits[0][0], splits[0][1]
        hkv = splits[1][0]
        seeds = [(projs[0], "q", head_units(hq, d)), (projs[1], "kv", head_units(hkv, splits[1][1])),
                 (projs[2], "kv", head_units(splits[2][0], splits[2][1]))]
    else:
        raise Skip(f"Attention {node.name!r}: inputs of unknown rank")
    if len(set(projs)) < 3:
        raise Skip(f"Attention {node.name!r}: Q, K and V share a projection")
    for proj, space, units in seeds:
        region.seed_projection(proj, space, units)
    region.propagate()
    if node not in region.attention_nodes:
        raise Skip(f"Attention {node.name!r}: Q/K/V projections do not reach it")
    name = block_name([*projs, node, *region.sinks], node.name or "Attention", region)
    return Block(name=name, kind="attention", form=f"onnx_attention_{rank}d", region=region, anchor=node,
                 n_units=hkv, q_heads=hq, kv_heads=hkv, head_size=d,
                 details={"projections": [p.name for p in projs],
                          "output_projections": [s.name for s in region.sinks]})


@register_matcher("onnx_attention")
def match_onnx_attention(graph: ir.Graph) -> list[Block | SkippedBlock]:
    found: list[Block | SkippedBlock] = []
    for node in list(graph):
        if node.op_type != "Attention" or not onnx_domain(node):
            continue
        try:
            found.append(_match(graph, node))
        except Skip as exc:
            found.append(SkippedBlock(node.name or "Attention", "attention", "onnx_attention", str(exc)))
    return found
