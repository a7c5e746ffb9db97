"""Channel dependency analysis: which positions of which tensors must be removed together.

How it works
------------
1. Every node's rule declares couplings between slots (one axis of one tensor)
   with an index map (:mod:`.index_maps`), plus weight roles, contractions and
   blocks.  Axes a rule leaves unmapped are blocked automatically.  Graph
   inputs/outputs, values captured by subgraphs and excluded nodes' outputs are
   blocked too.
2. Each slot position becomes a vertex; each coupling adds the edges its map
   lists.  Connected components (scipy, linear time) are the *units*: the
   smallest sets of positions that can be removed together (one conv filter
   plus the BN entries, the residual partner's channel, the next conv's input
   column, the ``H*W`` block of a Flatten, ...).
3. Units touching exactly the same slots (with the same multiplicity) form a
   *group*.  A group's units are its root index space: pruning removes the same
   root indices from every member.  A group is prunable unless one of its slots
   is blocked (the reasons are kept) or it has a single unit.

Only groups that own weights (a slot of an initializer with a ``PRODUCE`` or
``CONSUME`` role) are reported; the rest (batch, spatial, sequence axes) are
structural and never pruning candidates.
"""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx_ir as ir
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..errors import Decline, UsageError
from . import value_facts as _shapes
from ._sharing import reshare, unshare_small_constants
from .weights import is_weight, weight_array
from .context import CoupleContext
from .index_maps import IndexMap, simplify
from .registry import OpRule, RuleRegistry
from .slots import Contraction, Role, Slot, SlotKey

__all__ = ["Member", "Group", "WeightSlice", "DependencyGraph", "build_groups", "internal_error"]

logger = logging.getLogger(__name__)

_WEIGHT_ROLES = frozenset({Role.PRODUCE, Role.CONSUME})


@dataclass(frozen=True)
class Member:
    """One slot of a group and how root indices land on it."""

    slot: Slot
    index_map: IndexMap  #: root index -> positions along ``slot.axis``
    roles: frozenset[Role] = frozenset()
    weight: bool = False  #: the slot belongs to an initializer

    def describe(self) -> str:
        roles = ",".join(sorted(r.value for r in self.roles))
        return f"{self.slot} {self.index_map.describe()}" + (f" ({roles})" if roles else "")


@dataclass(frozen=True)
class Group:
    """Slots whose positions are removed together, indexed by a shared root index."""

    id: int
    size: int  #: number of root indices (removable units)
    root: Slot
    members: tuple[Member, ...]
    nodes: tuple[str, ...]  #: nodes touching a member slot, in graph order
    prunable: bool
    reasons: tuple[str, ...] = ()
    #: what one unit is: ``channel``, ``head``, ``kv_group`` or ``neuron`` (see :mod:`.kinds`)
    kind: str = "channel"

    @property
    def reason(self) -> str | None:
        return self.reasons[0] if self.reasons else None

    @property
    def channels(self) -> int:
        """Positions on the root slot (channels of the root tensor)."""
        for m in self.members:
            if m.slot == self.root:
                return self.size * _row_len(m.index_map, self.size)
        return self.size

    def weight_members(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.weight)

    def describe(self) -> str:
        head = f"group {self.id}: {self.size} units rooted at {self.root}"
        state = "prunable" if self.prunable else f"blocked: {self.reason}"
        return f"{head} [{state}]\n" + "\n".join(f"  {m.describe()}" for m in self.members)


def _row_len(index_map: IndexMap, n: int) -> int:
    return int(index_map.table(n).shape[1]) if n else 0


@dataclass(frozen=True, eq=False)
class WeightSlice:
    """The weights one group member owns: what criteria score.

    ``positions[r]`` lists the indices along ``slot.axis`` of the tensor that
    belong to root index ``r``.
    """

    slot: Slot
    roles: frozenset[Role]
    nodes: tuple[str, ...]
    positions: np.ndarray
    _graph: DependencyGraph = field(repr=False)

    def array(self) -> np.ndarray:
        """The weight tensor as float32 (a view when already float32)."""
        return self._graph._float_array(self.slot.value)

    def per_position(self, kind: str) -> np.ndarray:
        """``kind`` = ``"abs"`` or ``"sq"``: sum of |w| or w^2 over all other axes (cached)."""
        return self._graph._per_position(self.slot.value, self.slot.axis, kind)

    def per_unit(self, kind: str) -> np.ndarray:
        """Sum of ``per_position(kind)`` over each root index's positions."""
        return self.per_position(kind)[self.positions].sum(axis=1)


