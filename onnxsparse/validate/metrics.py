"""Fidelity of a candidate's outputs to the reference, and task metrics against labels.

Fidelity is streamed batch by batch (:class:`FidelityAccumulator`), so large
outputs are never held in memory.  Definitions (``r`` reference, ``c``
candidate, ``d = c - r``; axis 0 of an output indexes samples):

- ``max_abs_error`` = max |d|; ``mean_abs_error`` = mean |d|;
- ``rel_error`` = ||d||_2 / ||r||_2 over the whole output (0 when both are 0);
- ``cosine`` = mean over samples of cos(r_i, c_i), each sample flattened
  (``cosine_min`` = the worst sample); outputs of rank 0/1 hold one scalar per
  sample, so for them the cosine of the whole output is used instead;
- for classifier-like outputs (float, last axis >= 2 classes, and rank 2 or a
  name containing logit/prob/score/class): ``top1_agreement`` = fraction of
  positions where argmax over the last axis agrees, ``top5_overlap`` = mean of
  |top5(r) ∩ top5(c)| / 5 (only when there are more than 5 classes);
- for integer/bool outputs: ``exact_match`` = fraction of equal elements.

Task metrics (:data:`METRICS`) score the candidate and the reference against
labels: ``top1``, ``top5``, or any ``module:function`` taking
``(output, labels) -> float`` (set ``function.higher_is_better = False`` for a
loss).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import guard
from ..errors import DataError, UsageError

__all__ = [
    "OutputFidelity",
    "FidelityAccumulator",
    "fidelity",
    "is_classifier_like",
    "Metric",
    "METRICS",
    "DEFAULT_METRICS",
    "register_metric",
    "resolve_metric",
    "top_k_accuracy",
]

_CLASSIFIER_NAME = re.compile(r"logit|prob|score|class", re.IGNORECASE)
TOP_K = 5


def is_classifier_like(name: str, dtype: np.dtype, shape: tuple[int, ...]) -> bool:
    """Whether argmax over the last axis of this output is a prediction."""
    if np.dtype(dtype).kind != "f" or len(shape) < 2 or shape[-1] < 2:
        return False
    return len(shape) == 2 or bool(_CLASSIFIER_NAME.search(name))


@dataclass
class OutputFidelity:
    """How closely one candidate output follows the reference output."""

    name: str
    candidate_name: str
    shape: list[int]
    dtype: str
    classifier: bool = False
    elements: int = 0
    max_abs_error: float | None = None
    mean_abs_error: float | None = None
    rel_error: float | None = None
    cosine: float | None = None
    cosine_min: float | None = None
    top1_agreement: float | None = None
    top5_overlap: float | None = None
    exact_match: float | None = None
    nonfinite: int = 0
    error: str | None = None


class FidelityAccumulator:
    """Streams (reference, candidate) batches of one output into :class:`OutputFidelity`."""

    def __init__(self, name: str, candidate_name: str | None = None) -> None:
        self.name = name
        self.candidate_name = candidate_name or name
        self._shape: tuple[int, ...] | None = None
        self._dtype: np.dtype | None = None
        self._count = 0
        self._abs_sum = 0.0
        self._abs_max = 0.0
        self._nan_diff = False  # NaN - NaN, inf - inf: never report those as small errors
        self._diff_sq = 0.0
        self._ref_sq = 0.0
        self._cand_sq = 0.0
        self._dot = 0.0
        self._cosines: list[np.ndarray] = []
        self._positions = 0
        self._top1 = 0
        self._topk = 0.0
        self._equal = 0
        self._nonfinite = 0
        self._error: str | None = None

    def update(self, reference: np.ndarray, candidate: np.ndarray) -> None:
        if self._error:
            return
        ref, cand = np.asarray(reference), np.asarray(candidate)
        if ref.shape != cand.shape:
            self._error = (
                f"shape mismatch: reference {list(ref.shape)} vs candidate {list(cand.shape)}"
            )
            return
        if ref.dtype.kind not in "fiub" or cand.dtype.kind not in "fiub":
            self._error = f"not a numeric tensor (dtype {ref.dtype}); not compared"
            return
        if self._shape is None:
            self._shape, self._dtype = ref.shape, ref.dtype
        else:
            self._shape = (self._shape[0] + (ref.shape[0] if ref.ndim else 1),) + ref.shape[1:]
        r = ref.astype(np.float64)
        c = cand.astype(np.float64)
        finite = np.isfinite(c)
        self._nonfinite += int(c.size - np.count_nonzero(finite))
        d = np.abs(c - r)
        self._count += d.size
        self._abs_sum += float(d.sum())
        if d.size:
            self._abs_max = max(self._abs_max, float(d.max()))
            self._nan_diff |= bool(np.isnan(d).any())
        self._diff_sq += float(np.square(d).sum())
        self._ref_sq += float(np.square(r).sum())
        self._cand_sq += float(np.square(c).sum())
        self._dot += float((r * c).sum())
        if ref.dtype.kind != "f":
            self._equal += int(np.count_nonzero(ref == cand))
            return
        if ref.ndim >= 2:
            rows_r = r.reshape(r.shape[0], -1)
            rows_c = c.reshape(c.shape[0], -1)
            self._cosines.append(_cosine_rows(rows_r, rows_c))
        if is_classifier_like(self.name, ref.dtype, ref.shape):
            classes = ref.shape[-1]
            flat_r = r.reshape(-1, classes)
            flat_c = c.reshape(-1, classes)
            self._positions += flat_r.shape[0]
            self._top1 += int(np.count_nonzero(flat_r.argmax(-1) == flat_c.argmax(-1)))
            if classes > TOP_K:
                top_r = np.argpartition(-flat_r, TOP_K - 1, axis=-1)[:, :TOP_K]
                top_c = np.argpartition(-flat_c, TOP_K - 1, axis=-1)[:, :TOP_K]
                hits = (top_r[:, :, None] == top_c[:, None, :]).any(-1).sum(-1)
                self._topk += float(hits.sum()) / TOP_K

    def fail(self, reason: str) -> None:
        self._error = reason

    def result(self) -> OutputFidelity:
        out = OutputFidelity(
            self.name,
            self.candidate_name,
            list(self._shape or ()),
            str(self._dtype) if self._dtype is not None else "?",
            nonfinite=self._nonfinite,
            error=self._error,
        )
        if self._error or self._dtype is None:
            if out.error is None:
                out.error = "no batches compared"
            return out
        out.elements = self._count
        out.max_abs_error = self._abs_max if self._count else 0.0
        out.mean_abs_error = self._abs_sum / self._count if self._count else 0.0
        out.rel_error = _ratio(np.sqrt(self._diff_sq), np.sqrt(self._ref_sq))
        if self._nonfinite or self._nan_diff:  # NaN/inf must never look like a small error
            out.max_abs_error = out.mean_abs_error = out.rel_error = float("nan")
        if self._dtype.kind != "f":
            out.exact_match = self._equal / self._count if self._count else 1.0
            return out
        if self._cosines:
            cosines = np.concatenate(self._cosines)
            out.cosine, out.cosine_min = float(cosines.mean()), float(cosines.min())
        else:
            out.cosine = out.cosine_min = _cosine_from_sums(self._dot, self._ref_sq, self._cand_sq)
        out.classifier = self._positions > 0
        if self._positions:
            out.top1_agreement = self._top1 / self._positions
            if self._shape is not None and self._shape[-1] > TOP_K:
                out.top5_overlap = self._topk / self._positions
        return out


def _ratio(num: float, den: float) -> float:
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return float(num / den)


def _cosine_from_sums(dot: float, a_sq: float, b_sq: float) -> float:
    if a_sq == 0 and b_sq == 0:
        return 1.0
    if a_sq == 0 or b_sq == 0:
        return 0.0
    return float(dot / np.sqrt(a_sq * b_sq))


def _cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine per row; two zero rows agree (1), one zero row does not (0)."""
    dot = (a * b).sum(-1)
    na = np.sqrt(np.square(a).sum(-1))
    nb = np.sqrt(np.square(b).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (na * nb)
    cos = np.where((na == 0) & (nb == 0), 1.0, np.where((na == 0) | (nb == 0), 0.0, cos))
    return np.clip(cos, -1.0, 1.0)


def fidelity(reference: np.ndarray, candidate: np.ndarray, name: str = "output") -> OutputFidelity:
    """Fidelity of one whole output (convenience wrapper over the accumulator)."""
    acc = FidelityAccumulator(name)
    acc.update(reference, candidate)
    return acc.result()


# --------------------------------------------------------------------------- task metrics


@dataclass(frozen=True)
class Metric:
    """A task metric: ``fn(output, labels) -> float``; drop = ref - cand (or cand - ref)."""

    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    higher_is_better: bool = True
    description: str = ""

    def __call__(self, output: np.ndarray, labels: np.ndarray) -> float:
        return float(self.fn(output, labels))

    def drop(self, reference: float, candidate: float) -> float:
        """How much worse the candidate is (positive = worse)."""
        return reference - candidate if self.higher_is_better else candidate - reference


METRICS: dict[str, Metric] = {}


def register_metric(name: str, *, higher_is_better: bool = True, description: str = ""):
    """Decorator: make ``fn(output, labels) -> float`` available as ``--metric name``."""

    def wrap(fn: Callable[[np.ndarray, np.ndarray], float]) -> Callable[[np.ndarray, np.ndarray], float]:
        METRICS[name] = Metric(name, fn, higher_is_better, description or (fn.__doc__ or "").strip())
        return fn

    return wrap


def _class_scores(output: np.ndarray, labels: np.ndarray) -> np.ndarray:
    output = np.asarray(output)
    labels = np.asarray(labels)
    if output.shape[: labels.ndim] != labels.shape or output.ndim != labels.ndim + 1:
        raise DataError(
            f"labels of shape {list(labels.shape)} do not index classes of an output of shape "
            f"{list(output.shape)} (expected output shape labels.shape + [classes])"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= output.shape[-1]):
        raise DataError(
            f"labels range {labels.min()}..{labels.max()} but the output has {output.shape[-1]} classes"
        )
    return output


def top_k_accuracy(output: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of positions whose label is among the k highest scores (last axis)."""
    labels = np.asarray(labels)
    if np.asarray(output).shape == labels.shape and k == 1:  # the model outputs class indices
        return float(np.mean(np.asarray(output) == labels))
    scores = _class_scores(output, labels)
    k = min(k, scores.shape[-1])
    label_scores = np.take_along_axis(scores, labels[..., None].astype(np.int64), axis=-1)
    # Rank = how many classes score strictly higher; ties count in the label's favour.
    rank = (scores > label_scores).sum(-1)
    return float(np.mean(rank < k))


@register_metric("top1", description="fraction of samples whose argmax over the last axis equals the label")
def top1(output: np.ndarray, labels: np.ndarray) -> float:
    return top_k_accuracy(output, labels, 1)


@register_metric("top5", description="fraction of samples whose label is among the 5 highest scores")
def top5(output: np.ndarray, labels: np.ndarray) -> float:
    return top_k_accuracy(output, labels, 5)


DEFAULT_METRICS: tuple[str, ...] = ("top1", "top5")


def resolve_metric(spec: str | Metric | Callable) -> Metric:
    """A registered name, ``module:function``, a :class:`Metric` or a callable."""
    if isinstance(spec, Metric):
        return spec
    if callable(spec):
        name = f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', repr(spec))}"
        return Metric(name, spec, bool(getattr(spec, "higher_is_better", True)))
    spec = str(spec).strip()
    if spec in METRICS:
        return METRICS[spec]
    if ":" not in spec:
        raise UsageError(
            f"unknown metric {spec!r}: use one of {', '.join(METRICS)} or module:function"
        )
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"metric {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    source = getattr(module, "__file__", None)
    if source:
        guard.note_read(source, "metric module")
    fn: object = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise UsageError(f"metric {spec!r}: {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise UsageError(f"metric {spec!r} is not callable")
    return Metric(spec, fn, bool(getattr(fn, "higher_is_better", True)))
