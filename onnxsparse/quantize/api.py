"""``quantize()``: the workflow around ``onnxruntime.quantization``.

load -> check data -> prepare (normalize, name, pre-process) -> plan exclusions
-> quantize in a temporary folder -> verify zeros, diff nodes -> save atomically
-> run on this CPU and compare with fp32 -> report.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes import PassResult

from .._ort import make_session, session_options
from .._progress import progress_bar
from .._workdir import owned_temp_dir
from ..calibration.data import DataSource, load_data, model_input_specs
from ..errors import DataError, UsageError
from ..model_check import check_finite_weights
from ..io import (
    EXTERNAL_DATA_THRESHOLD,
    carry_value_info,
    ModelSource,
    check_output,
    load_model,
    model_file_bytes,
    save_model,
)
from ._nodes import count_by_op, diff_nodes, origin_names, plan_nodes, rename_rows
from ._child import in_child
from ._slices import quantize_external, slicing_step
from ._ort import QuantizationError, first_line
from ._prepare import normalized_copy, pre_processed, save_proto
from ._reader import DYNAMIC_BATCH, calibration_batch_size, make_reader
from ..options.quantize import CHECK_SAMPLES
from .config import QuantizeConfig, QuantizeSettings, resolve
from .cpu import CpuInfo, detect_cpu, target_cpu
from .modes import QuantMode, RunContext, get_mode
from .node_error import NodeError, node_errors
from .report import QuantizeReport
from .weights import ZeroCheck, check_zeros

__all__ = ["quantize", "run_quantize", "QuantizePass", "QuantizeResult", "CHECK_SAMPLES"]

logger = logging.getLogger("onnxsparse.quantize")


#: Relative L2 output error above which the report warns (int8, int4).  On the sample
#: models we measured at most 0.11 (mobilenet_block, static, random calibration) and
#: 0.19 (int4); a real breakage (an If body reading a removed Relu) gave 0.45.
LARGE_ERROR = (0.2, 0.35)

_REMOVED_REASONS = {
    "Relu": "removed: folded into the quantized range of its producer (QDQ)",
    "Clip": "removed: folded into the quantized range of its producer (QDQ)",
}


@dataclass
class QuantizeResult(PassResult):
    """The quantized model (``onnx_ir``), where it was saved (if asked), and the report."""

    path: Path | None = field(kw_only=True)
    report: QuantizeReport = field(kw_only=True)


def _params(model: ir.Model) -> int | None:
    """Parameter count (``onnxsparse.analysis``); ``None`` if it cannot be counted."""
    try:
        from ..analysis import count_params

        return int(count_params(model))
    except Exception:  # noqa: BLE001 - a count is informative, never a reason to fail
        logger.debug("count_params failed", exc_info=True)
        return None


def _half_weights(model: ir.Model) -> list[str]:
    """Names of float16/bfloat16 initializers of rank >= 2 (weights)."""
    half = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
    return [
        v.name or "" for g in model.graphs() for v in g.initializers.values()
        if v.const_value is not None and v.const_value.dtype in half and len(v.const_value.shape) >= 2
    ]


def _tensor_bytes(model: ir.Model) -> int:
    return sum(
        v.const_value.nbytes for g in model.graphs() for v in g.initializers.values() if v.const_value is not None
    )


def _session(path: Path):
    # log level 4: failures surface as exceptions, reported in one line
    return make_session(path, session_options(log_severity=4))


def _run_all(session, source: DataSource, batch: int, limit: int) -> list[np.ndarray]:
    outs: list[list[np.ndarray]] = []
    for feeds in source.batches(batch, limit):
        outs.append(session.run(None, feeds))
    return [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))] if outs else []


def _reference(path: Path, source: DataSource, batch: int, limit: int) -> list[np.ndarray]:
    """fp32 outputs on the check data; a failure here is the data's fault (wrong dynamic dims...)."""
    try:
        return _run_all(_session(path), source, batch, limit)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise DataError(f"{source.origin}: the fp32 model does not run on this data: {first_line(exc)}") from exc


