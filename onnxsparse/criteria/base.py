"""Criterion interface and registry.

A criterion scores every root index of a group (higher = more important).  It
never looks at op types: it reads the group's :class:`~onnxsparse.graph.WeightSlice`
objects (weights with a :class:`~onnxsparse.graph.Role`) and, for data-driven
criteria, whatever the :class:`ScoringContext` provides.  Returning ``None``
means "cannot score this group" (e.g. ``bn`` on a group without a
normalisation scale); the caller then falls back and records it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import UsageError
from ..graph import DependencyGraph, Group, WeightSlice

__all__ = [
    "Criterion",
    "ScoringContext",
    "register_criterion",
    "get_criterion",
    "available_criteria",
]


@dataclass
class ScoringContext:
    """What criteria may read besides the weights."""

    graph: DependencyGraph
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    #: extra inputs for data-driven criteria (e.g. activation statistics), by name
    extras: Mapping[str, Any] = field(default_factory=dict)

    def weights(self, group: Group) -> tuple[WeightSlice, ...]:
        return self.graph.weights(group)


class Criterion:
    """Base class; subclasses set ``name``/``description`` and implement :meth:`score`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    requires_data: ClassVar[bool] = False  #: needs calibration statistics (``--calib``)
    #: how ``--global`` makes this criterion's scores comparable across groups:
    #: ``"mean"`` (divide by the group's mean |score|) or ``"standardize"`` ((s - mean) / std)
    global_norm: ClassVar[str] = "mean"

    def score(self, group: Group, ctx: ScoringContext) -> np.ndarray | None:
        """Importance per root index (shape ``[group.size]``), or ``None``."""
        raise NotImplementedError


_REGISTRY: dict[str, type[Criterion]] = {}


def register_criterion(name: str | None = None) -> Callable[[type[Criterion]], type[Criterion]]:
    """Class decorator: make a criterion available by ``name`` (CLI ``--criterion``)."""

    def decorate(cls: type[Criterion]) -> type[Criterion]:
        key = name or cls.name
        if not key:
            raise ValueError(f"{cls.__name__} has no name")
        cls.name = key
        _REGISTRY[key] = cls
        return cls

    return decorate


def get_criterion(name: str | Criterion) -> Criterion:
    if isinstance(name, Criterion):
        return name
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise UsageError(f"unknown criterion {name!r} (choose from {', '.join(available_criteria())})") from None


def available_criteria() -> tuple[str, ...]:
    return tuple(_REGISTRY)
