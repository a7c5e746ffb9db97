"""Quantization options: what the user asks for, and the concrete settings we run.

:class:`QuantizeConfig` holds the user's choices, many of them "auto" (``None``).
:func:`resolve` turns it into :class:`QuantizeSettings` for one CPU, recording
for every auto choice *why* it was made, so the report can say which kernels
and settings were used.  String options are validated against the tables
below; the CLI builds its choices from the same tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import UsageError
from .cpu import TARGETS, CpuInfo

__all__ = [
    "QuantizeConfig",
    "QuantizeSettings",
    "resolve",
    "FORMATS",
    "CALIBRATION_METHODS",
    "QUANT_TYPES",
    "BLOCK_SIZES",
    "ACCURACY_LEVELS",
    "DEFAULT_CALIB_SAMPLES",
]

#: ``--format`` values -> name of the ``onnxruntime.quantization.QuantFormat`` member.
FORMATS: dict[str, str] = {"qdq": "QDQ", "qoperator": "QOperator"}

#: ``--calibrate`` values -> name of the ``onnxruntime.quantization.CalibrationMethod`` member.
CALIBRATION_METHODS: dict[str, str] = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}

#: ``--activation-type`` / ``--weight-type`` values -> ``onnxruntime.quantization.QuantType`` member.
QUANT_TYPES: dict[str, str] = {"int8": "QInt8", "uint8": "QUInt8"}

#: Block sizes ``MatMulNBits`` accepts (a power of two, at least 16).
BLOCK_SIZES: tuple[int, ...] = (16, 32, 64, 128, 256)

#: ``MatMulNBits`` ``accuracy_level``: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 compute.
ACCURACY_LEVELS: tuple[int, ...] = (0, 1, 2, 3, 4)

#: Calibration samples used when the data holds more (MinMax converges quickly).
DEFAULT_CALIB_SAMPLES = 256


@dataclass(frozen=True)
class QuantizeConfig:
    """What to do; ``None`` means "choose for this mode and CPU".

    mode: ``dynamic`` (int8 weights, activations quantized at run time),
    ``static`` (int8 weights and activations, calibrated) or ``int4``
    (weight-only 4-bit blocks for MatMul, ``MatMulNBits``).
    """

    mode: str = "dynamic"
    format: str | None = None
    per_channel: bool | None = None
    reduce_range: bool | None = None
    calibrate: str = "minmax"
    calib_samples: int | None = None
    activation_type: str | None = None
    weight_type: str = "int8"
    weight_symmetric: bool = True
    exclude: tuple[str, ...] = ()
    min_weight_elements: int = 0
    block_size: int = 32
    accuracy_level: int | None = None
    preprocess: bool = True
    max_node_error: float | None = None
    target: str | None = None

    def __post_init__(self) -> None:
        from .modes import get_mode, mode_names  # registry lives with the modes

        def lower(value: Any) -> Any:
            return value.lower() if isinstance(value, str) else value

        object.__setattr__(self, "mode", lower(self.mode))
        object.__setattr__(self, "format", lower(self.format))
        object.__setattr__(self, "calibrate", lower(self.calibrate))
        object.__setattr__(self, "activation_type", lower(self.activation_type))
        object.__setattr__(self, "weight_type", lower(self.weight_type))
        object.__setattr__(self, "exclude", tuple(self.exclude or ()))
        if self.mode not in mode_names():
            raise UsageError(f"unknown quantization mode {self.mode!r}: choose from {', '.join(mode_names())}")
        _choice("format", self.format, FORMATS, allow_none=True)
        _choice("calibration method", self.calibrate, CALIBRATION_METHODS)
        _choice("activation type", self.activation_type, QUANT_TYPES, allow_none=True)
        _choice("weight type", self.weight_type, QUANT_TYPES)
        if self.block_size not in BLOCK_SIZES:
            raise UsageError(f"--block-size must be one of {', '.join(map(str, BLOCK_SIZES))}, got {self.block_size}")
        if self.accuracy_level is not None and self.accuracy_level not in ACCURACY_LEVELS:
            raise UsageError(f"--accuracy-level must be one of {ACCURACY_LEVELS}, got {self.accuracy_level}")
        if self.calib_samples is not None and self.calib_samples < 1:
            raise UsageError(f"--calib-samples must be at least 1, got {self.calib_samples}")
        object.__setattr__(self, "target", lower(self.target))
        if self.target is not None and self.target not in TARGETS:
            raise UsageError(f"unknown --target {self.target!r}: choose from {', '.join(TARGETS)}")
        if self.max_node_error is not None and not self.max_node_error > 0:
            raise UsageError(f"--max-node-error must be > 0, got {self.max_node_error}")
        if self.min_weight_elements < 0:
            raise UsageError(f"--min-weight-elements must be >= 0, got {self.min_weight_elements}")
        get_mode(self.mode).check_config(self)

    def with_(self, **changes: Any) -> "QuantizeConfig":
        return replace(self, **changes)


@dataclass(frozen=True)
class QuantizeSettings:
    """The concrete settings one run uses; ``reasons`` says why for each auto choice."""

    mode: str
    format: str
    per_channel: bool | None
    reduce_range: bool | None
    calibrate: str | None
    calib_samples: int | None
    activation_type: str | None
    weight_type: str
    weight_symmetric: bool
    exclude: tuple[str, ...]
    min_weight_elements: int
    block_size: int | None
    accuracy_level: int | None
    preprocess: bool
    max_node_error: float | None = None
    reasons: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "format": self.format,
            "activation_type": self.activation_type,
            "weight_type": self.weight_type,
            "weight_symmetric": self.weight_symmetric,
            "per_channel": self.per_channel,
            "reduce_range": self.reduce_range,
            "calibration": self.calibrate,
            "calibration_samples": self.calib_samples,
            "block_size": self.block_size,
            "accuracy_level": self.accuracy_level,
            "min_weight_elements": self.min_weight_elements,
            "preprocess": self.preprocess,
            "max_node_error": self.max_node_error,
            "reasons": dict(self.reasons),
        }


def _choice(what: str, value: str | None, table: dict[str, str], allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value not in table:
        raise UsageError(f"unknown {what} {value!r}: choose from {', '.join(table)}")


def resolve(config: QuantizeConfig, cpu: CpuInfo) -> QuantizeSettings:
    """Fill in every auto choice of ``config`` for ``cpu`` (see the mode's ``resolve``)."""
    from .modes import get_mode

    return replace(get_mode(config.mode).resolve(config, cpu), max_node_error=config.max_node_error)


def auto_reduce_range(config: QuantizeConfig, cpu: CpuInfo, reasons: dict[str, str]) -> bool:
    """``reduce_range`` for int8 u8s8 kernels: on only for x86 CPUs without VNNI."""
    if config.reduce_range is not None:
        reasons["reduce_range"] = "set by the user"
        if config.reduce_range is False and cpu.u8s8_may_saturate:
            reasons["reduce_range"] += f"; warning: {cpu.describe()}"
        return config.reduce_range
    if cpu.u8s8_may_saturate:
        reasons["reduce_range"] = f"auto: {cpu.describe()}, so weights use 7 bits"
        return True
    if cpu.is_x86:
        reasons["reduce_range"] = f"auto: CPU has {', '.join(cpu.vnni_flags)}, no u8s8 saturation"
    else:
        reasons["reduce_range"] = f"auto: {cpu.arch} int8 kernels do not saturate"
    return False
