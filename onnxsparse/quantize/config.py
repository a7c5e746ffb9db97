"""Quantization options: what the user asks for, and the concrete settings we run.

:class:`QuantizeConfig` (= :class:`onnxsparse.options.quantize.QuantizeOptions`) holds the user's
choices, many of them "auto" (``None``).
:func:`resolve` turns it into :class:`QuantizeSettings` for one CPU, recording
for every auto choice *why* it was made, so the report can say which kernels
and settings were used.  String options are validated against the tables
in :mod:`onnxsparse.options.quantize`; the CLI builds its choices from the same tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..options.quantize import QuantizeOptions
from .cpu import CpuInfo

__all__ = ["QuantizeConfig", "QuantizeSettings", "resolve"]

#: The options are declared once, in :mod:`onnxsparse.options.quantize` (flags, recipe keys, API keywords).
QuantizeConfig = QuantizeOptions


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
