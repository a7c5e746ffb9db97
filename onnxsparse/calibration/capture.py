"""Activation capture with onnxruntime: intermediate tensors streamed into statistics.

:func:`capture` adds the requested intermediate values as extra graph outputs
(on a serialised copy; the model is not changed), runs the model batch by batch
on a :class:`~onnxsparse.calibration.DataSource`, and folds every batch into
:mod:`~onnxsparse.calibration.stats` accumulators.  Activations are never kept
beyond one batch.

Contraction inputs are seen through a :class:`LinearView`: how a node that
computes ``Y = W X`` (Conv through im2col, Gemm, MatMul with a constant
matrix) lays its input out as rows of ``X^T`` whose columns match the weight
viewed as ``[out, in]`` (for a Conv, column ``c*kh*kw + k``: channel major,
then kernel offset).  This is the only place that knows op types; criteria and
repairs work on the rows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir

from ..errors import Decline
from ..graph.linear import linear_op
from .data import DataSource
from .stats import ChannelStats, ErrorStats, LayerStats

__all__ = [
    "batching",
    "LinearView",
    "linear_view",
    "LayerRequest",
    "chunk_requests",
    "Capture",
    "capture",
    "output_errors",
    "DEFAULT_MAX_ROWS",
    "OUTPUT_BUDGET",
    "session_with_outputs",
]

#: Rows (pixels / tokens) of one batch that enter a Gram matrix; more are subsampled.
DEFAULT_MAX_ROWS = 4096
#: Bytes of captured intermediate values per batch; larger batches are split to stay below.
OUTPUT_BUDGET = 256 << 20


@dataclass(frozen=True)
class LinearView:
    """How input ``value`` of contraction node ``node`` becomes rows ``[n, in_features]``.

    ``kind`` is ``"dense"`` (the contraction axis moved last, every other axis
    flattened into rows) or ``"conv"`` (im2col: one row per output position,
    ``channels * prod(kernel)`` columns).
    """

    node: str
    value: str
    kind: str
    axis: int
    channels: int
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()  #: ONNX layout: all begins, then all ends
    auto_pad: str = "NOTSET"

    @property
    def in_features(self) -> int:
        return self.channels * int(np.prod(self.kernel, dtype=np.int64)) if self.kind == "conv" else self.channels

    @property
    def taps(self) -> int:
        """Columns per input channel (``kh*kw`` for a Conv, 1 otherwise)."""
        return int(np.prod(self.kernel, dtype=np.int64)) if self.kind == "conv" else 1

    # -- dense ---------------------------------------------------------------------------
    def _dense(self, x: np.ndarray) -> np.ndarray:
        return np.moveaxis(x, self.axis, -1).reshape(-1, self.channels)

    # -- conv ----------------------------------------------------------------------------
    def _pads(self, spatial: Sequence[int]) -> tuple[list[int], list[int]]:
        nd = len(self.kernel)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            begin, end = [], []
            for size, k, s, d in zip(spatial, self.kernel, self.strides, self.dilations):
                total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
                small = total // 2
                b = small if self.auto_pad == "SAME_UPPER" else total - small
                begin.append(b)
                end.append(total - b)
            return begin, end
        if self.auto_pad == "VALID" or not self.pads:
            return [0] * nd, [0] * nd
        return list(self.pads[:nd]), list(self.pads[nd:])

    def _padded(self, x: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        nd = len(self.kernel)
        begin, end = self._pads(x.shape[2:])
        if any(begin) or any(end):
            x = np.pad(x, [(0, 0), (0, 0)] + list(zip(begin, end)))
        out = tuple(
            (p - (k - 1) * d - 1) // s + 1
            for p, k, s, d in zip(x.shape[2:], self.kernel, self.strides, self.dilations)
        )
        if len(out) != nd or min(out, default=1) < 1:
            raise ValueError(f"{self.node}: kernel does not fit the input {x.shape}")
        return x, out

    def _windows(self, xp: np.ndarray) -> np.ndarray:
        nd = len(self.kernel)
        eff = tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations))
        axes: tuple[int, ...] = tuple(range(2, 2 + nd))
        win = np.lib.stride_tricks.sliding_window_view(xp, list(eff), axis=axes)  # type: ignore[call-overload, unused-ignore]  # numpy < 1.26 stubs take one int axis
        index = (slice(None), slice(None), *(slice(None, None, s) for s in self.strides),
                 *(slice(None, None, d) for d in self.dilations))
        return win[index]  # [N, C, *out, *kernel]

    # -- public --------------------------------------------------------------------------
    def rows(self, x: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
        """Rows ``[n, in_features]``: all of them, or those at flat positions ``index``."""
        if self.kind == "dense":
            flat = self._dense(x)
            return flat if index is None else flat[index]
        xp, out = self._padded(x)
        win = self._windows(xp)
        if index is None:
            nd = len(self.kernel)
            order = (0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))
            return win.transpose(order).reshape(-1, self.in_features)
        pos = np.unravel_index(index, (x.shape[0], *out))
        key: tuple[np.ndarray | slice, ...] = (pos[0], slice(None), *pos[1:])
        picked = win[key]  # [n, C, *kernel]
        return picked.reshape(len(index), self.in_features)

    def colsum(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """Exact sum of every column over all rows (no im2col needed), and the row count."""
        if self.kind == "dense":
            flat = self._dense(x)
            return flat.sum(axis=0, dtype=np.float64), flat.shape[0]
        xp, out = self._padded(x)
        nd = len(self.kernel)
        sums = np.zeros((self.channels, self.taps), dtype=np.float64)
        axes = (0, *range(2, 2 + nd))
        for t, offset in enumerate(itertools.product(*(range(k) for k in self.kernel))):
            index = [slice(None), slice(None)]
            for o, n, s, d in zip(offset, out, self.strides, self.dilations):
                start = o * d
                index.append(slice(start, start + s * (n - 1) + 1, s))
            sums[:, t] = xp[tuple(index)].sum(axis=axes, dtype=np.float64)
        return sums.reshape(-1), int(x.shape[0] * np.prod(out, dtype=np.int64))


def _ints(node: ir.Node, name: str, default: Sequence[int]) -> tuple[int, ...]:
    value = node.attributes.get_ints(name, None)
    return tuple(int(v) for v in (default if value is None else value))


def linear_view(node: ir.Node, input_index: int, axis: int) -> LinearView:
    """The :class:`LinearView` of ``node``'s input ``input_index`` contracted over ``axis``; declines if there is none."""
    x = node.inputs[input_index] if input_index < len(node.inputs) else None
    if x is None or x.shape is None:
        raise Decline(f"{node.op_type} '{node.name}': input shape unknown")
    dims = list(x.shape)
    rank = len(dims)
    axis = axis + rank if axis < 0 else axis
    channels = dims[axis]
    if not isinstance(channels, int):
        raise Decline(f"{node.op_type} '{node.name}': size of the contracted axis is unknown")
    domain = node.domain or ""
    if domain not in ("", "ai.onnx"):
        raise Decline(f"{domain}::{node.op_type} '{node.name}' has no linear view")
    if node.op_type in ("Gemm", "MatMul"):
        w = node.inputs[1 - input_index] if len(node.inputs) > 1 else None
        if w is None or w.const_value is None or len(w.const_value.shape) != 2:
            raise Decline(f"{node.op_type} '{node.name}': the other operand is not a constant matrix")
        return LinearView(node.name or "", x.name or "", "dense", axis, channels)
    if node.op_type == "Conv" and input_index == 0 and axis == 1:
        op = linear_op(node)
        weight = node.inputs[op.weight_input]
        if weight is None or weight.const_value is None:
            raise Decline(f"Conv '{node.name}': weight is not a constant")
        if op.groups != 1:
            raise Decline(f"Conv '{node.name}': grouped convolution (group={op.groups}) has no single linear view")
        kernel = op.kernel
        nd = len(kernel)
        if rank != nd + 2:
            raise Decline(f"Conv '{node.name}': input rank {rank} does not match the kernel")
        return LinearView(
            node.name or "", x.name or "", "conv", 1, channels,
            kernel=kernel,
            strides=_ints(node, "strides", [1] * nd),
            dilations=_ints(node, "dilations", [1] * nd),
            pads=_ints(node, "pads", [0] * (2 * nd)),
            auto_pad=node.attributes.get_string("auto_pad", "NOTSET") or "NOTSET",
        )
    raise Decline(f"{node.op_type} '{node.name}' has no linear view (repairs support Conv with group=1, Gemm, MatMul)")