class _Analysis:
    """Mutable state while rules run (private to :func:`build_groups`)."""

    def __init__(self) -> None:
        self.sizes: dict[SlotKey, int] = {}
        self.couplings: list[tuple[SlotKey, SlotKey, IndexMap]] = []
        self.blocks: dict[SlotKey, list[str]] = {}
        self.roles: dict[SlotKey, set[Role]] = {}
        self.slot_nodes: dict[SlotKey, list[int]] = {}
        self.contractions: list[Contraction] = []
        self.node_rules: dict[str, OpRule | None] = {}
        self.node_versions: dict[str, int] = {}
        #: head axes rules declared -> query heads per position (1, or G under grouped-query attention)
        self.heads: dict[SlotKey, int] = {}
        #: reasons that only say "this is a graph input/output" (heads may lift them, see build_groups)
        self.io_reasons: set[str] = set()

    def size_of(self, value: ir.Value, axis: int) -> int | None:
        d = _shapes.dims(value)
        if d is None or axis >= len(d):
            return None
        return d[axis]

    def block(self, key: SlotKey, size: int | None, reason: str) -> None:
        if not size:
            return
        self.sizes.setdefault(key, size)
        reasons = self.blocks.setdefault(key, [])
        if reason not in reasons:
            reasons.append(reason)

    def block_value(self, value: ir.Value, reason: str) -> None:
        d = _shapes.dims(value)
        for axis, size in enumerate(d or ()):
            self.block((value.name or "", axis), size, reason)

    def commit(self, ctx: CoupleContext, rule: OpRule | None, order: int) -> None:
        node = ctx.node
        for key, size in ctx.sizes.items():
            self.sizes.setdefault(key, size)
        self.couplings.extend(ctx.couplings)
        for key, reason in ctx.blocks:
            self.block(key, ctx.sizes.get(key), reason)
        for key, role in ctx.roles:
            self.roles.setdefault(key, set()).add(role)
        self.contractions.extend(ctx.contractions)
        for key, queries in ctx.heads:
            self.heads[key] = max(queries, self.heads.get(key, 1))
        self.node_rules[ctx.name] = rule
        self.node_versions[ctx.name] = ctx.version
        touched = set(ctx.handled_axes)
        touched.update(k for k, _ in ctx.roles)
        for value in (*node.inputs, *node.outputs):
            if value is None:
                continue
            d = _shapes.dims(value)
            for axis, dim in enumerate(d or ()):
                key = (value.name or "", axis)
                if key not in ctx.handled_axes:
                    self.block(key, dim, f"{ctx.describe()} does not map axis {axis} of '{key[0]}'")
                if dim:
                    touched.add(key)
        for key in touched:
            nodes = self.slot_nodes.setdefault(key, [])
            if not nodes or nodes[-1] != order:
                nodes.append(order)


