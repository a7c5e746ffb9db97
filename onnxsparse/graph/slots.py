"""Slots (one axis of one tensor) and the roles weights play for a slot.

A *slot* is the unit the dependency analysis reasons about: removing position
``p`` of a slot removes index ``p`` along ``axis`` of tensor ``value``.  Slots
of initializers are *weight slots* (a conv's filter axis, a Gemm's input axis,
a BatchNorm's scale); slots of other values are *activation slots*.  A rule may
also create a *virtual* slot that belongs to no tensor, e.g. the norm-group
index of a GroupNormalization, so that its positions can tie several channels
into one removable unit.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Slot", "SlotKey", "Role", "Contraction"]

#: Hashable identity of a slot inside one analysis: ``(value name, axis)``; a
#: virtual slot's value name starts with ``"#"``.
SlotKey = tuple[str, int]


@dataclass(frozen=True, order=True)
class Slot:
    """One axis of one tensor, with a known static size."""

    value: str
    axis: int
    size: int

    @property
    def key(self) -> SlotKey:
        return (self.value, self.axis)

    @property
    def virtual(self) -> bool:
        return self.value.startswith("#")

    def __str__(self) -> str:
        return f"{self.value}[axis {self.axis}]"


class Role(str, enum.Enum):
    """What a weight slot means for the channels coupled to it.

    Criteria select weights by role (never by op type): magnitude criteria use
    ``PRODUCE`` and ``CONSUME``, the ``bn`` criterion uses ``SCALE``.
    """

    PRODUCE = "produce"  #: rows that compute the channel (conv filters, Gemm output rows)
    BIAS = "bias"  #: bias added to the produced channel
    CONSUME = "consume"  #: columns that read the channel (next conv's input channel)
    SCALE = "scale"  #: normalisation scale (gamma)
    SHIFT = "shift"  #: normalisation shift (beta)
    STAT = "stat"  #: running mean / variance
    CONST = "const"  #: per-channel constant of an elementwise op


@dataclass(frozen=True)
class Contraction:
    """A node sums over ``axis`` of its input ``input`` (Conv/Gemm/MatMul).

    This is where removed channels stop mattering: zeroing the channel here
    (through the weight slot ``weight`` = ``(input index, axis)`` when the
    partner is a constant, else by masking the activation) makes it contribute
    nothing, which is how :func:`onnxsparse.graph.masked_copy` builds the
    equivalence oracle.
    """

    node: str
    input: int
    axis: int
    weight: tuple[int, int] | None = None
