"""Exact rewrites that put exported attention into the form the dependency graph reads.

Exporters lower attention in ways that hide the head axis from a per-op rule:
dynamo folds the heads into the batch for ``K^T``, Hugging Face packs Q/K/V into
one projection, tf2onnx writes Einsums.  Each rewrite here replaces such a
pattern with an equivalent graph (same outputs, bit for bit where the ops allow)
whose heads are an axis the rules couple.  They run before the dependency
analysis (``prune`` calls :func:`rewrite_attention`), so heads, KV groups and
channels are all found by the one engine in :mod:`onnxsparse.graph`.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

__all__ = ["rewrite_attention"]

logger = logging.getLogger(__name__)


def rewrite_attention(model: ir.Model) -> list[str]:
    """Apply every attention rewrite to every graph of ``model``; the names of the rewritten nodes."""
    from ..transformer.sdpa_lowering import unlower_sdpa_transposes

    done: list[str] = []
    for graph in model.graphs():
        rewritten = unlower_sdpa_transposes(graph)
        if rewritten:
            logger.info("rewrote %d batch-folded K^T as Transpose", len(rewritten))
        done.extend(str(r) for r in rewritten)
    return done