class DependencyGraph:
    """Result of :func:`build_groups`: the groups of a model and how to act on them."""

    groups: tuple[Group, ...]

    def __init__(
        self,
        model: ir.Model,
        analysis: _Analysis,
        node_names: list[str],
        stats: dict[str, float],
        *,
        allow_signature_change: bool = False,
    ) -> None:
        self.model = model
        self.allow_signature_change = allow_signature_change
        self._an = analysis
        self._node_names = node_names
        self.stats = stats
        self.contractions: tuple[Contraction, ...] = tuple(analysis.contractions)
        self._values = _value_map(model.graph)
        self._cache: dict[tuple[str, int, str], np.ndarray] = {}
        self._float_cache: dict[str, np.ndarray] = {}
        #: small shared initializers copied per node by :func:`build_groups` (copy -> original)
        self.shared_copies: dict[str, str] = {}
        #: every initializer that was shared by several nodes (originals and their copies), kept after pruning
        self.shared_names: frozenset[str] = frozenset()
        self._qdq = {i for i, node in enumerate(model.graph)
                     if node.op_type in ("QuantizeLinear", "DequantizeLinear")}
        self._solve()

    # -- public ----------------------------------------------------------
    @property
    def prunable(self) -> tuple[Group, ...]:
        return tuple(g for g in self.groups if g.prunable)

    @property
    def skipped(self) -> tuple[Group, ...]:
        return tuple(g for g in self.groups if not g.prunable)

    def group(self, group_id: int) -> Group:
        return self.groups[group_id]

    def skip(self, group_id: int, reason: str) -> Group:
        """Make a group not prunable with ``reason`` (e.g. a criterion or rewrite failed on it)."""
        old = self.groups[group_id]
        new = replace(old, prunable=False, reasons=(reason, *(r for r in old.reasons if r != reason)))
        self.groups = (*self.groups[:group_id], new, *self.groups[group_id + 1 :])
        self.stats["prunable_groups"] = sum(g.prunable for g in self.groups)
        return new

    def groups_at(self, value: str, axis: int) -> tuple[Group, ...]:
        """Groups that own positions of slot ``(value, axis)``."""
        index = self._slot_index.get((value, axis))
        if index is None:
            return ()
        ids = {g for g, slots in self._group_slots.items() if index in slots}
        return tuple(self.groups[i] for i in sorted(ids))

    def rule_for(self, node_name: str) -> OpRule | None:
        return self._an.node_rules.get(node_name)

    def version_for(self, node_name: str) -> int:
        return self._an.node_versions.get(node_name, 1)

    def roles_of(self, key: SlotKey) -> frozenset[Role]:
        return frozenset(self._an.roles.get(key, ()))

    def value(self, name: str) -> ir.Value | None:
        return self._values.get(name)

    def positions(self, group: Group, key: SlotKey) -> np.ndarray:
        """``[size, k]`` positions along the slot for each root index of ``group``."""
        return self._tables[group.id][key]

    def weights(self, group: Group) -> tuple[WeightSlice, ...]:
        """Weight slices of every initializer member (what criteria score)."""
        out = []
        for m in group.members:
            if not m.weight:
                continue
            key = m.slot.key
            nodes = tuple(self._node_names[i] for i in self._an.slot_nodes.get(key, ()))
            out.append(WeightSlice(m.slot, m.roles, nodes, self._tables[group.id][key], self))
        return tuple(out)

    def keep_masks(self, removed: Mapping[int, Sequence[int] | np.ndarray]) -> dict[SlotKey, np.ndarray]:
        """Boolean keep-mask for every slot that loses positions when ``removed`` root indices go."""
        flags = np.zeros(self._n_labels, dtype=bool)
        touched: set[int] = set()
        for gid, indices in removed.items():
            idx = np.asarray(indices, dtype=np.int64)
            if idx.size == 0:
                continue
            flags[self._units[gid][idx]] = True
            touched.update(self._group_slots[gid])
        masks: dict[SlotKey, np.ndarray] = {}
        for s in sorted(touched):
            base, size = int(self._bases[s]), int(self._sizes[s])
            gone = flags[self._labels[base : base + size]]
            if gone.any():
                masks[self._slot_keys[s]] = ~gone
        return masks

    def queries_per_unit(self, group: Group) -> int:
        """Query heads per unit of a head / KV group (1 for plain heads, G under grouped-query attention)."""
        from .kinds import queries_per_unit

        rows = {key: int(t.shape[1]) for key, t in self._tables[group.id].items()}
        return queries_per_unit(group, self._an.heads, rows)

    def unattached_heads(self) -> list[tuple[str, tuple[str, ...]]]:
        """Head axes (declared by rules) that reach no weight, so form no head group: one entry per
        attention (connected head axes), ``(tensor name, reasons its slots are blocked)``.

        This is how an attention block whose heads cannot be tied to its projections (an op with no
        rule in between, a run-time shape we cannot follow) is reported instead of silently missing.
        """
        in_groups = {self._slot_index[m.slot.key] for g in self.groups for m in g.members
                     if m.slot.key in self._slot_index}
        slot_of_pos = np.repeat(np.arange(len(self._slot_keys), dtype=np.int64), self._sizes)
        seen: set[int] = set()
        out: list[tuple[str, tuple[str, ...]]] = []
        for key in sorted(self._an.heads, key=lambda k: self._slot_index.get(k, -1)):
            s = self._slot_index.get(key)
            if s is None or s in in_groups:
                continue
            base, size = int(self._bases[s]), int(self._sizes[s])
            labels = np.unique(self._labels[base : base + size])
            if any(int(lab) in seen for lab in labels):
                continue
            seen.update(int(lab) for lab in labels)
            slots = np.unique(slot_of_pos[np.isin(self._labels, labels)])
            reasons: list[str] = []
            for t in slots.tolist():
                for reason in self._an.blocks.get(self._slot_keys[t], ()):
                    if reason not in reasons:
                        reasons.append(reason)
            out.append((key[0], tuple(reasons) or ("the heads reach no projection weight",)))
        return out

    def restore_sharing(self) -> None:
        """Merge per-node copies of small shared initializers that pruning left identical."""
        reshare(self.model, self.shared_copies)
        self.shared_copies = {}

    def summary(self) -> str:
        return "\n".join(g.describe() for g in self.groups)

    # -- internals ---------------------------------------------------------
    def _float_array(self, name: str) -> np.ndarray:
        arr = self._float_cache.get(name)
        if arr is None:
            arr = weight_array(self._values[name])  # an initializer, or dequantized int codes
            self._float_cache[name] = arr
        return arr

    def _per_position(self, name: str, axis: int, kind: str) -> np.ndarray:
        key = (name, axis, kind)
        out = self._cache.get(key)
        if out is None:  # every axis in one pass over the weight: criteria ask for rows and columns
            for k, reduced in _reduce_each_axis(self._float_array(name), kind, {0, 1, axis}).items():
                self._cache[(name, k, kind)] = reduced
            out = self._cache[key]
        return out

    def _solve(self) -> None:
        an = self._an
        bad = [k for k, n in an.sizes.items() if n <= 0]
        for key in bad:  # slots of no positions (or a negative "size"): nothing to couple
            logger.debug("slot %s has size %d: dropped", key, an.sizes[key])
            del an.sizes[key]
        if bad:
            dropped = set(bad)
            an.couplings = [c for c in an.couplings if c[0] not in dropped and c[1] not in dropped]
        keys = list(an.sizes)
        self._slot_keys = keys
        self._slot_index = {k: i for i, k in enumerate(keys)}
        sizes = np.array([an.sizes[k] for k in keys], dtype=np.int64)
        bases = np.zeros(len(keys) + 1, dtype=np.int64)
        np.cumsum(sizes, out=bases[1:])
        self._sizes, self._bases = sizes, bases
        total = int(bases[-1])
        rows, cols = [], []
        for ka, kb, m in an.couplings:
            ia, ib = self._slot_index[ka], self._slot_index[kb]
            try:
                src, dst = m.pairs(int(sizes[ia]))
                if src.size and (src.min() < 0 or src.max() >= sizes[ia] or dst.min() < 0 or dst.max() >= sizes[ib]):
                    raise ValueError(f"{m.describe()} maps {int(sizes[ia])} positions of {ka} outside the "
                                     f"{int(sizes[ib])} positions of {kb}")
            except Exception as exc:  # noqa: BLE001 - a bad coupling blocks its slots, never the whole analysis
                logger.debug("coupling %s -> %s failed", ka, kb, exc_info=True)
                reason = internal_error("coupling", f"{ka[0]}[{ka[1]}] -> {kb[0]}[{kb[1]}]", exc)
                for key in (ka, kb):
                    an.blocks.setdefault(key, []).append(reason)
                continue
            rows.append(src + bases[ia])
            cols.append(dst + bases[ib])
        if rows:
            r = np.concatenate(rows)
            c = np.concatenate(cols)
        else:
            r = c = np.zeros(0, dtype=np.int64)
        adj = coo_matrix((np.ones(r.size, dtype=np.int8), (r, c)), shape=(total, total)).tocsr()
        n_labels, labels = connected_components(adj, directed=False)
        self._labels = labels.astype(np.int64)
        self._n_labels = int(n_labels)
        slot_of_pos = np.repeat(np.arange(len(keys), dtype=np.int64), sizes)

        # Candidate units: those touching a produce/consume weight slot.
        is_weight_slot = np.array(
            [self._is_weight(k) and bool(an.roles.get(k, set()) & _WEIGHT_ROLES) for k in keys], dtype=bool
        )
        cand = np.zeros(n_labels, dtype=bool)
        if is_weight_slot.any():
            cand[self._labels[is_weight_slot[slot_of_pos]]] = True
        sel = cand[self._labels]
        pair = np.unique(self._labels[sel] * len(keys) + slot_of_pos[sel], return_counts=True)
        pair_keys, pair_counts = pair
        lab = pair_keys // max(len(keys), 1)
        sl = pair_keys % max(len(keys), 1)
        rng = np.random.default_rng(0x5EED)
        salt = rng.integers(1, 2**63 - 1, size=len(keys), dtype=np.int64).astype(np.uint64)
        mix = salt[sl] * (np.uint64(2) * pair_counts.astype(np.uint64) + np.uint64(1))
        hashes = np.zeros(n_labels, dtype=np.uint64)
        np.add.at(hashes, lab, mix)
        cand_labels = np.nonzero(cand)[0]
        uniq, inverse = np.unique(hashes[cand_labels], return_inverse=True)
        # Pair segments per label (pairs are sorted by label).
        starts = np.searchsorted(lab, cand_labels, side="left")
        ends = np.searchsorted(lab, cand_labels, side="right")

        slot_order = {k: i for i, k in enumerate(keys)}
        raw_groups = []
        by_group = np.argsort(inverse, kind="stable")
        split_at = np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1]
        for idx in np.split(by_group, split_at) if len(uniq) else ():
            members = cand_labels[idx]
            first = int(idx[0])
            slots = sl[starts[first] : ends[first]]
            counts = pair_counts[starts[first] : ends[first]]
            raw_groups.append((members, slots, counts))
        raw_groups.sort(key=lambda g: min(slot_order[keys[s]] for s in g[1]))

        group_of_label = np.full(n_labels, -1, dtype=np.int64)
        rank_of_label = np.full(n_labels, -1, dtype=np.int64)
        self._units: dict[int, np.ndarray] = {}
        self._tables: dict[int, dict[SlotKey, np.ndarray]] = {}
        self._group_slots: dict[int, tuple[int, ...]] = {}
        groups: list[Group] = []
        for gid, (members, slots, counts) in enumerate(raw_groups):
            group_of_label[members] = gid
            root_s = self._pick_root(slots, counts)
            base, size = int(bases[root_s]), int(sizes[root_s])
            seg = self._labels[base : base + size]
            pos = np.nonzero(group_of_label[seg] == gid)[0]
            # order units by their first position on the root slot
            first_pos: dict[int, int] = {}
            for p, l in zip(pos.tolist(), seg[pos].tolist()):
                first_pos.setdefault(l, p)
            ordered = np.array(sorted(first_pos, key=first_pos.__getitem__), dtype=np.int64)
            rank_of_label[ordered] = np.arange(ordered.size)
            self._units[gid] = ordered
            n = ordered.size
            tables: dict[SlotKey, np.ndarray] = {}
            member_list: list[Member] = []
            reasons: list[str] = []
            node_ids: set[int] = set()
            for s in sorted(slots.tolist(), key=lambda s: slot_order[keys[s]]):
                key = keys[s]
                b, z = int(bases[s]), int(sizes[s])
                seg = self._labels[b : b + z]
                hits = np.nonzero(group_of_label[seg] == gid)[0]
                r = rank_of_label[seg[hits]]
                order = np.lexsort((hits, r))
                weight = self._is_weight(key)
                slot = Slot(key[0], key[1], z)
                try:
                    table = hits[order].reshape(n, -1)
                    index_map = simplify(table)
                except Exception as exc:  # noqa: BLE001 - one malformed group is skipped, the others go on
                    logger.debug("group %d: slot %s", gid, key, exc_info=True)
                    reasons.append(internal_error("group analysis at", f"'{key[0]}' axis {key[1]}", exc))
                    continue
                tables[key] = table
                member_list.append(Member(slot, index_map, frozenset(an.roles.get(key, ())), weight))
                for reason in an.blocks.get(key, ()):
                    if reason not in reasons:
                        reasons.append(reason)
                node_ids.update(an.slot_nodes.get(key, ()))
            if n < 2 and not reasons:
                reasons.append("only one removable unit: every channel is tied to the others")
            root_key = keys[root_s]
            self._tables[gid] = tables
            self._group_slots[gid] = tuple(int(s) for s in slots)
            groups.append(
                Group(
                    id=gid,
                    size=n,
                    root=Slot(root_key[0], root_key[1], int(sizes[root_s])),
                    members=tuple(member_list),
                    # QuantizeLinear/DequantizeLinear last: a QDQ group is named by its Conv/Gemm/MatMul
                    nodes=tuple(self._node_names[i] for i in sorted(node_ids, key=lambda i: (i in self._qdq, i))),
                    prunable=not reasons,
                    reasons=tuple(reasons),
                )
            )
        self.groups = self._classified(groups)
        self.stats.update(
            slots=len(keys),
            positions=total,
            couplings=len(an.couplings),
            units=self._n_labels,
            groups=len(groups),
            prunable_groups=sum(g.prunable for g in groups),
        )

    def _classified(self, groups: list[Group]) -> tuple[Group, ...]:
        from .kinds import HEAD_KINDS, classify, node_ops

        heads = self._an.heads
        ops = node_ops(self.model)
        out = []
        for g in groups:
            rows = {key: int(t.shape[1]) for key, t in self._tables[g.id].items()}
            g = replace(g, kind=classify(g, heads, ops, rows, self._an.io_reasons))
            io = [r for r in g.reasons if r in self._an.io_reasons]
            if io and g.kind in HEAD_KINDS:
                if self.allow_signature_change:
                    rest = tuple(r for r in g.reasons if r not in self._an.io_reasons)
                    g = replace(g, reasons=rest, prunable=not rest)
                else:
                    hint = (f"{io[0]} (a KV cache: pass allow_signature_change=True / --allow-signature-change "
                            "to prune these heads and change its shape)")
                    g = replace(g, reasons=tuple(hint if r == io[0] else r for r in g.reasons))
            out.append(g)
        return tuple(out)

    def _is_weight(self, key: SlotKey) -> bool:
        value = self._values.get(key[0])
        if value is None:
            return False
        return (value.is_initializer() and value.const_value is not None) or is_weight(value)

    def _pick_root(self, slots: np.ndarray, counts: np.ndarray) -> int:
        """The member that indexes the group: a producer's weight axis if possible.

        Preference: produce-weight slots, then activations, then other weights,
        virtual slots last; among those, the fewest positions per unit.
        """
        keys = self._slot_keys
        an = self._an
        best = None
        for s, c in zip(slots.tolist(), counts.tolist()):
            key = keys[s]
            if key[0].startswith("#"):
                kind = 3
            elif Role.PRODUCE in an.roles.get(key, ()):
                kind = 0
            elif not self._is_weight(key):
                kind = 1
            else:
                kind = 2
            rank = (kind, c)
            if best is None or rank < best[0]:
                best = (rank, s)
        if best is None:  # pragma: no cover - a group has at least one slot
            raise AssertionError("group without slots")
        return best[1]


