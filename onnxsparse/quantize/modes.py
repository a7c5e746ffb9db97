"""Quantization modes, registered by name; the CLI's ``--mode`` choices come from here.

Each mode knows its defaults, which op types onnxruntime quantizes in it, why a
node of a supported type may still be left alone, how to call
``onnxruntime.quantization``, and how to describe the kernels it produces.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import Decline, UsageError
from ..graph.linear import linear_op_proto
from ._ort import QuantizationError, first_line, nbits_module, ort_quantization, quiet
from ..options.quantize import CALIBRATION_METHODS, DEFAULT_CALIB_SAMPLES, FORMATS, QUANT_TYPES
from .config import QuantizeConfig, QuantizeSettings, auto_reduce_range
from .cpu import CpuInfo

__all__ = ["QuantMode", "register_mode", "get_mode", "mode_names", "DEFAULT_MODES", "RunContext"]

logger = logging.getLogger(__name__)

_MODES: dict[str, "QuantMode"] = {}

#: The modes, in the order ``--help`` lists them.
DEFAULT_MODES: tuple[str, ...] = ("dynamic", "static", "int4")


@dataclass
class RunContext:
    """Everything a mode's ``run`` needs besides the settings."""

    source: Path
    output: Path
    exclude: list[str]
    reader: object | None
    external_data: bool


