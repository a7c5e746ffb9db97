"""What a matcher finds: a prunable block, or a skipped one with its reason."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from ._criteria import consume, produce, score_units
from ._track import Region, Removal

__all__ = ["Block", "SkippedBlock", "block_name", "units_to_remove"]


@dataclass
class Block:
    """An attention block (units = KV heads, each with its query heads) or an FFN (units = neurons)."""

    name: str
    kind: str  # "attention" | "ffn"
    form: str  # matcher name, e.g. "decomposed", "ms_attention", "ffn"
    region: Region
    anchor: ir.Node
    n_units: int
    q_heads: int = 0
    kv_heads: int = 0
    head_size: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def unit_space(self) -> str:
        return "kv" if self.kind == "attention" else "n"

    def unit_of(self, space: str, units: np.ndarray) -> np.ndarray:
        if space == self.unit_space or space == "n":
            return units
        if space == "q":
            table = self.region.kv_of_q
            return np.array([table[int(u)] for u in units], dtype=np.int64)
        raise KeyError(space)  # pragma: no cover

    def scores(self, criterion: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """One importance score per unit from the weight slices it owns, and the criterion used
        (``l2`` when ``criterion`` cannot score heads/neurons)."""
        slices = []
        for st in self.region.scores:
            arr = st.value.const_value.numpy()  # type: ignore[union-attr]
            owner = self.unit_of(st.track.space, st.track.units).astype(np.int64)
            make = consume if st.role == "consume" else produce
            slices.append(make(arr, st.axis, owner, self.n_units))
        return score_units(criterion, slices, self.n_units, rng)

    def removal(self, removed: Sequence[int]) -> Removal:
        gone = {int(u) for u in removed}
        if self.kind == "attention":
            q_gone = {q for q, kv in self.region.kv_of_q.items() if kv in gone}
            return Removal({"kv": gone, "q": q_gone})
        return Removal({"n": gone})

    def signature_changes(self) -> list[Any]:
        return list(self.region.signature)


@dataclass
class SkippedBlock:
    name: str
    kind: str
    form: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind, "form": self.form, "reason": self.reason}


def _prefix(names: Sequence[str]) -> str:
    if len(names) < 2:
        if not names:
            return ""
        cut = max(names[0].rfind("/"), names[0].rfind("."))
        return (names[0][:cut] if cut > 0 else names[0]).strip("/._")
    prefix = os.path.commonprefix(list(names))
    cut = max(prefix.rfind("/"), prefix.rfind("."))
    prefix = prefix[:cut] if cut > 0 else prefix
    return prefix.strip("/._")


def block_name(nodes: Sequence[ir.Node], fallback: str, region: Region | None = None) -> str:
    """A readable block name: the common prefix of its nodes' names (``/layers.0/attn``), or,
    when exporters named nodes generically (dynamo's ``node_MatMul_3``), of the state-dict-like
    names of the weights it touches (``layers.0.attn``)."""
    by_nodes = _prefix([n.name for n in nodes if n.name])
    if any(c.isdigit() for c in by_nodes):
        return by_nodes
    if region is not None:
        weights = sorted({
            v.name for n in [*nodes, *region.nodes] for v in n.inputs
            if v is not None and v.name and v.is_initializer() and "." in v.name and v.const_value is not None
            and v.const_value.size > 1
        })
        by_weights = _prefix(weights)
        if len(by_weights) >= 2:
            return by_weights
    return by_nodes if len(by_nodes) >= 2 else fallback


def units_to_remove(n_units: int, ratio: float, round_to: int = 1) -> int:
    """How many units to drop for ``ratio``: floor(ratio * n), at least one kept, the kept
    count rounded up to a multiple of ``round_to``."""
    if n_units <= 1 or ratio <= 0:
        return 0
    remove = min(n_units - 1, int(math.floor(ratio * n_units + 1e-9)))
    keep = n_units - remove
    if round_to > 1:
        keep = min(n_units, int(math.ceil(keep / round_to) * round_to))
    return n_units - keep
