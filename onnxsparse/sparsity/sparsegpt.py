"""SparseGPT (Frantar & Alistarh 2023): prune with OBS saliency and update the kept weights.

A linear layer ``Y = W X`` (``W`` viewed as ``[out, in]``) with input Gram
``H = X X^T`` is pruned column block by column block.  Within a block the
weights with the lowest saliency ``w^2 / [H^-1]_jj^2`` are zeroed (unstructured:
the same share of every block; ``N:M``: per group of ``M`` columns in a row),
and each pruned column's error is pushed onto the columns not yet visited with
the upper Cholesky factor of ``H^-1`` — the optimal-brain-surgeon update, so the
layer's output on the calibration data moves as little as possible.

The Hessian comes from :func:`onnxsparse.calibration.capture.capture` (Gram of
the layer's input rows, Conv through im2col).  Layers are captured in passes
that keep the Gram matrices under a memory budget.  Only float weights read
by one ``MatMul(x, W)``, ``Gemm`` or ungrouped ``Conv`` are updated; the caller
scores the others another way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from ..errors import Decline
from .weights import WeightInfo, _uses, contraction

if TYPE_CHECKING:  # only for annotations: this module reaches calibration lazily, inside functions
    from ..calibration.data import DataSource

__all__ = ["LayerLayout", "layer_layouts", "sparsegpt", "hessians", "prune_weight"]

#: Gram matrices held at once during one calibration pass (bytes).
GRAM_BUDGET = 512 << 20
#: Columns updated together (the reference implementation's block size).
BLOCK = 128
#: Dampening added to the Hessian diagonal, relative to its mean.
DAMP = 0.01
#: Layers with more input features are left to the fallback (the Gram would be too large).
MAX_FEATURES = 8192
#: Up to this many input features the Hessian is factored in float64, above in float32.
EXACT_FEATURES = 4096


@dataclass(frozen=True)
class LayerLayout:
    """How a weight array maps to the ``[out, in]`` matrix whose ``in`` columns the Gram describes."""

    node: ir.Node
    input_index: int
    axis: int
    transpose: bool  # weight stored [in, out] (MatMul, Gemm without transB)

    def matrix(self, weight: np.ndarray) -> np.ndarray:
        return weight.T if self.transpose else weight.reshape(weight.shape[0], -1)

    def unmatrix(self, w2d: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return w2d.T if self.transpose else w2d.reshape(shape)


def _layout(node: ir.Node, index: int) -> LayerLayout:
    """How SparseGPT sees ``node``'s weight input ``index`` as a matrix; declines for layers it does not update."""
    found = contraction(node, index)
    if node.op_type in ("MatMul", "Gemm") and index != 1:
        raise Decline(f"{node.op_type} weight on the left (input {index})")
    if found.groups != 1:
        raise Decline(f"grouped Conv (group={found.groups})")
    return LayerLayout(node, found.data_input, found.data_axis, found.transposed)


def layer_layouts(model: ir.Model, infos: Sequence[WeightInfo]) -> dict[str, LayerLayout | str]:
    """Per weight: its layer layout, or why SparseGPT does not update it."""
    out: dict[str, LayerLayout | str] = {}
    for info in infos:
        value = model.graph.initializers.get(info.name)
        uses = list(_uses(value)) if value is not None else []
        if info.quant is not None:
            out[info.name] = "quantized weight (SparseGPT changes the kept values)"
        elif len(uses) != 1:
            out[info.name] = f"read by {len(uses)} nodes, not one layer"
        elif uses[0][2] is not None:
            out[info.name] = "weight behind DequantizeLinear"
        elif uses[0][0].op_type in ("MatMul", "Gemm") and len(info.shape) != 2:
            out[info.name] = f"{len(info.shape)}-D {uses[0][0].op_type} weight"
        else:
            try:
                out[info.name] = _layout(uses[0][0], uses[0][1])
            except Decline as exc:
                out[info.name] = exc.reason
    return out


def hessians(model: ir.Model, layouts: dict[str, LayerLayout], source: DataSource, *, batch_size: int = 32,
             limit: int | None = None, progress: bool = False) -> Iterator[tuple[str, np.ndarray | str]]:
    """``(weight, H [in, in] or why none)`` for every layout, one calibration pass per ``GRAM_BUDGET``.

    A generator: the caller uses each pass's Hessians before the next pass
    computes more, so memory stays within the budget whatever the model's size.
    """
    from ..calibration.capture import LayerRequest, capture, chunk_requests, linear_view

    requests: list[LayerRequest] = []
    owner: dict[str, str] = {}
    for name, layout in layouts.items():
        try:
            view = linear_view(layout.node, layout.input_index, layout.axis)
        except Decline as exc:
            yield name, exc.reason
            continue
        if view.in_features > MAX_FEATURES:
            yield name, f"{view.in_features} input features (more than {MAX_FEATURES})"
        else:
            view = replace(view, node=f"{len(requests)}:{view.node}")  # a unique key: node names may be empty
            requests.append(LayerRequest(view, gram=True))
            owner[view.node] = name
    for chunk in chunk_requests(requests, GRAM_BUDGET):
        captured = capture(model, source, layers=chunk, batch_size=batch_size, limit=limit, progress=progress)
        for request in chunk:
            stats = captured.layers.pop(request.view.node, None)
            name = owner[request.view.node]
            if stats is None or stats.gram is None or stats.sampled == 0:
                yield name, "no calibration rows reached the layer"
                continue
            k = request.view.in_features
            gram = stats.gram[:k, :k]  # a view: the ones row/column (bias) is not a weight
            np.divide(gram, stats.sampled, out=gram)  # in place: no second [k, k] copy
            yield name, gram


