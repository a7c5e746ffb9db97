"""Does onnxruntime still fuse what it fused?  Compare the optimised graphs of two models.

onnxruntime's optimiser recognises patterns (LayerNorm, SkipLayerNorm, GELU,
attention, Conv+activation, MatMul+Add) and replaces them by fused kernels.  A
rewrite that changes those patterns, even one that computes the same thing,
can make a model slower.  We let onnxruntime write the graph it will run
(``SessionOptions.optimized_model_filepath``) for both models and count the op
types it created: those in its optimised graph that the model itself does not
contain.  Layout-only ops of the blocked CPU kernels (NCHWc reorders) are not
fusions and are left out.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from .._workdir import owned_temp_dir

__all__ = ["FusionComparison", "optimized_ops", "compare_fusions"]

_NCHWC = "com.microsoft.nchwc."

#: Ops onnxruntime inserts for memory layout, not as fusions.
_LAYOUT_OPS = frozenset({"ReorderInput", "ReorderOutput", "Transpose", "MemcpyToHost", "MemcpyFromHost"})


def _kind(node: onnx.NodeProto) -> str:
    """``Conv`` and the blocked ``com.microsoft.nchwc.Conv`` are different kernels."""
    return node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"


def optimized_ops(path: str | os.PathLike, provider: str = "CPUExecutionProvider") -> tuple[Counter, set[str]]:
    """(op counts of the graph onnxruntime runs for ``path``, the op types its optimiser created)."""
    import onnxruntime as ort

    path = Path(path)
    original = onnx.load(str(path), load_external_data=False)
    own = {_kind(node) for node in original.graph.node}
    with owned_temp_dir(kind="fusions") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.bin")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(path), options, providers=[provider])
        optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
    counts = Counter(_kind(n) for n in optimized.graph.node if n.op_type not in _LAYOUT_OPS)
    return counts, {op for op in counts if op not in own}


@dataclass
class FusionComparison:
    """Counts of the ops onnxruntime fused the reference into, in both optimised graphs.

    ``lost``: fused kinds the candidate ends up with fewer of (structured
    pruning never removes a LayerNorm, a residual or an activation, so any
    drop means the rewrite broke a pattern).
    """

    reference: dict[str, int]
    candidate: dict[str, int]
    lost: dict[str, tuple[int, int]] = field(default_factory=dict)

    def note(self) -> str | None:
        if not self.lost:
            return None
        blocked = {op: pair for op, pair in self.lost.items() if op.startswith(_NCHWC)}
        fused = {op: pair for op, pair in self.lost.items() if op not in blocked}
        notes = []
        if fused:
            parts = ", ".join(f"{op} {ref} -> {cand}" for op, (ref, cand) in sorted(fused.items()))
            notes.append(f"onnxruntime fuses less in the candidate ({parts}): the rewrite changed a pattern it matches")
        if blocked:
            parts = ", ".join(f"{op.removeprefix(_NCHWC)} {ref} -> {cand}" for op, (ref, cand) in sorted(blocked.items()))
            notes.append(f"fewer nodes run onnxruntime's blocked NCHWc CPU kernels in the candidate ({parts}): "
                         "channel counts that are not multiples of the SIMD width fall back to slower kernels "
                         "(prune with --round-to 8 or 16)")
        return "; ".join(notes)

    def as_dict(self) -> dict:
        return {"reference": dict(self.reference), "candidate": dict(self.candidate),
                "lost": {op: list(pair) for op, pair in self.lost.items()}}


def compare_fusions(reference: str | os.PathLike, candidate: str | os.PathLike,
                    provider: str = "CPUExecutionProvider") -> FusionComparison:
    """The fused ops of ``reference`` and how many of each the candidate's optimised graph holds."""
    ref, created = optimized_ops(reference, provider)
    cand, cand_created = optimized_ops(candidate, provider)
    kinds = sorted(created | cand_created)
    lost = {op: (ref[op], cand.get(op, 0)) for op in sorted(created) if cand.get(op, 0) < ref[op]}
    return FusionComparison({op: ref.get(op, 0) for op in kinds}, {op: cand.get(op, 0) for op in kinds}, lost)