class QuantMode:
    """Base class: one way of quantizing with ``onnxruntime.quantization``."""

    name: str = ""
    help: str = ""
    needs_calibration: bool = False
    #: Whether the mode quantizes float16/bfloat16 weights (onnxruntime's int8 quantizers do not).
    half_weights: bool = False
    #: ``run`` only reads and writes files (no calibration reader): >2 GB models run it in a child
    #: process (issue 16).  The mode must then be importable (a module-level class) and picklable.
    runs_in_child: bool = False

    def check_config(self, config: QuantizeConfig) -> None:
        """Raise :class:`UsageError` for options that make no sense in this mode."""

    def resolve(self, config: QuantizeConfig, cpu: CpuInfo) -> QuantizeSettings:
        raise NotImplementedError

    def supported_op_types(self, settings: QuantizeSettings) -> frozenset[str]:
        raise NotImplementedError

    def check_node(self, node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> None:
        """Declines (raises :class:`~onnxsparse.errors.Decline`) when a node of a supported op type cannot
        be quantized; returns when it can."""

    def graph_reasons(self, model: onnx.ModelProto) -> dict[str, str]:
        """Nodes this mode must leave float because of where they sit in the graph, with the reason."""
        return {}

    def prepare(self, model: onnx.ModelProto, settings: QuantizeSettings, exclude: set[str]) -> list[str]:
        """Mode-specific graph changes before quantizing; returns what was done."""
        return []

    def extra_excludes(self, model: onnx.ModelProto, exclude: list[str]) -> list[str]:
        """Names the quantizer will give excluded nodes after its own rewrites."""
        return []

    def run(self, settings: QuantizeSettings, ctx: RunContext) -> None:
        raise NotImplementedError

    def kernels(self, settings: QuantizeSettings, op_counts: dict[str, int]) -> str:
        raise NotImplementedError

    def advice(self, settings: QuantizeSettings, op_counts: dict[str, int]) -> list[str]:
        """Warnings about the result (known slow kernels, ...)."""
        return []


def register_mode(cls: type[QuantMode]) -> type[QuantMode]:
    """Class decorator: make a mode available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _MODES[cls.name] = cls()
    return cls


def get_mode(name: str) -> QuantMode:
    try:
        return _MODES[name]
    except KeyError:
        raise UsageError(f"unknown quantization mode {name!r}: choose from {', '.join(mode_names())}") from None


def mode_names() -> tuple[str, ...]:
    listed = tuple(n for n in DEFAULT_MODES if n in _MODES)
    return listed + tuple(sorted(set(_MODES) - set(listed)))


# --------------------------------------------------------------------------- helpers


def _enum(module_attr: str, table: dict[str, str], key: str):
    return getattr(getattr(ort_quantization(), module_attr), table[key])


def _resolved(value: str | None, what: str) -> str:
    """A setting static mode's ``resolve`` always fills in; ``None`` means settings resolved by another mode."""
    if value is None:
        raise UsageError(f"static quantization needs a {what}; resolve the settings with the static mode")
    return value


def _present(ops: dict[str, int], names: tuple[str, ...]) -> str:
    found = [f"{n} x{ops[n]}" for n in names if ops.get(n)]
    return ", ".join(found) if found else "none"


def _check_gemm_convertible(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> None:
    """Declines with why a Gemm cannot become MatMul(+Add); returns when it can."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or linear_op_proto(node, 1).data_axis != 1:
        raise Decline("Gemm with alpha/beta != 1 or transA is not converted to MatMul")
    if len(node.input) < 2 or node.input[1] not in inits:
        raise Decline("Gemm weight B is not a constant")


def _gemm_convertible(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    try:
        _check_gemm_convertible(node, inits)
    except Decline:
        return False
    return True


def _upgrade_opset(model: onnx.ModelProto, target: int, why: str, alternative: str) -> list[str]:
    """Convert ``model`` in place to ONNX opset ``target`` if it is older; returns the step taken."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset >= target:
        return []
    try:
        converted = onnx.version_converter.convert_version(model, target)
    except Exception as exc:  # noqa: BLE001 - the converter raises many types
        raise QuantizationError(
            f"{why} needs opset {target} and converting from opset {opset} failed: {first_line(exc)}; {alternative}"
        ) from exc
    model.CopyFrom(converted)
    model.ir_version = max(model.ir_version, 10 if target >= 21 else 7)
    return [f"converted opset {opset} -> {target} for {why}"]


def _has_subgraphs(model: onnx.ModelProto) -> bool:
    return any(
        attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for node in model.graph.node
        for attr in node.attribute
    )


def _run_quantizer(what: str, fn: Callable[[], None]) -> None:
    try:
        with quiet():
            fn()
    except (UsageError, QuantizationError):
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises anything; one line for the user
        logger.debug("onnxruntime quantizer failed", exc_info=True)
        raise QuantizationError(
            f"onnxruntime.quantization failed in {what}: {type(exc).__name__}: {first_line(exc)} "
            "(try --exclude NODE, another --mode/--format, or --debug for the traceback)"
        ) from exc


def _weight_symmetry(config: QuantizeConfig, reasons: dict[str, str]) -> bool:
    reasons["weight_symmetric"] = (
        "symmetric: 0.0 is stored as code 0 (pruned zeros stay exact)"
        if config.symmetric
        else "asymmetric: 0.0 is stored as the integer zero point (still exact)"
    )
    return config.symmetric


# --------------------------------------------------------------------------- dynamic


@register_mode
class DynamicMode(QuantMode):
    name = "dynamic"
    runs_in_child = True
    help = "int8 weights; activations quantized at run time (no calibration data needed)"

    def check_config(self, config: QuantizeConfig) -> None:
        if config.format not in (None, "qoperator"):
            raise UsageError("dynamic mode writes integer operators (MatMulInteger/ConvInteger); --format qdq needs --mode static")
        if config.activation_type not in (None, "uint8"):
            raise UsageError("dynamic mode quantizes activations to uint8 at run time; --activation-type int8 needs --mode static")

    def resolve(self, config: QuantizeConfig, cpu: CpuInfo) -> QuantizeSettings:
        reasons: dict[str, str] = {"format": "dynamic: integer operators, activations quantized at run time"}
        per_channel = True if config.per_channel is None else config.per_channel
        reasons["per_channel"] = "set by the user" if config.per_channel is not None else (
            "default on for dynamic: one scale per output column keeps transformer weights with outlier columns "
            "accurate (MiniLM-class encoder token cosine 0.949 -> 0.983) at the same kernel speed; "
            "optimum's CPU presets do the same"
        )
        reduce_range = auto_reduce_range(config, cpu, reasons)
        return QuantizeSettings(
            mode=self.name, format="integer-ops", per_channel=per_channel, reduce_range=reduce_range,
            calibrate=None, calib_samples=None, activation_type="uint8 (at run time)",
            weight_type=config.weight_type, weight_symmetric=_weight_symmetry(config, reasons), exclude=config.exclude,
            min_weight_elements=config.min_weight_elements, block_size=None, accuracy_level=None,
            preprocess=config.preprocess, reasons=reasons,
        )

    def supported_op_types(self, settings: QuantizeSettings) -> frozenset[str]:
        from onnxruntime.quantization.registry import IntegerOpsRegistry

        return frozenset(IntegerOpsRegistry) | {"Gemm"}

    def check_node(self, node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> None:
        if node.op_type == "MatMul" and (len(node.input) < 2 or node.input[1] not in inits):
            raise Decline("dynamic mode quantizes MatMul only with a constant weight B")
        if node.op_type == "Gemm":
            _check_gemm_convertible(node, inits)

    def extra_excludes(self, model: onnx.ModelProto, exclude: list[str]) -> list[str]:
        # onnxruntime turns every Gemm into "<name>_MatMul" + "<name>_Add" before it looks at exclusions.
        gemms = {n.name for n in model.graph.node if n.op_type == "Gemm"}
        return [f"{name}_MatMul" for name in exclude if name in gemms]

    def run(self, settings: QuantizeSettings, ctx: RunContext) -> None:
        q = ort_quantization()

        def call() -> None:
            q.quantize_dynamic(
                str(ctx.source), str(ctx.output),
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                weight_type=_enum("QuantType", QUANT_TYPES, settings.weight_type),
                nodes_to_exclude=list(ctx.exclude),
                use_external_data_format=ctx.external_data,
                extra_options={"WeightSymmetric": settings.weight_symmetric, "MatMulConstBOnly": True},
            )

        _run_quantizer("dynamic mode", call)

    def kernels(self, settings: QuantizeSettings, op_counts: dict[str, int]) -> str:
        ops = _present(op_counts, ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "QAttention"))
        return (
            f"DynamicQuantizeLinear (uint8 activations at run time) -> {ops} "
            f"with {settings.weight_type} weights (u8{'s8' if settings.weight_type == 'int8' else 'u8'})"
        )

    def advice(self, settings: QuantizeSettings, op_counts: dict[str, int]) -> list[str]:
        convs = op_counts.get("ConvInteger", 0)
        if not convs:
            return []
        return [
            f"{convs} Conv became ConvInteger, which onnxruntime's CPU runs much slower than float Conv "
            "(6-8x slower in benchmarks/bench_quantize.py); for CNNs use --mode static, or --exclude the Conv nodes"
        ]


# --------------------------------------------------------------------------- static


@register_mode
class StaticMode(QuantMode):
    name = "static"
    help = "int8 weights and activations, calibrated on --calib data (QDQ or QOperator)"
    needs_calibration = True

    def check_config(self, config: QuantizeConfig) -> None:
        if config.format is not None and config.format not in FORMATS:
            raise UsageError(f"unknown --format {config.format!r}")

    def graph_reasons(self, model: onnx.ModelProto) -> dict[str, str]:
        from ._nodes import mask_fill_readers

        return mask_fill_readers(model)

    def resolve(self, config: QuantizeConfig, cpu: CpuInfo) -> QuantizeSettings:
        reasons: dict[str, str] = {}
        fmt = config.format or "qdq"
        reasons["format"] = "set by the user" if config.format else "default: QDQ, which onnxruntime's CPU kernels are tuned for"
        per_channel = True if config.per_channel is None else config.per_channel
        reasons["per_channel"] = "set by the user" if config.per_channel is not None else "default on for static: per-channel symmetric weights"
        if config.activation_type:
            act = config.activation_type
            reasons["activation_type"] = "set by the user"
        elif cpu.is_x86:
            act = "uint8"
            reasons["activation_type"] = "auto: uint8 activations x int8 weights (u8s8) is onnxruntime's x86 int8 kernel"
        else:
            act = "int8"
            reasons["activation_type"] = f"auto: int8 activations on {cpu.arch} (s8s8 kernels)"
        reduce_range = auto_reduce_range(config, cpu, reasons)
        reasons["calibration"] = "set by the user" if config.calibrate != "minmax" else "default: min/max of the calibration activations"
        return QuantizeSettings(
            mode=self.name, format=fmt, per_channel=per_channel, reduce_range=reduce_range,
            calibrate=config.calibrate, calib_samples=config.calib_samples or DEFAULT_CALIB_SAMPLES,
            activation_type=act, weight_type=config.weight_type, weight_symmetric=_weight_symmetry(config, reasons),
            exclude=config.exclude, min_weight_elements=config.min_weight_elements, block_size=None,
            accuracy_level=None, preprocess=config.preprocess, reasons=reasons,
        )

    def prepare(self, model: onnx.ModelProto, settings: QuantizeSettings, exclude: set[str]) -> list[str]:
        # onnxruntime only moves opset < 10 to 11, but per-axis DequantizeLinear (weights, biases) needs 13.
        steps = _upgrade_opset(model, 13, "per-axis QuantizeLinear/DequantizeLinear", "try --mode dynamic")
        if settings.format == "qdq" and _has_subgraphs(model):
            steps.append("Relu/Clip kept explicit in QDQ (QDQKeepRemovableActivations): If/Loop bodies read main-graph tensors")
        return steps

    def supported_op_types(self, settings: QuantizeSettings) -> frozenset[str]:
        from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

        return frozenset(QDQRegistry if settings.format == "qdq" else QLinearOpsRegistry)

    def run(self, settings: QuantizeSettings, ctx: RunContext) -> None:
        q = ort_quantization()
        extra: dict[str, object] = {"WeightSymmetric": settings.weight_symmetric}
        if _has_subgraphs(onnx.load(str(ctx.source), load_external_data=False)):
            # onnxruntime drops a Relu/Clip feeding a Q/DQ pair but rewires only main-graph readers:
            # If/Loop bodies reading the Relu's output would then see the raw (negative) values.
            extra["QDQKeepRemovableActivations"] = True

        def call() -> None:
            q.quantize_static(
                str(ctx.source), str(ctx.output), ctx.reader,
                quant_format=_enum("QuantFormat", FORMATS, settings.format),
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                activation_type=_enum("QuantType", QUANT_TYPES, _resolved(settings.activation_type, "activation type")),
                weight_type=_enum("QuantType", QUANT_TYPES, settings.weight_type),
                nodes_to_exclude=list(ctx.exclude),
                use_external_data_format=ctx.external_data,
                calibrate_method=_enum("CalibrationMethod", CALIBRATION_METHODS, _resolved(settings.calibrate, "calibration method")),
                extra_options=extra,
            )

        _run_quantizer(f"static mode ({settings.format})", call)

    def kernels(self, settings: QuantizeSettings, op_counts: dict[str, int]) -> str:
        act = _resolved(settings.activation_type, "activation type")
        pair = f"{act[0]}8{settings.weight_type[0]}8".replace("i", "s")
        if settings.format == "qdq":
            return (
                f"QDQ ({op_counts.get('QuantizeLinear', 0)} QuantizeLinear, {op_counts.get('DequantizeLinear', 0)} "
                f"DequantizeLinear); onnxruntime fuses them into QLinearConv/QLinearMatMul/QGemm ({pair}) at load"
            )
        ops = _present(op_counts, ("QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QAttention"))
        return f"QOperator: {ops} ({pair})"


# --------------------------------------------------------------------------- int4


@register_mode
class Int4Mode(QuantMode):
    name = "int4"
    help = "weight-only 4-bit blocks for MatMul/Gemm weights (MatMulNBits); activations stay float"
    half_weights = True
    runs_in_child = True

    def check_config(self, config: QuantizeConfig) -> None:
        if config.per_channel:
            raise UsageError("int4 quantizes in blocks of --block-size along K; --per-channel does not apply")
        if config.reduce_range:
            raise UsageError("--reduce-range applies to int8 kernels, not int4")
        if config.activation_type is not None:
            raise UsageError("int4 is weight-only; activations stay float (drop --activation-type)")
        if config.weight_type != "int8":
            raise UsageError("int4 stores 4-bit weights; --weight-type applies to dynamic/static")

    def resolve(self, config: QuantizeConfig, cpu: CpuInfo) -> QuantizeSettings:
        fmt = config.format or "qoperator"
        reasons = {
            "format": "set by the user" if config.format else "default: MatMulNBits (packed 4-bit blocks, CPU kernel)",
            "block_size": f"{config.block_size} weights along K share one scale",
            "weight_symmetric": (
                "symmetric: 0.0 is stored as the centre code (8) exactly, no zero-point tensor"
                if config.symmetric
                else "asymmetric: per-block zero points (0.0 is stored as the integer zero point)"
            ),
            "reduce_range": "n/a (int4 weight-only: no u8s8 kernel)",
            "accuracy_level": "kernel default" if config.accuracy_level is None else "set by the user",
        }
        return QuantizeSettings(
            mode=self.name, format=fmt, per_channel=None, reduce_range=None, calibrate=None,
            calib_samples=None, activation_type="float (weight-only)",
            weight_type="int4" if config.symmetric else "uint4",
            weight_symmetric=config.symmetric, exclude=config.exclude,
            min_weight_elements=config.min_weight_elements, block_size=config.block_size,
            accuracy_level=config.accuracy_level, preprocess=config.preprocess, reasons=reasons,
        )

    def supported_op_types(self, settings: QuantizeSettings) -> frozenset[str]:
        return frozenset({"MatMul", "Gemm"})

    def check_node(self, node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> None:
        if node.op_type == "Gemm":
            try:
                _check_gemm_convertible(node, inits)
            except Decline as exc:
                raise Decline(f"int4 only handles MatMul with a constant weight ({exc.reason})") from None
        if len(node.input) < 2 or node.input[1] not in inits:
            raise Decline("int4 only handles MatMul with a constant weight B")
        weight = inits[node.input[1]]
        dims = list(weight.dims)
        if len(dims) < 2 or any(d != 1 for d in dims[:-2]):
            raise Decline(f"int4 needs a 2-D weight (or leading dims of 1), got shape {dims}")
        if weight.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
            raise Decline("int4 needs a float weight")

    def prepare(self, model: onnx.ModelProto, settings: QuantizeSettings, exclude: set[str]) -> list[str]:
        steps = []
        converted = _gemms_to_matmul(model, exclude)
        if converted:
            steps.append(f"converted {converted} Gemm node(s) to MatMul+Add so their weights can be int4")
        if settings.format == "qdq":
            steps += _upgrade_opset(model, 21, "int4 DequantizeLinear", "use --format qoperator")
        return steps

    def run(self, settings: QuantizeSettings, ctx: RunContext) -> None:
        nbits = nbits_module()

        def call() -> None:
            model = onnx.load(str(ctx.source), load_external_data=True)
            quantizer = nbits.MatMulNBitsQuantizer(
                model,
                bits=4,
                block_size=settings.block_size,
                is_symmetric=settings.weight_symmetric,
                accuracy_level=settings.accuracy_level or None,
                nodes_to_exclude=list(ctx.exclude),
                quant_format=_enum("QuantFormat", FORMATS, settings.format),
                op_types_to_quantize=("MatMul",),
            )
            quantizer.process()
            quantizer.model.save_model_to_file(str(ctx.output), ctx.external_data)

        _run_quantizer("int4 mode (MatMulNBits)", call)

    def kernels(self, settings: QuantizeSettings, op_counts: dict[str, int]) -> str:
        sym = "symmetric" if settings.weight_symmetric else "asymmetric"
        level = settings.accuracy_level or "default"
        if settings.format == "qdq":
            return (
                f"int4 DequantizeLinear (block {settings.block_size}, {sym}) -> float MatMul "
                f"({op_counts.get('DequantizeLinear', 0)} DequantizeLinear)"
            )
        return f"MatMulNBits x{op_counts.get('MatMulNBits', 0)} (4-bit, block {settings.block_size}, {sym}, accuracy_level {level})"


def _gemms_to_matmul(model: onnx.ModelProto, exclude: set[str]) -> int:
    """Rewrite eligible Gemm nodes (alpha=beta=1, transA=0, constant B used once) as MatMul(+Add).

    Names follow onnxruntime (``<gemm>_MatMul``, ``<gemm>_Add``) so the report can find them.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    new_nodes: list[onnx.NodeProto] = []
    count = 0
    for node in graph.node:
        if node.op_type != "Gemm" or node.name in exclude or not _gemm_convertible(node, inits) or uses.get(node.input[1], 0) != 1:
            new_nodes.append(node)
            continue
        weight = inits[node.input[1]]
        if not linear_op_proto(node, 1).transposed:  # stored [N, K] (transB): MatMul wants [K, N]
            arr = numpy_helper.to_array(weight)
            weight.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr.T), weight.name))
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else ""
        out = node.output[0]
        mm_out = out + "_MatMul_output" if bias else out
        new_nodes.append(onnx.helper.make_node("MatMul", [node.input[0], node.input[1]], [mm_out], name=node.name + "_MatMul"))
        if bias:
            new_nodes.append(onnx.helper.make_node("Add", [mm_out, bias], [out], name=node.name + "_Add"))
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return count
