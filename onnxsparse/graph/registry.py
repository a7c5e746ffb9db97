"""Op rules and the registry that finds the rule for a node.

A rule knows one op family.  During analysis, :meth:`OpRule.couple` tells the
:class:`~onnxsparse.graph.context.CoupleContext` which slots of the node's
inputs and outputs move together (and with which index map), which weights
play which role, and where the node contracts over a channel.  It returns
``None`` when it handled the node, or a *reason* string to decline (raising
:class:`~onnxsparse.errors.Decline` does the same; the next candidate rule is
then tried; if none accepts, the node blocks every slot it touches with that
reason).  Any axis of an input or output the rule leaves
unmapped is blocked automatically, so a rule can never silently let a channel
through an op it does not understand.

After pruning, :meth:`OpRule.rewrite` fixes what slicing initializers does not:
attributes (``group``, ``num_groups``) and shape-like constant inputs
(Reshape targets, Split sizes, Slice starts/ends, Resize sizes).

Rules are looked up by ``(domain, op_type)`` and opset version.  Candidates are
tried by descending ``priority``, then most recently added first, so an
extension registered after the defaults overrides them for the nodes it
accepts and declines the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import onnx_ir as ir

    from .context import CoupleContext, RewriteContext

__all__ = ["OpRule", "RuleRegistry", "normalize_domain"]


def normalize_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


class OpRule:
    """Base class of op rules; subclasses set the class attributes below.

    Rules are stateless: the same instance serves every node and every model.
    """

    #: op types this rule handles
    op_types: ClassVar[tuple[str, ...]] = ()
    domain: ClassVar[str] = ""
    #: opset range (inclusive); ``until=None`` means "and newer"
    since: ClassVar[int] = 1
    until: ClassVar[int | None] = None
    priority: ClassVar[int] = 0

    def couple(self, node: ir.Node, ctx: CoupleContext) -> str | None:
        """Declare couplings for ``node``; raise :class:`~onnxsparse.errors.Decline` with the reason when
        the rule cannot take it (every built-in rule does; a returned reason string, as plug-in rules
        written for earlier versions do, is read the same way)."""
        raise NotImplementedError

    def rewrite(self, node: ir.Node, ctx: RewriteContext) -> None:
        """Fix attributes / shape constants after some positions were removed."""
        return None

    def accepts_version(self, version: int) -> bool:
        return self.since <= version and (self.until is None or version <= self.until)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self.op_types)})"


class RuleRegistry:
    """Rules keyed by ``(domain, op_type)``; see the module docstring for precedence."""

    def __init__(self, rules: Iterable[OpRule] = ()) -> None:
        self._rules: dict[tuple[str, str], list[tuple[int, int, OpRule]]] = {}
        self._count = 0
        for rule in rules:
            self.add(rule)

    def add(self, rule: OpRule) -> OpRule:
        if not rule.op_types:
            raise ValueError(f"{rule!r} declares no op_types")
        self._count += 1
        for op_type in rule.op_types:
            entries = self._rules.setdefault((normalize_domain(rule.domain), op_type), [])
            entries.append((rule.priority, self._count, rule))
            entries.sort(key=lambda e: (-e[0], -e[1]))
        return rule

    def extend(self, rules: Iterable[OpRule]) -> RuleRegistry:
        for rule in rules:
            self.add(rule)
        return self

    def lookup(self, domain: str, op_type: str, version: int) -> tuple[OpRule, ...]:
        """Candidate rules for a node, best first."""
        entries = self._rules.get((normalize_domain(domain), op_type), ())
        return tuple(rule for _, _, rule in entries if rule.accepts_version(version))

    def op_types(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(self._rules))

    def copy(self) -> RuleRegistry:
        new = RuleRegistry()
        new._rules = {k: list(v) for k, v in self._rules.items()}
        new._count = self._count
        return new
