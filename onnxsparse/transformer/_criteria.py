"""Score heads and neurons with the shared criteria registry (:mod:`onnxsparse.criteria`).

Those criteria never look at op types: they read ``ctx.weights(group)`` -- weight
slices with a role and a ``per_unit(kind)`` reduction -- and return one score per
unit.  Here a unit is a KV head (with its query heads) or an FFN neuron; its
slices are the Q/K/V (or first-layer) columns it produces and the output
projection rows it feeds.  A criterion that cannot score such a group (``bn``:
no normalisation scale; data-driven criteria without their data) returns
``None`` and the caller falls back to ``l2``, saying so in the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxsparse.criteria import available_criteria, get_criterion
from onnxsparse.graph import Role

__all__ = ["UnitSlice", "score_units", "criterion_names", "FALLBACK"]

#: Used when the requested criterion cannot score heads/neurons.
FALLBACK = "l2"


@dataclass(frozen=True)
class UnitSlice:
    """A weight tensor whose entries along ``axis`` belong to units ``owner[i]`` (-1 = none)."""

    array: np.ndarray
    axis: int
    owner: np.ndarray
    n_units: int
    roles: frozenset

    def per_position(self, kind: str) -> np.ndarray:
        a = np.moveaxis(np.asarray(self.array, dtype=np.float64), self.axis, 0).reshape(self.array.shape[self.axis], -1)
        return (np.abs(a) if kind == "abs" else np.square(a)).sum(axis=1)

    def per_unit(self, kind: str) -> np.ndarray:
        mask = self.owner >= 0
        return np.bincount(self.owner[mask], weights=self.per_position(kind)[mask], minlength=self.n_units)


@dataclass(frozen=True)
class _Group:
    size: int


class _Context:
    """The slice of :class:`onnxsparse.criteria.ScoringContext` criteria use."""

    def __init__(self, slices: Sequence[UnitSlice], rng: np.random.Generator) -> None:
        self._slices = tuple(slices)
        self.rng = rng
        self.extras: dict[str, Any] = {}

    def weights(self, group: _Group) -> tuple[UnitSlice, ...]:
        return self._slices


def produce(array: np.ndarray, axis: int, owner: np.ndarray, n_units: int) -> UnitSlice:
    return UnitSlice(array, axis, owner, n_units, frozenset({Role.PRODUCE}))


def consume(array: np.ndarray, axis: int, owner: np.ndarray, n_units: int) -> UnitSlice:
    return UnitSlice(array, axis, owner, n_units, frozenset({Role.CONSUME}))


def score_units(name: str, slices: Sequence[UnitSlice], n_units: int,
                rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Scores (higher = keep) and the criterion actually used."""
    for candidate in (name, FALLBACK):
        try:
            scores = get_criterion(candidate).score(_Group(n_units), _Context(slices, rng))  # type: ignore[arg-type]
        except (AttributeError, KeyError, TypeError):
            scores = None  # a criterion needing more than weight slices
        if scores is not None:
            return np.asarray(scores, dtype=np.float64), candidate
    raise AssertionError("the l2 criterion must score weight slices")  # pragma: no cover


def criterion_names() -> tuple[str, ...]:
    return available_criteria()
