"""What data-driven criteria read: a group's consumer contractions with their activation statistics.

A channel matters through the nodes that *sum over it* (the group's
:class:`~onnxsparse.graph.Contraction`\\ s: the next conv's input channel, a
Gemm's ``H*W`` block after a Flatten, ...).  For each of them we pair the
consumer's weight slice (``Role.CONSUME`` positions along the contracted axis)
with the per-channel statistics of the activation it reads
(:class:`~onnxsparse.calibration.stats.ChannelStats`, captured by
:func:`onnxsparse.calibration.capture.capture`).  No op types are involved.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..calibration.stats import SecondMoments
from ..graph import DependencyGraph, Group, WeightSlice

__all__ = ["Moments", "ConsumerTerm", "consumer_terms", "calibration_of", "CALIBRATION_KEY"]

#: ``ScoringContext.extras`` key under which the prune pass puts the captured statistics.
CALIBRATION_KEY = "calibration"


class _Stats(Protocol):
    def channel(self, value: str, axis: int) -> Any: ...


@dataclass(frozen=True)
class Moments(SecondMoments):
    """Activation moments at some positions (arrays of equal shape); ``var`` and ``rms`` from them."""

    mean: np.ndarray
    mean_sq: np.ndarray

    @classmethod
    def of(cls, stats: Any, positions: np.ndarray) -> Moments:
        return cls(stats.mean[positions], stats.mean_sq[positions])

    def averaged(self) -> Moments:
        """Mean over the last axis (several activation positions feed one weight position)."""
        return Moments(self.mean.mean(axis=-1), self.mean_sq.mean(axis=-1))


@dataclass(frozen=True)
class ConsumerTerm:
    """One consumer contraction of a group: its weight along the contracted axis and the input statistics."""

    node: str
    weight: WeightSlice
    act_positions: np.ndarray  #: ``[size, k]`` positions along the activation's contracted axis
    stats: Any  #: :class:`~onnxsparse.calibration.stats.ChannelStats` of that activation


_NAMES: weakref.WeakKeyDictionary[DependencyGraph, dict[str, tuple[str, ...]]] = weakref.WeakKeyDictionary()


def _input_names(dg: DependencyGraph) -> dict[str, tuple[str, ...]]:
    names = _NAMES.get(dg)
    if names is None:
        names = {n.name or "": tuple((v.name or "") if v is not None else "" for v in n.inputs) for n in dg.model.graph}
        _NAMES[dg] = names
    return names


def calibration_of(ctx: Any) -> _Stats | None:
    extras: Mapping[str, Any] = getattr(ctx, "extras", None) or {}
    return extras.get(CALIBRATION_KEY)


def consumer_terms(group: Group, ctx: Any) -> tuple[ConsumerTerm, ...]:
    """Every weighted contraction that sums over ``group``'s channels and has captured statistics."""
    stats = calibration_of(ctx)
    dg = getattr(ctx, "graph", None)
    if stats is None or not isinstance(dg, DependencyGraph):
        return ()
    slices = {w.slot.key: w for w in ctx.weights(group)}
    names = _input_names(dg)
    terms: list[ConsumerTerm] = []
    for c in dg.contractions:
        if c.weight is None:
            continue
        inputs = names.get(c.node, ())
        if c.input >= len(inputs) or c.weight[0] >= len(inputs):
            continue
        x_name, w_name = inputs[c.input], inputs[c.weight[0]]
        weight = slices.get((w_name, c.weight[1]))
        if weight is None:
            continue
        try:
            act = dg.positions(group, (x_name, c.axis))
        except KeyError:
            continue
        s = stats.channel(x_name, c.axis)
        if s is None:
            continue
        terms.append(ConsumerTerm(c.node, weight, act, s))
    return tuple(terms)
