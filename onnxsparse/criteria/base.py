"""Criterion interface and the one registry of criteria (``prune`` and ``sparsify`` alike).

A criterion scores at one or both granularities (higher = more important):

- ``structured``: :meth:`Criterion.score` gives one score per root index of a
  dependency group (channels, heads, neurons) for ``prune``.  It never looks at
  op types: it reads the group's :class:`~onnxsparse.graph.WeightSlice` objects
  (weights with a :class:`~onnxsparse.graph.Role`) and, for data-driven
  criteria, whatever the :class:`ScoringContext` provides;
- ``elementwise``: :meth:`Criterion.score_weight` gives one score per element
  of a weight for ``sparsify`` (patterns then zero the lowest).

A criterion supports a granularity when it overrides that method.  One that
cannot score a particular group or weight raises
:class:`~onnxsparse.errors.Decline` with the reason (e.g. ``bn`` on a group
without a normalisation scale); the caller falls back and records it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

import numpy as np

from ..errors import Decline, UsageError
from ..graph import DependencyGraph, Group, WeightSlice

if TYPE_CHECKING:  # runtime import would be circular: onnxsparse.sparsity re-exports this package
    from ..sparsity.weights import WeightInfo

__all__ = [
    "Kind",
    "KINDS",
    "Criterion",
    "ScoringContext",
    "WeightContext",
    "register_criterion",
    "get_criterion",
    "available_criteria",
]

#: The two granularities: per unit of a dependency group (``prune``), per element of a weight (``sparsify``).
Kind = Literal["structured", "elementwise"]
KINDS: tuple[Kind, ...] = get_args(Kind)
_METHOD: dict[Kind, str] = {"structured": "score", "elementwise": "score_weight"}
_WHAT: dict[Kind, str] = {"structured": "channel groups", "elementwise": "individual weights"}


@dataclass
class ScoringContext:
    """What a structured score may read besides the weights."""

    graph: DependencyGraph
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    #: extra inputs for data-driven criteria (e.g. activation statistics), by name
    extras: Mapping[str, Any] = field(default_factory=dict)

    def weights(self, group: Group) -> tuple[WeightSlice, ...]:
        return self.graph.weights(group)


@dataclass(frozen=True)
class WeightContext:
    """What an element-wise score may read besides the weight itself."""

    info: WeightInfo
    #: per-weight statistics from calibration (e.g. input-feature L2 norms), if any
    stats: Mapping[str, np.ndarray] | None = None


class Criterion:
    """Base class; subclasses set ``name``/``description`` and override :meth:`score`, :meth:`score_weight` or both."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    requires_data: ClassVar[bool] = False  #: needs calibration statistics (``--calib``)
    #: how ``--global`` makes this criterion's scores comparable across groups:
    #: ``"mean"`` (divide by the group's mean |score|) or ``"standardize"`` ((s - mean) / std)
    global_norm: ClassVar[str] = "mean"
    #: element-wise: also changes the kept weights (``sparsify`` calls a reconstruction, not only scores)
    reconstructs: ClassVar[bool] = False

    @property
    def needs_activations(self) -> bool:
        """The name ``sparsify`` used for :attr:`requires_data` before the two registries merged."""
        return self.requires_data

    @classmethod
    def supports(cls, kind: Kind) -> bool:
        """Whether this criterion scores at ``kind`` granularity (it overrides that method)."""
        method = _METHOD[kind]
        return getattr(cls, method) is not getattr(Criterion, method)

    def score(self, group: Group, ctx: ScoringContext) -> np.ndarray:
        """Importance per root index (shape ``[group.size]``); raises :class:`Decline` if it cannot."""
        raise Decline(f"criterion {self.name} does not score {_WHAT['structured']}", subject=self.name)

    def score_weight(self, weight: np.ndarray, ctx: WeightContext) -> np.ndarray:
        """Non-negative scores shaped like ``weight``; raises :class:`Decline` if it cannot."""
        raise Decline(f"criterion {self.name} does not score {_WHAT['elementwise']}", subject=self.name)


_REGISTRY: dict[str, type[Criterion]] = {}


def register_criterion(name: str | None = None) -> Callable[[type[Criterion]], type[Criterion]]:
    """Class decorator: make a criterion available by ``name`` (``prune``/``sparsify --criterion``)."""

    def decorate(cls: type[Criterion]) -> type[Criterion]:
        key = name or cls.name
        if not key:
            raise ValueError(f"{cls.__name__} has no name")
        cls.name = key
        _REGISTRY[key] = cls
        return cls

    return decorate


def get_criterion(name: str | Criterion, kind: Kind | None = None) -> Criterion:
    """The criterion called ``name`` (an instance passes through); with ``kind``, one that scores at it."""
    if isinstance(name, Criterion):
        crit = name
    else:
        try:
            crit = _REGISTRY[name]()
        except KeyError:
            raise UsageError(f"unknown criterion {name!r} (choose from {', '.join(available_criteria(kind))})") from None
    if kind is not None and not crit.supports(kind):
        raise UsageError(f"criterion {crit.name!r} does not score {_WHAT[kind]} "
                         f"(choose from {', '.join(available_criteria(kind))})")
    return crit


def available_criteria(kind: Kind | None = None) -> tuple[str, ...]:
    """Registered names in registration order; with ``kind``, only those scoring at that granularity."""
    return tuple(n for n, cls in _REGISTRY.items() if kind is None or cls.supports(kind))