@dataclass(frozen=True)
class LayerRequest:
    """Capture column sums (and the Gram matrix when ``gram``, the column sums of squares when
    ``squares``: squared input-feature norms, im2col columns for a Conv) of ``view``'s rows."""

    view: LinearView
    gram: bool = False
    squares: bool = False


def chunk_requests(requests: Sequence[LayerRequest], budget: int, *, cross: bool = False) -> list[list[LayerRequest]]:
    """Split ``requests`` into calibration passes whose Gram matrices fit in ``budget`` bytes each."""
    out: list[list[LayerRequest]] = []
    used = budget + 1
    for r in requests:
        size = (r.view.in_features + 1) ** 2 * 8 * (2 if cross else 1) if r.gram else 0
        if not out or used + size > budget:
            out.append([])
            used = 0
        out[-1].append(r)
        used += size
    return out


@dataclass
class Capture:
    """What :func:`capture` measured."""

    channels: dict[tuple[str, int], ChannelStats] = field(default_factory=dict)
    layers: dict[str, LayerStats] = field(default_factory=dict)
    samples: int = 0
    batches: int = 0
    seconds: float = 0.0

    def channel(self, value: str, axis: int) -> ChannelStats | None:
        return self.channels.get((value, axis))

    def merge(self, other: Capture) -> Capture:
        self.channels.update(other.channels)
        self.layers.update(other.layers)
        self.samples = max(self.samples, other.samples)
        self.batches += other.batches
        self.seconds += other.seconds
        return self


