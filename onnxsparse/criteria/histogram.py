"""Where a ``prune --threshold`` lies: a log-bucket histogram of raw criterion scores.

Group-lasso training leaves dead units at exactly zero (or at float noise) and live ones orders of
magnitude above, so one bucket per decade shows the gap a threshold goes into.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["log_histogram", "histogram_line"]


def log_histogram(scores: Iterable[float]) -> dict[str, Any]:
    """``{"units", "zero", "buckets": [{"lo", "hi", "count"}]}``: exact zeros apart, then one bucket
    per decade ``[10^k, 10^(k+1))`` from the smallest positive score's decade to the largest's."""
    values = np.asarray(list(scores), dtype=np.float64).reshape(-1)
    values = values[np.isfinite(values)]
    positive = values[values > 0]
    buckets: list[dict[str, Any]] = []
    if positive.size:
        exps = np.floor(np.log10(positive)).astype(np.int64)
        # log10 rounding can put an exact power of ten one decade low: compare with the edge itself
        exps += positive >= 10.0 ** (exps + 1)
        lo, hi = int(exps.min()), int(exps.max())
        counts = np.bincount(exps - lo, minlength=hi - lo + 1)
        buckets = [{"lo": 10.0**(lo + i), "hi": 10.0**(lo + i + 1), "count": int(c)} for i, c in enumerate(counts)]
    return {"units": int(values.size), "zero": int(np.count_nonzero(values <= 0)), "buckets": buckets}


def _decade(value: float) -> str:
    return f"1e{int(round(math.log10(value)))}"


def histogram_line(hist: dict[str, Any]) -> str:
    """Compact terminal form: ``0:12 | 1e-9:0 | ... | 1e0:40`` (a bucket is named by its lower edge)."""
    parts = [f"0:{hist['zero']}"] if hist["zero"] else []
    parts += [f"{_decade(b['lo'])}:{b['count']}" for b in hist["buckets"]]
    return " | ".join(parts) or "no scores"
