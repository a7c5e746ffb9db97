"""Relative output error of pruning one weight alone, at a ladder of ratios (for ``--allocate sensitivity``).

The weights under study become graph inputs of one onnxruntime session, so every
evaluation (tensor x ratio) is a run of the calibration batches with one weight
swapped for its pruned copy, not a new session.  The error is
:func:`onnxsparse.passes.sensitivity.output_errors`'s ``rel_mse``
(``sum((y - y0)^2) / sum(y0^2)``, averaged over the float outputs) against the
unpruned model on the same batches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

if TYPE_CHECKING:  # annotations only: the data module is imported by whoever builds the source
    from ..calibration.data import DataSource

__all__ = ["Pruner", "layer_errors"]

#: ``pruner(name, ratio)`` -> the weight ``name`` pruned alone to ``ratio`` (its stored dtype)
Pruner = Callable[[str, float], np.ndarray]


def _weight_fed_session(model: ir.Model, names: Sequence[str]):
    """A 1-thread session of ``model`` whose initializers ``names`` are graph inputs instead."""
    import onnx

    from .._ort import external_data_config, make_session, session_options
    from ..io import max_runtime_ir_version, to_proto

    proto = to_proto(model)
    proto.ir_version = min(proto.ir_version, max_runtime_ir_version())
    wanted = set(names)
    kept = [init for init in proto.graph.initializer if init.name not in wanted]
    fed = [init for init in proto.graph.initializer if init.name in wanted]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    existing = {i.name for i in proto.graph.input}
    for init in fed:
        if init.name not in existing:
            proto.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    return make_session(proto.SerializeToString(), session_options(threads=1, config=external_data_config(model)))


def layer_errors(model: ir.Model, weights: Mapping[str, np.ndarray], pruner: Pruner, ratios: Sequence[float],
                 source: DataSource, *, batch_size: int = 32, limit: int | None = None,
                 progress: bool = False) -> dict[str, list[tuple[float, float]]]:
    """``{weight: [(ratio, rel_mse), ...]}`` for every weight in ``weights`` (name -> current array)."""
    from ..passes.sensitivity import output_errors

    sess = _weight_fed_session(model, list(weights))
    inputs = {i.name for i in sess.get_inputs()}
    outputs = [o.name for o in sess.get_outputs() if "float" in o.type or "double" in o.type]
    batches = [{k: v for k, v in batch.items() if k in inputs} for batch in source.batches(batch_size, limit)]

    def run(swapped: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        feeds = {name: swapped.get(name, array) for name, array in weights.items()}
        parts = [sess.run(outputs, {**batch, **feeds}) for batch in batches]
        return [np.concatenate([p[i] for p in parts]) for i in range(len(outputs))]

    reference = run({})
    items = [(name, float(r)) for name in weights for r in ratios]
    loop = items
    if progress:
        import sys

        from tqdm import tqdm

        loop = tqdm(items, desc="layer errors", unit="eval", file=sys.stderr)
    curves: dict[str, list[tuple[float, float]]] = {name: [] for name in weights}
    for name, ratio in loop:
        rel, _, _ = output_errors(reference, run({name: pruner(name, ratio)}), outputs)
        curves[name].append((ratio, rel))
    return curves