def _fidelity(path: Path, reference: list[np.ndarray], source: DataSource, batch: int, limit: int) -> dict[str, Any]:
    try:
        session = _session(path)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise QuantizationError(
            f"onnxruntime cannot load the quantized model: {first_line(exc)} "
            "(an onnxruntime.quantization limitation; try --exclude NODE or another --mode/--format)"
        ) from exc
    got = _run_all(session, source, batch, limit)
    ref, out = reference[0].astype(np.float64), got[0].astype(np.float64)
    diff = out - ref
    norm = float(np.linalg.norm(ref))
    result: dict[str, Any] = {
        "samples": int(ref.shape[0]) if ref.ndim else 1,
        "data": source.origin,
        "provider": session.get_providers()[0],
        "output": session.get_outputs()[0].name,
        "max_abs_diff": float(np.max(np.abs(diff))) if diff.size else 0.0,
        "rel_l2_error": float(np.linalg.norm(diff)) / norm if norm > 0 else float(np.linalg.norm(diff)),
        "top1_agreement": None,
    }
    if ref.ndim >= 2 and ref.shape[-1] >= 2:
        result["top1_agreement"] = float(np.mean(ref.argmax(-1) == out.argmax(-1)))
    return result


def _check_source(calib: DataSource | None, model: ir.Model, shapes: Mapping[str, tuple[int, ...]]) -> tuple[DataSource | None, str | None]:
    if calib is not None:
        return calib, None
    try:
        return load_data("random", model, shapes=shapes, samples=8, seed=0), None
    except UsageError as exc:
        return None, f"no --calib data and random inputs need a shape: {exc}"


@dataclass
class _Outcome:
    """What the quantizer did, seen by comparing its input and output graphs."""

    zeros: ZeroCheck
    quantized: list[dict]
    excluded: list[dict]
    removed: list[dict]
    ops_before: dict[str, int]
    ops_after: dict[str, int]


def _load_calibration(calib, model: ir.Model, shapes, settings: QuantizeSettings, needs_calibration: bool):
    if calib is None:
        if needs_calibration:
            raise UsageError(
                f"{settings.mode} quantization needs calibration data: --calib data.npz (keys = input names), "
                "a folder of .npz files, or --calib random --shape NAME=DIMS"
            )
        return None
    return load_data(calib, model, shapes=shapes, samples=settings.calib_samples or CHECK_SAMPLES)


def _run_mode(quant_mode: QuantMode, settings: QuantizeSettings, ctx: RunContext, tmp: Path) -> None:
    """The quantizer; for external-data models in a child process, over weight slices where it can (issue 16)."""
    if ctx.external_data and quant_mode.runs_in_child and ctx.reader is None:
        in_child(quantize_external, quant_mode, settings, ctx, tmp=tmp)
    else:
        quant_mode.run(settings, ctx)


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return copy


def _structure(path: Path) -> onnx.ModelProto:
    """The graph at ``path`` with its external weights left on disk (issue 16: never a resident copy)."""
    return onnx.load(str(path), load_external_data=False)


def _analyse(planned: onnx.ModelProto, quant_input: onnx.ModelProto, after: onnx.ModelProto, plan,
             supported: frozenset[str], base_dir: Path) -> _Outcome:
    zeros = check_zeros(quant_input, after, base_dir=str(base_dir))
    quantized, removed = diff_nodes(planned, after, supported, zeros.weights)
    done = {r["node"] for r in quantized}
    ops = {n.name: n.op_type for n in planned.graph.node}
    excluded = list(plan.excluded) + [
        {"node": name, "op_type": ops[name], "weight": None,
         "reason": "onnxruntime left it in float (unknown input type/shape, or no calibration range)"}
        for name in plan.candidates if name not in done
    ]
    for row in removed:
        row["reason"] = _REMOVED_REASONS.get(row["op_type"], "removed by the quantizer")
    return _Outcome(
        zeros=zeros, quantized=quantized, excluded=excluded, removed=removed,
        ops_before=dict(sorted(Counter(n.op_type for n in planned.graph.node).items())),
        ops_after=dict(sorted(Counter(n.op_type for n in after.graph.node).items())),
    )


#: Samples the per-node error is measured on (every quantized node's tensors are kept for them).
NODE_ERROR_SAMPLES = 16


def _node_errors(fp32_path: Path, quantized_path: Path, planned: onnx.ModelProto, outcome: _Outcome,
                 source: DataSource | None, batch: int, external: bool) -> list[NodeError]:
    """Per quantized node, the error it adds on the check data (empty without check data)."""
    if source is None:
        return []
    by_name = {n.name: n for n in planned.graph.node}
    nodes = [by_name[r["node"]] for r in outcome.quantized if r["node"] in by_name]
    try:
        return node_errors(fp32_path, quantized_path, nodes,
                           lambda: source.batches(batch, NODE_ERROR_SAMPLES), _session,
                           one_session_at_a_time=external)
    except Exception as exc:  # noqa: BLE001 - a diagnostic; the model-level check still runs
        logger.debug("per-node error failed", exc_info=True)
        logger.warning("per-node error not measured: %s", first_line(exc))
        return []


