"""Matchers for attention and FFN blocks, registered by name.

A matcher is a function ``match(graph) -> list[Block | SkippedBlock]`` that
finds every block of its form in the graph.  ``DEFAULT_ATTENTION_MATCHERS`` and
``DEFAULT_FFN_MATCHERS`` are the explicit lists the pruning pass runs, in order.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir

from .blocks import Block, SkippedBlock

__all__ = ["MATCHERS", "register_matcher", "DEFAULT_ATTENTION_MATCHERS", "DEFAULT_FFN_MATCHERS", "find_blocks"]

Matcher = Callable[[ir.Graph], list[Block | SkippedBlock]]
MATCHERS: dict[str, Matcher] = {}


def register_matcher(name: str) -> Callable[[Matcher], Matcher]:
    def deco(fn: Matcher) -> Matcher:
        MATCHERS[name] = fn
        return fn

    return deco


#: Attention forms, tried in this order (a node claimed by one is not matched again).
DEFAULT_ATTENTION_MATCHERS: tuple[str, ...] = ("ms_attention", "ms_multihead", "ms_gqa", "onnx_attention", "decomposed")
DEFAULT_FFN_MATCHERS: tuple[str, ...] = ("ffn",)


def _load() -> None:
    # Import for the registration side effect; explicit so the list cannot drift.
    from . import decomposed, ffn, fused_ms, onnx_attention  # noqa: F401


def find_blocks(graph: ir.Graph, kind: str) -> list[Block | SkippedBlock]:
    """Every attention (``kind="attention"``) or FFN (``kind="ffn"``) block in ``graph``."""
    _load()
    names = DEFAULT_ATTENTION_MATCHERS if kind == "attention" else DEFAULT_FFN_MATCHERS
    found: list[Block | SkippedBlock] = []
    for name in names:
        found.extend(MATCHERS[name](graph))
    return found
