"""Models as validation sees them, and the check that two models can be compared.

A candidate must take exactly the reference's inputs (names, element types,
ranks, fixed sizes), or feeding both the same data means nothing; and every
reference output needs a candidate output of the same name (or one mapped to
it with ``--output-map REF=CAND``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx

from .._workdir import make_owned_temp_dir
from ..calibration.data import InputSpec, model_input_specs, onnx_to_numpy_dtype
from ..errors import OnnxSparseError, UsageError
from ..io import load_proto, max_runtime_ir_version, model_file_bytes

__all__ = ["ModelMismatchError", "PreparedModel", "prepare_model", "check_inputs", "match_outputs",
           "parse_output_map"]


class ModelMismatchError(OnnxSparseError):
    """The candidate's inputs or outputs do not line up with the reference's."""


@dataclass
class PreparedModel:
    """A model ready for onnxruntime: a file path (in-memory models are written to a temp file)."""

    label: str
    path: Path
    display: str
    proto: onnx.ModelProto  # without external data: for signatures and stats
    file_bytes: int
    size_note: str | None
    inputs: list[InputSpec]
    outputs: list[tuple[str, str, int | None]]  # name, numpy dtype, rank (None = unknown)

    @property
    def output_names(self) -> list[str]:
        return [name for name, _, _ in self.outputs]


def _outputs(proto: onnx.ModelProto) -> list[tuple[str, str, int | None]]:
    outs = []
    for value in proto.graph.output:
        ttype = value.type.tensor_type
        if value.type.HasField("tensor_type") and ttype.elem_type:
            dtype = str(onnx_to_numpy_dtype(ttype.elem_type))
            rank = len(ttype.shape.dim) if ttype.HasField("shape") else None
        else:
            dtype, rank = "non-tensor", None
        outs.append((value.name, dtype, rank))
    return outs


def prepare_model(source, label: str, workdir: str | os.PathLike | None = None) -> PreparedModel:
    """Accept a path, bytes, ``ModelProto`` or ``onnx_ir`` model.

    Paths are vetted with :func:`onnxsparse.io.load_proto` and measured with
    :func:`model_file_bytes`; other forms are serialised into ``workdir``
    (their size is the serialised size).
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        proto = load_proto(path)
        return PreparedModel(
            label, path, str(path), proto, model_file_bytes(path), None, model_input_specs(proto), _outputs(proto)
        )
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        proto = load_proto(data)
    else:
        if not isinstance(source, onnx.ModelProto):
            import onnx_ir as ir

            if not isinstance(source, ir.Model):
                raise UsageError(f"{label}: expected a path, bytes, ModelProto or onnx_ir.Model, "
                                 f"got {type(source).__name__}")
            source = ir.to_proto(source)
        proto = onnx.ModelProto()
        proto.CopyFrom(source)
        proto.ir_version = min(proto.ir_version, max_runtime_ir_version())
        data = proto.SerializeToString()
    if workdir is None:
        workdir = str(make_owned_temp_dir(kind="validate"))
    path = Path(workdir) / f"{label}.onnx"
    path.write_bytes(data)
    return PreparedModel(
        label, path, f"<in-memory {label}>", proto, len(data), "serialised size (model given in memory)",
        model_input_specs(proto), _outputs(proto),
    )


def _fmt_shape(spec: InputSpec) -> str:
    return "[" + ",".join(str(d) if d not in (None, "") else "?" for d in spec.shape) + "]"


def check_inputs(reference: PreparedModel, candidate: PreparedModel) -> None:
    """Raise :class:`ModelMismatchError` naming every input that differs."""
    ref = {spec.name: spec for spec in reference.inputs}
    cand = {spec.name: spec for spec in candidate.inputs}
    problems: list[str] = []
    missing = [name for name in ref if name not in cand]
    extra = [name for name in cand if name not in ref]
    if missing:
        problems.append(f"candidate lacks input(s) {missing}")
    if extra:
        problems.append(f"candidate has extra input(s) {extra}")
    for name, r in ref.items():
        c = cand.get(name)
        if c is None:
            continue
        if r.dtype != c.dtype:
            problems.append(f"input {name!r} is {r.dtype} in the reference but {c.dtype} in the candidate")
        if len(r.shape) != len(c.shape):
            problems.append(
                f"input {name!r} has rank {len(r.shape)} {_fmt_shape(r)} in the reference "
                f"but rank {len(c.shape)} {_fmt_shape(c)} in the candidate"
            )
            continue
        for axis, (a, b) in enumerate(zip(r.shape, c.shape)):
            if isinstance(a, int) and isinstance(b, int) and a > 0 and b > 0 and a != b:
                problems.append(
                    f"input {name!r} axis {axis} is {a} in the reference but {b} in the candidate "
                    f"({_fmt_shape(r)} vs {_fmt_shape(c)})"
                )
                break
    if problems:
        raise ModelMismatchError(
            f"reference {reference.display} and candidate {candidate.display} take different inputs: "
            + "; ".join(problems)
        )


def parse_output_map(items) -> dict[str, str]:
    """``["ref=cand", "a=b,c=d"]`` or a mapping -> {reference name: candidate name}."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return {str(k): str(v) for k, v in items.items()}
    mapping: dict[str, str] = {}
    for item in items:
        for pair in str(item).split(","):
            if not pair.strip():
                continue
            ref, sep, cand = pair.partition("=")
            if not sep or not ref.strip() or not cand.strip():
                raise UsageError(f"bad --output-map {pair!r}: expected REFERENCE_OUTPUT=CANDIDATE_OUTPUT")
            mapping[ref.strip()] = cand.strip()
    return mapping


def match_outputs(
    reference: PreparedModel, candidate: PreparedModel, output_map: Mapping[str, str] | None = None
) -> tuple[list[tuple[str, str]], list[str]]:
    """Pairs (reference output, candidate output), and notes on candidate outputs left out.

    Raises :class:`ModelMismatchError` when a reference output has no counterpart
    or the element types/ranks of a pair differ.
    """
    output_map = dict(output_map or {})
    ref_outs = {name: (dtype, rank) for name, dtype, rank in reference.outputs}
    cand_outs = {name: (dtype, rank) for name, dtype, rank in candidate.outputs}
    unknown = [name for name in output_map if name not in ref_outs]
    if unknown:
        raise UsageError(f"--output-map names {unknown}, which are not reference outputs {list(ref_outs)}")
    pairs: list[tuple[str, str]] = []
    problems: list[str] = []
    for name, (dtype, rank) in ref_outs.items():
        cand_name = output_map.get(name, name)
        if cand_name not in cand_outs:
            problems.append(f"reference output {name!r} has no candidate output {cand_name!r}")
            continue
        cand_dtype, cand_rank = cand_outs[cand_name]
        if cand_dtype != dtype:
            problems.append(f"output {name!r} is {dtype} in the reference but {cand_dtype} in the candidate")
        elif rank is not None and cand_rank is not None and rank != cand_rank:
            problems.append(f"output {name!r} has rank {rank} in the reference but {cand_rank} in the candidate")
        pairs.append((name, cand_name))
    if problems:
        hint = ""
        if any("has no candidate output" in p for p in problems):
            hint = f" (candidate outputs: {list(cand_outs)}; pair them with --output-map REF=CAND)"
        raise ModelMismatchError("outputs differ: " + "; ".join(problems) + hint)
    used = {cand for _, cand in pairs}
    notes = [f"candidate output {name!r} has no reference counterpart; not compared"
             for name in cand_outs if name not in used]
    return pairs, notes
