"""Transformer structure: find attention blocks and FFNs, and remove heads / neurons.

``find_blocks(graph, "attention" | "ffn")`` returns :class:`Block` objects
(prunable, with the proof of how) and :class:`SkippedBlock` objects (with the
reason).  :mod:`onnxsparse.passes.prune_heads` drives them.
"""

from .blocks import Block, SkippedBlock, units_to_remove
from .registry import DEFAULT_ATTENTION_MATCHERS, DEFAULT_FFN_MATCHERS, MATCHERS, find_blocks, register_matcher
from ._criteria import criterion_names

__all__ = [
    "Block",
    "SkippedBlock",
    "find_blocks",
    "register_matcher",
    "MATCHERS",
    "DEFAULT_ATTENTION_MATCHERS",
    "DEFAULT_FFN_MATCHERS",
    "criterion_names",
    "units_to_remove",
]
