"""Input-feature norms for activation-aware criteria (Wanda), measured with onnxruntime.

For every weight to prune, the activation its consumer contracts with it is
captured on calibration data and reduced to one L2 norm per input feature
(:class:`~onnxsparse.calibration.stats.ChannelStats`).  The result is a
*scale* broadcastable to the weight, so a criterion computes ``|W| * scale``:

* ``MatMul(x, W)``: ``x``'s last axis; ``MatMul(W, x)``: ``x``'s axis -2;
* ``Gemm``: the other operand's contraction axis (``transA``/``transB``);
* ``Conv(X, W)``: one norm per im2col column (input channel x kernel offset,
  so border offsets that often see padding count less), scale ``[1, C, kh, kw]``;
  with ``group > 1`` one norm per input channel of the filter's own group,
  scale ``[O, C/group, 1, ...]``.

A weight read by several such nodes gets the root of the summed squared norms.
Other consumers (ConvTranspose, recurrent and integer ops) give a reason
instead; the caller scores those weights by magnitude.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from ..errors import Decline
from .weights import WeightInfo, _uses, contraction

if TYPE_CHECKING:  # only for annotations: this module reaches calibration lazily, inside functions
    from ..calibration.data import DataSource

__all__ = ["FeatureSource", "feature_sources", "input_feature_scales"]


@dataclass(frozen=True)
class FeatureSource:
    """The activation ``value`` whose channels along ``axis`` multiply the weight's reduction axis
    (an ungrouped Conv is measured per im2col column through ``node``)."""

    value: str
    axis: int
    group: int = 1
    node: ir.Node | None = None


def _source(node: ir.Node, index: int) -> FeatureSource:
    """The activation that ``node``'s weight input ``index`` multiplies; declines if there is none."""
    found = contraction(node, index)
    x = node.inputs[found.data_input]
    if x is None or not x.name:
        raise Decline(f"{node.op_type} without a named activation")
    conv = found.family == "conv" and found.groups == 1  # measured per im2col column
    return FeatureSource(x.name, found.data_axis, found.groups, node if conv else None)


def feature_sources(model: ir.Model, infos: Sequence[WeightInfo]) -> dict[str, list[FeatureSource] | str]:
    """Per weight: the activations to measure, or why the weight has none."""
    out: dict[str, list[FeatureSource] | str] = {}
    for info in infos:
        value = model.graph.initializers.get(info.name)
        if value is None:
            out[info.name] = "not an initializer"
            continue
        try:
            sources = [_source(node, index) for node, index, _ in _uses(value)]
        except Decline as exc:
            out[info.name] = exc.reason
            continue
        out[info.name] = sources if sources else "no consumer"
    return out


def _scale(norms: np.ndarray, source: FeatureSource, info: WeightInfo) -> np.ndarray:
    """Measured squared norms shaped to broadcast against the weight; declines when they do not fit it."""
    axis = info.in_axis
    if axis is None:
        raise Decline("no single reduction axis")
    rank = len(info.shape)
    width = info.shape[axis]
    if source.node is not None:  # per im2col column: [C * prod(kernel)] in the weight's [C, *kernel] order
        if norms.size != int(np.prod(info.shape[1:], dtype=np.int64)):
            raise Decline(f"{norms.size} im2col columns measured, the weight has {list(info.shape)}")
        return norms.reshape((1, *info.shape[1:]))
    if source.group == 1:
        if norms.size != width:
            raise Decline(f"{norms.size} input features measured, the weight reduces over {width}")
        shape = [1] * rank
        shape[axis] = width
        return norms.reshape(shape)
    out_channels = info.shape[0]
    if axis != 1 or norms.size != width * source.group or out_channels % source.group:
        raise Decline(f"grouped Conv (group={source.group}) does not match the weight shape {list(info.shape)}")
    per_group = norms.reshape(source.group, width)
    rows = per_group[np.arange(out_channels) // (out_channels // source.group)]  # [O, C/group]
    return rows.reshape([out_channels, width] + [1] * (rank - 2))


def input_feature_scales(
    model: ir.Model,
    infos: Sequence[WeightInfo],
    source: DataSource,
    *,
    batch_size: int = 32,
    limit: int | None = None,
    progress: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``({weight: scale broadcastable to it}, {weight: why it has none})`` from one calibration pass."""
    from ..calibration.capture import LayerRequest, capture, linear_view

    sources = feature_sources(model, infos)
    reasons = {name: found for name, found in sources.items() if isinstance(found, str)}
    channels: set[tuple[str, int]] = set()
    layers: dict[int, LayerRequest] = {}  # id(conv node) -> request keyed by a unique name
    for found in sources.values():
        for s in [] if isinstance(found, str) else found:
            try:
                view = linear_view(s.node, 0, 1) if s.node is not None else None
            except Decline:
                view = None
            if view is None:
                channels.add((s.value, s.axis))  # no im2col view: per channel
            elif id(s.node) not in layers:
                layers[id(s.node)] = LayerRequest(replace(view, node=f"{len(layers)}:{view.node}"), squares=True)
    if not channels and not layers:
        return {}, reasons
    captured = capture(model, source, channels=sorted(channels), layers=list(layers.values()),
                       batch_size=batch_size, limit=limit, progress=progress)
    scales: dict[str, np.ndarray] = {}
    by_name = {info.name: info for info in infos}
    for name, found in sources.items():
        if isinstance(found, str):
            continue
        total: np.ndarray | None = None
        for s in found:
            request = layers.get(id(s.node)) if s.node is not None else None
            if request is not None:
                layer = captured.layers.get(request.view.node)
                squares = None if layer is None else layer.sqsum
            else:
                s = replace(s, node=None)
                stats = captured.channel(s.value, s.axis)
                squares = None if stats is None else stats.sumsq
            if squares is None:
                reasons[name] = f"activation {s.value!r} was not captured"
                break
            try:
                scale = _scale(squares, s, by_name[name])
            except Decline as exc:
                reasons[name] = exc.reason
                break
            total = scale if total is None else total + scale
        else:
            if total is not None:
                scales[name] = np.sqrt(total)
    return scales, reasons
