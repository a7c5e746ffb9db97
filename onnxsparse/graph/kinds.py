"""What a group removes: channels, attention heads, KV groups or FFN neurons.

The kind is read off the group's slots, never off node names:

* ``head``: a member slot is an axis a rule declared as attention heads
  (:meth:`CoupleContext.head_axis`: the batch axes of ``Q @ K^T`` and ``P @ V``,
  the heads of a fused attention op), so one unit is one head;
* ``kv_group``: a head group whose units hold more positions on some projection
  than on others (grouped-query attention: one KV head and the query heads
  reading it);
* ``neuron``: a group no convolution and no normalisation touches, other than
  the model's own input features or outputs (weights on one side only, bound
  to a graph input/output): the hidden width between linear layers (a transformer's FFN, an MLP, a CNN's dense
  head; a transformer's residual stream passes through LayerNorm/RMSNorm and
  stays a ``channel`` group);
* ``channel``: everything else (conv filters and what they feed).

``prune`` takes one ratio per kind (``--channels``, ``--heads`` for heads and KV
groups, ``--ffn`` for neurons).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .slots import Role

if TYPE_CHECKING:
    import onnx_ir as ir

    from .dependency import Group
    from .slots import SlotKey

__all__ = ["KINDS", "HEAD_KINDS", "classify", "queries_per_unit"]

KINDS: tuple[str, ...] = ("channel", "head", "kv_group", "neuron")
HEAD_KINDS = frozenset({"head", "kv_group"})

_CONV = frozenset({"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "NhwcConv", "FusedConv"})
_NORM = frozenset({"LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
                   "SkipSimplifiedLayerNormalization", "RMSNormalization", "ReduceMean", "GroupNormalization",
                   "InstanceNormalization", "BatchNormalization"})


def queries_per_unit(group: Group, heads: Mapping[SlotKey, int], row_lengths: Mapping[SlotKey, int]) -> int:
    """Query heads one unit of a head group holds: what a rule declared for its head axis (a fused
    grouped-query op), else the ratio of positions per unit between the query projection and the
    key/value projections (decomposed ``repeat_kv``); 1 for plain multi-head attention."""
    declared = max((heads.get(m.slot.key, 1) for m in group.members), default=1)
    if declared > 1:
        return declared
    produced = [row_lengths[m.slot.key] for m in group.members
                if m.weight and Role.PRODUCE in m.roles and m.slot.key in row_lengths]
    return max(produced) // min(produced) if produced and min(produced) > 0 else 1


def classify(group: Group, heads: Mapping[SlotKey, int], node_ops: dict[str, str], row_lengths: dict[SlotKey, int],
             io_reasons: set[str]) -> str:
    """The kind of ``group`` (see the module docstring).

    ``heads``: slots rules declared as heads (-> query heads per position); ``node_ops``: node
    name -> op type; ``row_lengths``: positions per unit of each member slot; ``io_reasons``: the
    reasons that only say "graph input/output".
    """
    if any(m.slot.key in heads for m in group.members):
        return "kv_group" if queries_per_unit(group, heads, row_lengths) > 1 else "head"
    roles = {r for m in group.members if m.weight for r in m.roles}
    one_sided = not (Role.PRODUCE in roles and Role.CONSUME in roles)
    model_end = one_sided and any(r in io_reasons for r in group.reasons)
    if not model_end and not any(node_ops.get(n) in _CONV or node_ops.get(n) in _NORM for n in group.nodes):
        return "neuron"
    return "channel"


def node_ops(model: ir.Model) -> dict[str, str]:
    return {n.name or "": n.op_type for n in model.graph}
