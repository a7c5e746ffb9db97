"""Shared initializers: per-channel vectors get a copy per node, weights stay shared (and couple).

Exporters and optimizers deduplicate identical tensors, so one all-zero bias or
all-one scale can serve unrelated layers.  Coupling through it would tie those
layers' channels together, so before analysis every shared *vector-like*
initializer (one axis longer than 1: ``[C]``, ``[C, 1, 1]``) gets one copy per
extra node; after pruning, copies that are still identical to their original
are merged back.  Shared matrices and filters are tied weights on purpose
(e.g. an embedding reused as the output projection): they stay shared, which
couples their users so they are sliced consistently.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

#: initializers with at most this many elements are copied per node when shared
SMALL_SHARED_LIMIT = 1 << 16


def unshare_small_constants(model: ir.Model, limit: int = SMALL_SHARED_LIMIT) -> dict[str, str]:
    """Give each extra node using a small shared initializer its own copy; returns copy -> original."""
    graph = model.graph
    copies: dict[str, str] = {}
    for name, value in list(graph.initializers.items()):
        tensor = value.const_value
        if tensor is None or value.is_graph_output() or value.is_graph_input():
            continue
        dims = [d for d in tensor.shape if isinstance(d, int)]  # a tensor's dims are ints
        if sum(d > 1 for d in dims) != 1 or int(np.prod(dims)) > limit:
            continue  # scalars need no copy; matrices/filters are tied weights
        nodes: list[ir.Node] = []
        for use in value.uses():
            if use.node not in nodes:
                nodes.append(use.node)
        if len(nodes) < 2 or any(n.graph is not graph for n in nodes):
            continue
        for k, node in enumerate(nodes[1:], start=1):
            copy_name = f"{name}__shared{k}"
            while copy_name in graph.initializers:
                copy_name += "_"
            copy = ir.Value(name=copy_name, shape=value.shape, type=value.type, const_value=tensor)
            graph.register_initializer(copy)
            for i, inp in enumerate(node.inputs):
                if inp is value:
                    node.replace_input_with(i, copy)
            copies[copy_name] = name
    return copies


def reshare(model: ir.Model, copies: dict[str, str]) -> None:
    """Merge copies that are still identical to their original back into it."""
    graph = model.graph
    for copy_name, name in copies.items():
        copy = graph.initializers.get(copy_name)
        orig = graph.initializers.get(name)
        if copy is None or orig is None:
            continue
        a, b = copy.const_value, orig.const_value
        if a is None or b is None:
            continue
        if a is not b:
            if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
                continue
            if not np.array_equal(a.numpy(), b.numpy()):
                continue
        for use in list(copy.uses()):
            use.node.replace_input_with(use.idx, orig)
        graph.initializers.pop(copy_name)
