"""Channel dependency analysis over an ONNX graph: slots, index maps, groups, rules.

``build_groups(model)`` returns a :class:`DependencyGraph` whose groups say which
positions of which tensors must be removed together; a :class:`PrunePlan`
names root indices to remove; :func:`apply_plan` rewrites the model and
:func:`masked_copy` builds the exact equivalence oracle.  See ``docs/prune.md``.
"""

from .weights import is_weight, weight_array
from .context import CoupleContext, RewriteContext, Virtual
from .dependency import DependencyGraph, Group, Member, WeightSlice, build_groups
from .index_maps import Block, Composed, Identity, IndexMap, Offset, Stride, Table, simplify
from .masking import masked_copy
from .plan import PrunePlan
from .registry import OpRule, RuleRegistry
from .rewrite import apply_plan
from .rules import DEFAULT_RULES, default_registry
from .slots import Contraction, Role, Slot, SlotKey

__all__ = [
    "build_groups",
    "DependencyGraph",
    "Group",
    "Member",
    "WeightSlice",
    "Slot",
    "SlotKey",
    "Role",
    "Contraction",
    "IndexMap",
    "Identity",
    "Offset",
    "Block",
    "Stride",
    "Table",
    "Composed",
    "simplify",
    "OpRule",
    "RuleRegistry",
    "DEFAULT_RULES",
    "default_registry",
    "CoupleContext",
    "RewriteContext",
    "Virtual",
    "PrunePlan",
    "apply_plan",
    "masked_copy",
    "is_weight",
    "weight_array",
]