def internal_error(kind: str, name: str, exc: BaseException) -> str:
    """The reason a group is skipped when code of ours raised on it (the run goes on)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"internal error in {kind} {name}: {type(exc).__name__}" + (f": {text}" if text else "")


_CHUNK = 1 << 20  # elements per block: bounds temporaries on huge weights, stays in cache


def _reduce_each_axis(arr: np.ndarray, kind: str, axes: Iterable[int] | None = None) -> dict[int, np.ndarray]:
    """Per axis ``k`` in ``axes`` (default: all): the sum of ``|w|`` (``"abs"``) or ``w**2`` (``"sq"``)
    over every other axis, as float64.

    One pass in blocks along axis 0 (bounded temporaries, each block reduced while in cache), so
    scoring a 100M-weight layer by rows and by columns reads it once, not twice.
    """
    if kind not in ("abs", "sq"):
        raise ValueError(f"unknown reduction {kind!r} (use 'abs' or 'sq')")
    arr = np.ascontiguousarray(arr)
    axes = sorted(k for k in set(range(arr.ndim) if axes is None else axes) if k < arr.ndim)
    if arr.ndim == 0:
        return {}
    shape = arr.shape
    totals = {k: np.zeros(shape[k], dtype=np.float64) for k in axes}
    row = max(int(np.prod(shape[1:], dtype=np.int64)), 1)
    step = max(1, _CHUNK // row)
    for start in range(0, shape[0], step):
        block = arr[start : start + step]
        mag = np.square(block) if kind == "sq" else np.abs(block)  # block sums in the weight's float type,
        b = block.shape[0]  # totals in float64
        for k in axes:
            if k == 0:
                totals[0][start : start + b] += mag.reshape(b, -1).sum(axis=1)
            else:
                inner = int(np.prod(shape[k + 1 :], dtype=np.int64))
                view = mag.reshape(-1, shape[k], inner)
                totals[k] += (view.sum(axis=2) if inner > 1 else view[:, :, 0]).sum(axis=0)
    return totals


def _reduce_except(arr: np.ndarray, axis: int, kind: str) -> np.ndarray:
    """Sum of ``|w|`` (``"abs"``) or ``w**2`` (``"sq"``) over every axis but ``axis`` (float64)."""
    return _reduce_each_axis(arr, kind, {axis})[axis]


def _value_map(graph: ir.Graph) -> dict[str, ir.Value]:
    values: dict[str, ir.Value] = {}
    for v in graph.inputs:
        values[v.name or ""] = v
    for name, v in graph.initializers.items():
        values[name] = v
    for node in graph:
        for v in node.outputs:
            if v.name:
                values[v.name] = v
    return values


def _all_values(graph: ir.Graph) -> list[ir.Value]:
    """Inputs, initializers and node outputs of ``graph`` (main graph only)."""
    values: list[ir.Value] = [*graph.inputs, *graph.initializers.values()]
    for node in graph:
        values.extend(v for v in node.outputs if v is not None)
    return values


def _ensure_names(model: ir.Model) -> None:
    """Every value and node needs a unique name (slots and reports refer to them)."""
    seen_nodes: set[str] = set()
    seen_values: set[str] = set()
    need = False
    for node in model.graph:
        if not node.name or node.name in seen_nodes:
            need = True
            break
        seen_nodes.add(node.name)
        for v in node.outputs:
            if not v.name or v.name in seen_values:
                need = True
                break
            seen_values.add(v.name)
    if need:
        ir.passes.common.NameFixPass()(model)


def _subgraph_captures(graph: ir.Graph) -> dict[str, tuple[ir.Value, str]]:
    """Main-graph values used inside a subgraph, with the node that owns the subgraph."""
    out: dict[str, tuple[ir.Value, str]] = {}
    for node in graph:
        subgraphs: list[ir.Graph] = []
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                subgraphs.append(attr.value)
            elif attr.type == ir.AttributeType.GRAPHS:
                subgraphs.extend(attr.value)
        for sub in subgraphs:
            for inner in ir.traversal.RecursiveGraphIterator(sub):
                for v in inner.inputs:
                    if v is not None and v.graph is graph:
                        out.setdefault(v.name or "", (v, f"{node.op_type} '{node.name}'"))
    return out


def _expand_patterns(patterns: Iterable[str], names: Sequence[str],
                     weights: Mapping[str, Sequence[str]] | None = None) -> tuple[str, ...]:
    """Node names matching ``patterns``: exact names or fnmatch patterns (``*?[``) of a node's name or of
    one of its weights' names (``weights``: node name -> initializer inputs), so ``layers.1*`` reaches
    the nodes of a layer even when the exporter named its nodes generically (dynamo's ``node_MatMul_3``)."""
    out: list[str] = []
    missing: list[str] = []
    known = set(names)
    weights = weights or {}
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)
                    or any(fnmatch.fnmatchcase(w, pattern) for w in weights.get(n, ()))]
        else:
            hits = [pattern] if pattern in known else [n for n in names if pattern in weights.get(n, ())]
        if not hits:
            missing.append(pattern)
        out.extend(h for h in hits if h not in out)
    if missing:
        raise UsageError(f"--exclude names unknown node(s): {', '.join(missing)}")
    return tuple(out)


