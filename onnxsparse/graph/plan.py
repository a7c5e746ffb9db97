"""A pruning plan: which root indices of which groups to remove."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from .dependency import DependencyGraph
from .slots import SlotKey

__all__ = ["PrunePlan"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class PrunePlan:
    """Root indices to remove per group id, bound to the analysis they index into."""

    graph: DependencyGraph
    removed: Mapping[int, tuple[int, ...]]
    _masks: dict[SlotKey, np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def create(cls, graph: DependencyGraph, removed: Mapping[int, Sequence[int] | np.ndarray]) -> PrunePlan:
        """Validate and normalise (sorted, unique) removal indices."""
        clean: dict[int, tuple[int, ...]] = {}
        for gid, indices in removed.items():
            idx = sorted({int(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1)})
            if not idx:
                continue
            if not 0 <= gid < len(graph.groups):
                raise UsageError(f"no group {gid}")
            group = graph.groups[gid]
            if not group.prunable:
                raise UsageError(f"group {gid} is not prunable: {group.reason}")
            if idx[0] < 0 or idx[-1] >= group.size:
                raise UsageError(f"group {gid}: indices out of range 0..{group.size - 1}")
            if len(idx) >= group.size:
                raise UsageError(f"group {gid}: cannot remove all {group.size} units")
            clean[gid] = tuple(idx)
        if clean:
            from .rewrite import check_rewrites

            for gid, reason in check_rewrites(graph, clean).items():
                logger.info("group %d skipped: %s", gid, reason)
                graph.skip(gid, reason)
                del clean[gid]
        return cls(graph, clean)

    def masks(self) -> dict[SlotKey, np.ndarray]:
        """Keep-masks of every slot that changes (computed once)."""
        if self._masks is None:
            object.__setattr__(self, "_masks", self.graph.keep_masks(self.removed))
        return self._masks  # type: ignore[return-value]

    def kept(self, group_id: int) -> int:
        return self.graph.groups[group_id].size - len(self.removed.get(group_id, ()))

    @property
    def empty(self) -> bool:
        return not self.removed