def _keep_float(costly: list[NodeError], planned: onnx.ModelProto, plan, settings: QuantizeSettings) -> list[str]:
    """Exclude the costly nodes (and, for static, the readers of their outputs); record why; return the names.

    Static quantization quantizes a tensor wherever a consumer reads it
    quantized, so a node's output stays float only if its readers stay float
    too (a LayerNorm output with outlier channels is quantized by the MatMuls
    reading it).  Dynamic quantization works node by node: the node is enough.
    """
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in planned.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    by_name = {n.name: n for n in planned.graph.node}
    rows: dict[str, dict] = {}
    for e in costly:
        rows.setdefault(e.node, {
            "node": e.node, "op_type": e.op_type, "weight": None,
            "reason": f"kept float: quantized it added {e.added_error:.3g} relative error "
                      f"(> max_node_error {settings.max_node_error:g})",
        })
        if settings.mode != "static" or e.node not in by_name:
            continue
        for out in by_name[e.node].output:
            for reader in readers.get(out, []):
                rows.setdefault(reader.name, {
                    "node": reader.name, "op_type": reader.op_type, "weight": None,
                    "reason": f"kept float so that the output of {e.node!r} stays float "
                              f"(it added {e.added_error:.3g} relative error quantized)",
                })
    names = [name for name in rows if name not in plan.exclude]
    plan.candidates = [name for name in plan.candidates if name not in rows]
    plan.exclude.extend(names)
    plan.excluded = [r for r in plan.excluded if r["node"] not in rows] + list(rows.values())
    return names


def _warnings(outcome: _Outcome, settings: QuantizeSettings, cpu: CpuInfo, quant_mode) -> list[str]:
    out: list[str] = []
    out.extend(quant_mode.advice(settings, outcome.ops_after))
    if settings.reduce_range is False and cpu.u8s8_may_saturate and settings.mode != "int4":
        out.append(f"{cpu.describe()} and --no-reduce-range: int8 results may saturate; validate accuracy")
    return out


#: Options that were keywords of their own before the options dataclass; they may still accompany a ``config``.
_DATA_KEYS = frozenset({"calib", "shapes", "shape", "check", "check_fp32", "check_samples"})


def quantize(
    model: ModelSource,
    output: str | os.PathLike | None = None,
    *,
    config: QuantizeConfig | None = None,
    force: bool = False,
    cpu: CpuInfo | None = None,
    progress: bool = False,
    **options: Any,
) -> QuantizeResult:
    """Quantize ``model`` (path, bytes, ModelProto or ``onnx_ir`` model) with onnxruntime.

    The keywords are the options of :class:`QuantizeConfig` under the command's flag names
    (``mode``, ``calib``, ``shape``, ``format``, ``per_channel``, ``symmetric``, ``exclude``,
    ``block_size``, ``check``, ...), or pass a whole ``config`` (with at most the data keywords
    ``calib``/``shape``/``check``/``check_samples`` beside it).  ``calib`` is an ``.npz`` keyed by
    input name, a folder of them, ``"random"`` (with ``shape``) or a mapping of arrays; for
    dynamic/int4 it is only used for the check.  With ``output`` the model is saved there
    atomically (never over the input).  ``cpu`` (or the ``target`` option, a named deployment CPU)
    overrides the detected CPU (for settings only).
    """
    if config is None:
        config = QuantizeConfig.from_kwargs(options, "quantize()")
    elif options:
        if not set(options) <= _DATA_KEYS:
            raise UsageError("pass either config=QuantizeConfig(...) or individual options, not both")
        data = QuantizeConfig.from_kwargs(options, "quantize()")
        given = {s.attr for s in QuantizeConfig.field_specs() if s.attr in options or s.key in options}
        config = replace(config, **{attr: getattr(data, attr) for attr in given})
    return run_quantize(model, output, config, force=force, cpu=cpu, progress=progress)


class QuantizePass(ir.passes.FunctionalPass):
    """Quantize with onnxruntime; :meth:`call` returns a :class:`QuantizeResult` (a new model and the report).

    onnxruntime's quantizers read and write files: they live in a scratch folder removed afterwards.
    A quantized model is refused (quantizing twice is not supported), and so is a sparse-stored one
    (densify it first, or quantize before sparsify).
    """

    def __init__(self, options: QuantizeConfig | None = None, *, cpu: CpuInfo | None = None) -> None:
        super().__init__()
        self.options = options or QuantizeConfig()
        self.cpu = cpu

    def requires(self, model: ir.Model) -> None:
        from ..model_state import model_state

        state = model_state(model)
        for name, reason in QuantizeConfig.refuses.items():
            if name in state:
                raise ir.passes.PreconditionError(f"{reason}: {state[name]}")

    def call(self, model: ir.Model) -> QuantizeResult:
        return run_quantize(model, None, self.options, cpu=self.cpu)

    def ensures(self, model: ir.Model) -> None:
        from ..model_state import model_state

        if "quantized" not in model_state(model):
            raise ir.passes.PostconditionError("no quantized operator in the result")