def build_groups(
    model: ir.Model,
    *,
    registry: RuleRegistry | None = None,
    exclude: Iterable[str] = (),
    block: Mapping[SlotKey, str] | None = None,
    allow_signature_change: bool = False,
) -> DependencyGraph:
    """Analyse a normalised model (see :func:`onnxsparse.normalize`) into channel groups.

    ``allow_signature_change``: head / KV groups may change graph inputs and outputs (a decoder's
    KV cache); every other group stays blocked by them.

    ``exclude`` names nodes (or fnmatch patterns) whose outputs must keep every
    channel; ``block`` maps slots ``(value name, axis)`` to a reason they must
    not change (e.g. weights another pass already pruned).

    The model is annotated in place, never changed in meaning: unnamed
    values/nodes get names, shapes that inference left out on same-shape ops
    are filled in, and shared vector constants get a copy per node
    (:meth:`DependencyGraph.restore_sharing`, called by ``apply_plan``, merges
    unchanged copies back).
    """
    from .rules import default_registry

    start = time.perf_counter()
    registry = registry or default_registry()
    _ensure_names(model)
    fixed = _shapes.unknown_negative_dims(_all_values(model.graph), named=model.graph.inputs)
    if fixed:
        logger.info("%d value(s) declared a negative dim (-1 for a dynamic axis): read as unknown", fixed)
    if fixed or _shapes.missing_shapes(model.graph):
        try:
            filled = _shapes.infer_missing(model)
            logger.info("shape inference (non-strict) filled in %d value shape(s)", filled)
        except Exception:  # noqa: BLE001 - best effort: rules block what stays unknown, with the reason
            logger.debug("non-strict shape inference failed", exc_info=True)
    shared_copies = unshare_small_constants(model)
    graph = model.graph
    opsets = dict(model.opset_imports)
    nodes = list(graph)
    names = [n.name or "" for n in nodes]
    exclude = tuple(exclude)
    if exclude:
        weights = {n.name or "": [v.name for v in n.inputs if v is not None and v.name and v.is_initializer()]
                   for n in nodes}
        exclude = _expand_patterns(exclude, names, weights)

    an = _Analysis()
    inferred = 0
    for order, node in enumerate(nodes):
        version = node.version or _shapes.opset_version(opsets, node.domain)
        try:  # shapes a rule proved upstream (run-time Reshape targets) carry on to this node's outputs
            inferred += _shapes.infer_node(node, version)
        except Exception:  # noqa: BLE001 - best effort, like whole-model inference
            logger.debug("inference of %s '%s' failed", node.op_type, node.name, exc_info=True)
        reasons: list[str] = []
        for rule in registry.lookup(node.domain, node.op_type, version):
            ctx = CoupleContext(an, node, version)
            try:
                reason = rule.couple(node, ctx)
            except Decline as exc:  # the same as returning the reason: the next candidate rule is tried
                reason = str(exc)
            except Exception as exc:  # noqa: BLE001 - a failing rule blocks, it never crashes pruning
                logger.debug("rule %r failed on %s", rule, node.name, exc_info=True)
                reason = f"{node.op_type} '{node.name}': {internal_error('rule', type(rule).__name__, exc)}"
            if reason is None:
                an.commit(ctx, rule, order)
                break
            reasons.append(reason)
        else:
            domain = node.domain or "ai.onnx"
            reason = "; ".join(reasons) or f"no rule for {domain}::{node.op_type} (opset {version})"
            ctx = CoupleContext(an, node, version)
            if not reasons:
                reason = f"{node.op_type} '{node.name}': {reason}"
            for v in (*node.inputs, *node.outputs):
                if v is not None:
                    for axis in range(ctx.rank(v) or 0):
                        key = (v.name or "", axis)
                        ctx.handled_axes.add(key)
                        size = an.size_of(v, axis)
                        if size:
                            ctx.sizes[key] = size
                            ctx.blocks.append((key, reason))
            an.commit(ctx, None, order)

    for v in graph.inputs:
        an.io_reasons.add(f"'{v.name}' is a graph input")
        an.block_value(v, f"'{v.name}' is a graph input")
    for v in graph.outputs:
        an.io_reasons.add(f"'{v.name}' is a graph output")
        an.block_value(v, f"'{v.name}' is a graph output")
    for name, (v, owner) in _subgraph_captures(graph).items():
        an.block_value(v, f"'{name}' is used inside a subgraph of {owner}")
    by_name = dict(zip(names, nodes))
    for name in exclude:
        for v in by_name[name].outputs:
            an.block_value(v, f"node '{name}' is excluded")
    values = _value_map(graph)
    for (value_name, axis), reason in (block or {}).items():
        v = values.get(value_name)
        if v is not None:
            an.block((value_name, axis), an.size_of(v, axis), reason)

    if inferred:
        logger.info("per-node shape inference filled in %d output shape(s)", inferred)
    stats = {"rules_s": time.perf_counter() - start}
    dg = DependencyGraph(model, an, names, stats, allow_signature_change=allow_signature_change)
    dg.shared_copies = shared_copies
    dg.shared_names = frozenset(shared_copies) | frozenset(shared_copies.values())
    dg.stats["total_s"] = time.perf_counter() - start
    return dg