def _inverse_cholesky(h: np.ndarray) -> np.ndarray | None:
    """Upper Cholesky factor of ``H^-1`` (damped ``H``), or None if ``H`` stays indefinite.

    Works in place with LAPACK (``potrf``, ``potri``, ``potrf``): a ``[k, k]``
    Hessian costs about one extra copy of itself.  float64 up to
    ``EXACT_FEATURES`` features, float32 above (as the reference runs on GPUs).
    """
    from scipy.linalg import lapack

    dtype = np.float64 if h.shape[0] <= EXACT_FEATURES else np.float32
    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), dtype=np.dtype(dtype))
    diag = np.einsum("ii->i", h).astype(np.float64)
    dead = diag <= 0
    damp = DAMP * float(np.mean(np.where(dead, 1.0, diag)))
    for _ in range(6):
        a: np.ndarray = np.array(h, dtype=dtype, order="F", copy=True)
        diagonal = np.arange(a.shape[0])
        a[diagonal[dead], diagonal[dead]] = 1.0  # features never seen: any value keeps H definite
        a[diagonal, diagonal] += damp
        c, info = potrf(a, lower=1, overwrite_a=1)
        if info == 0:
            inv, info = potri(c, lower=1, overwrite_c=1)  # H^-1 in the lower triangle
            if info == 0:
                u, info = potrf(inv.T, lower=0, overwrite_a=1, clean=1)  # its upper factor, read from there
                if info == 0:
                    return np.asarray(u, dtype=np.float64)
        damp *= 10
    return None


def sparsegpt(w2d: np.ndarray, h: np.ndarray, sparsity: float, nm: tuple[int, int] | None = None,
              block: int = BLOCK) -> np.ndarray | None:
    """The pruned and updated ``[out, in]`` matrix (float64), or None if the Hessian cannot be inverted.

    Unstructured: ``round(sparsity * size)`` of every column block's weights are
    zeroed (lowest saliency first).  ``nm = (n, m)``: ``m - n`` of every ``m``
    consecutive columns of each row.
    """
    hinv = _inverse_cholesky(h)
    if hinv is None:
        return None
    w = np.array(w2d, dtype=np.float64, copy=True)
    rows, cols = w.shape
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = w[:, i1:i2].copy()
        q1 = np.zeros_like(w1)
        err1 = np.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        diag = np.diag(h1)
        drop = np.zeros(w1.shape, dtype=bool)
        if nm is None:
            saliency = (w1 / diag) ** 2
            count = int(round(sparsity * saliency.size))
            if count:
                drop.reshape(-1)[np.argsort(saliency, axis=None, kind="stable")[:count]] = True
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                span = slice(i, min(i + nm[1], i2 - i1))
                saliency = (w1[:, span] / diag[span]) ** 2
                lowest = np.argsort(saliency, axis=1, kind="stable")[:, : nm[1] - nm[0]]
                np.put_along_axis(drop[:, span], lowest, True, axis=1)
            column = w1[:, i]
            q = np.where(drop[:, i], 0.0, column)
            q1[:, i] = q
            err = (column - q) / h1[i, i]
            w1[:, i:] -= np.outer(err, h1[i, i:])
            err1[:, i] = err
        w[:, i1:i2] = q1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return w


def prune_weight(raw: np.ndarray, layout: LayerLayout, h: np.ndarray, sparsity: float,
                 nm: tuple[int, int] | None) -> np.ndarray | None:
    """``raw`` (a float weight in its stored layout and dtype) pruned and updated by SparseGPT.

    N:M groups run along the weight's reduction axis: for a Conv that is the
    input channels at one kernel offset, so the ``[out, C*kh*kw]`` columns are
    visited offset-major (a permutation of columns and Hessian; SparseGPT
    allows any order).
    """
    w2d = layout.matrix(raw.astype(np.float64))
    order = None
    if nm is not None and raw.ndim > 2 and not layout.transpose:
        channels, offsets = raw.shape[1], int(np.prod(raw.shape[2:], dtype=np.int64))
        order = (np.arange(channels)[None, :] * offsets + np.arange(offsets)[:, None]).reshape(-1)
        w2d, h = w2d[:, order], h[np.ix_(order, order)]
    block = BLOCK if nm is None else nm[1] * max(1, BLOCK // nm[1])
    new = sparsegpt(w2d, h, sparsity, nm, block)
    if new is None:
        return None
    if order is not None:
        restored = np.empty_like(new)
        restored[:, order] = new
        new = restored
    return np.ascontiguousarray(layout.unmatrix(new, raw.shape).astype(raw.dtype))