def run_quantize(model: ModelSource, output: str | os.PathLike | None, config: QuantizeConfig, *,
                 force: bool = False, cpu: CpuInfo | None = None, progress: bool = False) -> QuantizeResult:
    """The whole workflow, for every front end (the command, :func:`quantize`, the pass, a recipe)."""
    started = time.perf_counter()
    calib, check, check_samples = config.calib, config.check_fp32, config.check_samples
    cpu = cpu or (target_cpu(config.target) if config.target else detect_cpu())
    settings: QuantizeSettings = resolve(config, cpu)
    quant_mode = get_mode(settings.mode)
    shapes = config.shape_map()

    input_path = Path(model) if isinstance(model, (str, os.PathLike)) else None
    if output is not None:
        check_output(Path(output), protect=(input_path, calib if isinstance(calib, (str, os.PathLike)) else None),
                     force=force)
    ir_model = load_model(model)
    check_finite_weights(ir_model, "quantization")
    bytes_before = model_file_bytes(input_path) if input_path else ir.to_proto(ir_model).ByteSize()
    warnings: list[str] = []
    calib_source = _load_calibration(calib, ir_model, shapes, settings, quant_mode.needs_calibration)
    if str(calib) == "random" and quant_mode.needs_calibration:
        warnings.append("calibrated on random data: activation ranges will not match real inputs")
    batch = calibration_batch_size(model_input_specs(ir_model))
    external = _tensor_bytes(ir_model) > EXTERNAL_DATA_THRESHOLD
    half = _half_weights(ir_model)
    if half and not quant_mode.half_weights:
        raise UsageError(
            f"{len(half)} weight(s) are float16/bfloat16 (e.g. {half[0]!r}); onnxruntime's int8 quantizers need a "
            "float32 model: convert it to float32 first, or use --mode int4, which keeps float16 activations"
        )

    out_dir = Path(output).resolve().parent if output else None
    with owned_temp_dir(out_dir if out_dir and out_dir.is_dir() else None, "quantize") as tmp:
        prepared = normalized_copy(ir_model, tmp, external_data=external)
        check_source, check_skip = (None, "disabled") if not check else _check_source(calib_source, ir_model, shapes)
        params_before = _params(ir_model)
        # Issue 16: a >2 GB input read from a file is dropped (its weights mapped and touched) while
        # onnxruntime works in a child process; only its value_info is read again afterwards.
        keep_model = not (external and input_path is not None)
        if not keep_model:
            del ir_model
        gc.collect()  # copies made while normalizing sit in reference cycles
        prepared = pre_processed(prepared, tmp, preprocess=settings.preprocess, half_weights=bool(half),
                                 child=external)
        gc.collect()  # pre-processing's model copies sit in reference cycles; free them before quantizing

        # fp32 reference outputs first: data the model cannot run on fails here, in one line.
        reference = _reference(tmp / "source.onnx", check_source, batch, check_samples) if check_source else None

        reader, bar, calibration = None, None, None
        if quant_mode.needs_calibration:
            assert calib_source is not None
            bar = progress_bar(desc="calibrating", unit="batch", enabled=progress)
            reader = make_reader(calib_source, batch, settings.calib_samples, bar.update if bar else None)
            if len(reader) == 0:
                raise DataError(f"{calib_source.origin}: fewer samples ({len(calib_source)}) than the model's batch size {batch}")
            if bar is not None:
                bar.total = len(reader)
            calibration = {
                "data": calib_source.origin,
                "method": settings.calibrate,
                "samples": reader.samples,
                "batch": batch if batch != DYNAMIC_BATCH else f"{batch} (dynamic batch axis)",
            }

        # Plan on the prepared graph (names the user knows are mapped through pre-processing).
        proto = prepared.load()
        origin = origin_names(prepared.original_names, [n.name for n in proto.graph.node])
        supported = quant_mode.supported_op_types(settings)
        plan = plan_nodes(
            proto, mode_name=settings.mode, supported=supported, check_node=quant_mode.check_node,
            excludes=settings.exclude, min_weight_elements=settings.min_weight_elements,
            origin=origin, original=prepared.original_names, graph_reasons=quant_mode.graph_reasons(proto),
        )
        warnings.extend(plan.warnings)
        planned = _structure(prepared.path) if external else _copy(proto)
        mode_steps = quant_mode.prepare(proto, settings, set(plan.exclude))
        quant_input = prepared.path
        if mode_steps:
            quant_input = tmp / "mode_input.onnx"
            save_proto(proto, quant_input, external)
        if external:
            # Issue 16: no float copy of the weights stays resident while onnxruntime quantizes.
            proto = _structure(quant_input)
            gc.collect()
        exclude = plan.exclude + quant_mode.extra_excludes(proto, plan.exclude)

        quantized_path = tmp / "quantized.onnx"
        try:
            _run_mode(quant_mode, settings, RunContext(quant_input, quantized_path, exclude, reader, external), tmp)
            after = onnx.load(str(quantized_path), load_external_data=True)
            gc.collect()  # the quantizer's model copies, before our checks open sessions
            outcome = _analyse(planned, proto, after, plan, supported, quant_input.parent)
            errors = _node_errors(quant_input, quantized_path, planned, outcome, check_source, batch, external)
            costly = [] if settings.max_node_error is None else [
                e for e in errors if e.added_error > settings.max_node_error
            ]
            if costly:
                # Mixed precision: the nodes that add the most error stay float; quantize once more.
                names = _keep_float(costly, planned, plan, settings)
                exclude = exclude + names + quant_mode.extra_excludes(proto, names)
                if reader is not None:
                    reader.rewind()
                _run_mode(quant_mode, settings, RunContext(quant_input, quantized_path, exclude, reader, external), tmp)
                after = onnx.load(str(quantized_path), load_external_data=True)
                outcome = _analyse(planned, proto, after, plan, supported, quant_input.parent)
                errors = _node_errors(quant_input, quantized_path, planned, outcome, check_source, batch, external)
        finally:
            if bar is not None:
                bar.close()
        warnings.extend(_warnings(outcome, settings, cpu, quant_mode))
        sliced, not_sliced = slicing_step(tmp)
        mode_steps += [sliced] if sliced else []
        prepared.skipped.extend([not_sliced] if not_sliced else [])

        result_model = carry_value_info(load_model(after), ir_model if keep_model else load_model(model))
        saved: Path | None = None
        if output is not None:
            saved = save_model(result_model, output, protect=tuple(p for p in (input_path,) if p), force=force,
                               external_data=True if external else None, source=input_path)
        # Unsaved: the size of onnxruntime's file (the saved one differs by a few hundred bytes of metadata).
        bytes_after = model_file_bytes(saved or quantized_path)

        fidelity: dict[str, Any]
        if reference is not None and check_source is not None:
            fidelity = _fidelity(saved or quantized_path, reference, check_source, batch, check_samples)
            limit = LARGE_ERROR[settings.mode == "int4"]
            if fidelity["rel_l2_error"] > limit:
                warnings.append(
                    f"outputs differ from fp32 by {fidelity['rel_l2_error']:.2f} relative L2 error on the check data "
                    f"(> {limit}); validate accuracy before use, or --exclude the sensitive nodes"
                )
        else:
            fidelity = {"skipped": check_skip}

    report = QuantizeReport(
        model=str(input_path) if input_path else None,
        output=str(saved) if saved else None,
        mode=settings.mode,
        settings=settings.as_dict(),
        cpu={"arch": cpu.arch, "model_name": cpu.model_name, "vnni_flags": list(cpu.vnni_flags),
             "description": cpu.describe(), "source": cpu.source},
        kernels=quant_mode.kernels(settings, outcome.ops_after),
        bytes_before=bytes_before,
        bytes_after=bytes_after,
        params_before=params_before,
        params_after=_params(result_model),
        preprocess={"steps": prepared.steps + mode_steps, "skipped": prepared.skipped},
        calibration=calibration,
        quantized=rename_rows(outcome.quantized, origin),
        quantized_by_op=count_by_op(outcome.quantized),
        excluded=rename_rows(outcome.excluded, origin),
        removed=rename_rows(outcome.removed, origin),
        zeros=outcome.zeros.as_dict(),
        node_errors=rename_rows([e.as_dict() for e in errors], origin),
        failures=[failure] if (failure := outcome.zeros.failure()) else [],
        check=fidelity,
        ops_before=outcome.ops_before,
        ops_after=outcome.ops_after,
        warnings=warnings,
        seconds=time.perf_counter() - started,
    )
    return QuantizeResult(result_model, True, path=saved, report=report)