def _value_types(model: ir.Model) -> dict[str, ir.Value]:
    values: dict[str, ir.Value] = {}
    for v in model.graph.inputs:
        values[v.name or ""] = v
    for node in model.graph:
        for v in node.outputs:
            if v.name:
                values[v.name] = v
    return values


def session_with_outputs(model: ir.Model, names: Iterable[str]):
    """An onnxruntime CPU session of ``model`` that also returns the intermediate values ``names``."""
    from .._ort import external_data_config, make_session, session_options
    from ..io import max_runtime_ir_version

    proto = ir.to_proto(model)
    existing = {o.name for o in proto.graph.output}
    inputs = {i.name for i in proto.graph.input}
    values = _value_types(model)
    for name in names:
        if name in existing or name in inputs:
            continue
        v = values.get(name)
        if v is None:
            raise KeyError(f"value {name!r} is not produced in the model")
        elem = int(v.dtype.value) if v.dtype is not None else onnx.TensorProto.FLOAT
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    proto.ir_version = min(proto.ir_version, max_runtime_ir_version())
    # numpy works on every batch between runs: idle onnxruntime threads must not spin and steal its cores
    opts = session_options(config={"session.intra_op.allow_spinning": "0", **external_data_config(model)})
    return make_session(proto, opts)


def _per_sample_bytes(model: ir.Model, names: Sequence[str]) -> int:
    """Bytes one sample adds to the captured values (axis 0 = batch; unknown dims count as 1)."""
    values = _value_types(model)
    total = 0
    for name in names:
        v = values.get(name)
        if v is None or v.shape is None:
            continue
        dims = [d if isinstance(d, int) else 1 for d in list(v.shape)[1:]]
        itemsize = np.dtype(v.dtype.numpy()).itemsize if v.dtype is not None else 4
        total += int(np.prod(dims, dtype=np.int64)) * itemsize
    return total


def batching(model: ir.Model, source: DataSource, batch_size: int, limit: int | None = None) -> tuple[int, int]:
    """Batch size and sample count to use: a model whose batch axis is fixed gets exactly that size."""
    from ..errors import DataError
    from .data import model_input_specs

    total = len(source) if limit is None else min(limit, len(source))
    fixed = {s.shape[0] for s in model_input_specs(model) if s.shape and isinstance(s.shape[0], int) and s.shape[0] > 0}
    if len(fixed) == 1:
        size = fixed.pop()
        if total < size:
            raise DataError(f"the model's batch size is fixed to {size} but only {total} calibration samples were given")
        return size, total - total % size
    return max(1, batch_size), total


def _run(sess, feeds: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    fetch = [n for n in names if n not in feeds]
    out = dict(zip(fetch, sess.run(fetch, dict(feeds)))) if fetch else {}
    for n in names:
        if n in feeds:
            out[n] = np.asarray(feeds[n])
    return out


def _feeds(sess, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    wanted = {i.name for i in sess.get_inputs()}
    return {k: v for k, v in batch.items() if k in wanted}


def capture(
    model: ir.Model,
    source: DataSource,
    *,
    channels: Iterable[tuple[str, int]] = (),
    layers: Sequence[LayerRequest] = (),
    reference: ir.Model | None = None,
    batch_size: int = 32,
    limit: int | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    seed: int = 0,
    progress: bool = False,
    counts: bool = False,
) -> Capture:
    """Run ``model`` on ``source`` and accumulate statistics of intermediate values.

    ``channels`` lists ``(value, axis)`` pairs for :class:`ChannelStats`;
    ``layers`` lists :class:`LayerRequest`\\ s (exact column sums, and on at most
    ``max_rows`` deterministically sampled rows per batch the Gram matrix of
    ``[x; 1]``).  Batches shrink so that the captured values of one batch stay
    below ``OUTPUT_BUDGET`` bytes.  With ``reference``, the layers' inputs are also taken from
    that model on the same batch and rows (cross Gram, reference column sums):
    sequential reconstruction fits the current model's rows to the reference's.
    ``counts`` makes the channel statistics also count zeros and keep min / max
    (dead and constant channels).
    """
    import time

    from .._progress import progress_bar

    start = time.perf_counter()
    channels = list(dict.fromkeys(channels))
    layers = list(layers)
    names = list(dict.fromkeys([v for v, _ in channels] + [r.view.value for r in layers]))
    result = Capture()
    if not names:
        return result
    sess = session_with_outputs(model, names)
    layer_names = list(dict.fromkeys(r.view.value for r in layers))
    ref_sess = session_with_outputs(reference, layer_names) if reference is not None and layers else None
    per_sample = _per_sample_bytes(model, names) + (_per_sample_bytes(model, layer_names) if ref_sess else 0)
    if per_sample:
        batch_size = max(1, min(batch_size, OUTPUT_BUDGET // per_sample))
    batch_size, limit = batching(model, source, batch_size, limit)
    for r in layers:
        result.layers[r.view.node] = LayerStats(r.view.in_features, want_gram=r.gram, want_cross=ref_sess is not None)
    total = limit
    bar = progress_bar(total, "calibrate", unit="sample", enabled=progress)
    for b, batch in enumerate(source.batches(batch_size, limit)):
        arrays = _run(sess, _feeds(sess, batch), names)
        ref_arrays = _run(ref_sess, _feeds(ref_sess, batch), layer_names) if ref_sess is not None else None
        n = len(next(iter(batch.values())))
        result.samples += n
        result.batches += 1
        for value, axis in channels:
            x = arrays[value]
            stats = result.channels.get((value, axis))
            if stats is None:  # sized on the first batch
                ax = axis + x.ndim if axis < 0 else axis
                stats = result.channels[(value, axis)] = ChannelStats(ax, int(x.shape[ax]), counts=counts)
            stats.update(x)
        for li, r in enumerate(layers):
            view, layer = r.view, result.layers[r.view.node]
            x = arrays[view.value]
            xr = ref_arrays[view.value] if ref_arrays is not None else None
            colsum, count = view.colsum(x)
            layer.add_colsum(colsum, count, view.colsum(xr)[0] if xr is not None else None)
            if r.squares:
                layer.add_sqsum(view.colsum(np.square(x, dtype=np.float64))[0])
            if r.gram:
                index = None
                if count > max_rows:
                    rng = np.random.default_rng([seed, b, li])
                    index = np.sort(rng.choice(count, max_rows, replace=False))
                layer.add_rows(view.rows(x, index), view.rows(xr, index) if xr is not None else None)
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()
    result.seconds = time.perf_counter() - start
    return result


def output_errors(
    reference: ir.Model,
    candidates: Mapping[str, ir.Model],
    source: DataSource,
    values: Sequence[str],
    *,
    batch_size: int = 32,
    limit: int | None = None,
) -> dict[str, dict[str, ErrorStats]]:
    """``||ref - cand||^2`` and ``||ref||^2`` of every value in ``values``, per candidate model.

    The candidates must compute the same values with the same shapes as the
    reference (e.g. masked copies of it).
    """
    names = list(dict.fromkeys(values))
    ref = session_with_outputs(reference, names)
    sessions = {k: session_with_outputs(m, names) for k, m in candidates.items()}
    errors = {k: {n: ErrorStats() for n in names} for k in candidates}
    batch_size, limit = batching(reference, source, batch_size, limit)
    for batch in source.batches(batch_size, limit):
        expected = _run(ref, _feeds(ref, batch), names)
        for key, sess in sessions.items():
            got = _run(sess, _feeds(sess, batch), names)
            for n in names:
                errors[key][n].update(expected[n], got[n])
    return errors
