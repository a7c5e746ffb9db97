"""Quantization that keeps the sparsity, built on ``onnxruntime.quantization``.

``quantize(model, output, mode="dynamic"|"static"|"int4", calib=...)`` runs
onnxruntime's quantizers with settings chosen for the CPU it runs on, checks
that every pruned zero is still an exact zero after quantization, runs the
result against fp32 on this CPU, and reports what was quantized, what was not
and why.

The package itself is callable, so ``onnxsparse.quantize(...)`` works whether
``onnxsparse.quantize`` refers to this package or to the function.
"""

from __future__ import annotations

import sys
import types

from ._ort import QuantizationError
from .api import CHECK_SAMPLES, QuantizePass, QuantizeResult, quantize, run_quantize
from ..options.quantize import ACCURACY_LEVELS, BLOCK_SIZES, CALIBRATION_METHODS, FORMATS, QUANT_TYPES
from .config import QuantizeConfig, QuantizeSettings, resolve
from .cpu import TARGETS, CpuInfo, detect_cpu, parse_cpuinfo, target_cpu
from .modes import DEFAULT_MODES, QuantMode, get_mode, mode_names, register_mode
from .report import QuantizeReport, format_summary
from .weights import QuantizedWeight, ZeroCheck, check_zeros, find_quantized_weights, match_sources

__all__ = [
    "quantize",
    "run_quantize",
    "QuantizePass",
    "QuantizeResult",
    "QuantizeReport",
    "QuantizeConfig",
    "QuantizeSettings",
    "QuantizationError",
    "resolve",
    "format_summary",
    "CpuInfo",
    "detect_cpu",
    "parse_cpuinfo",
    "target_cpu",
    "TARGETS",
    "QuantMode",
    "register_mode",
    "get_mode",
    "mode_names",
    "DEFAULT_MODES",
    "FORMATS",
    "CALIBRATION_METHODS",
    "QUANT_TYPES",
    "BLOCK_SIZES",
    "ACCURACY_LEVELS",
    "CHECK_SAMPLES",
    "QuantizedWeight",
    "ZeroCheck",
    "check_zeros",
    "find_quantized_weights",
    "match_sources",
]


class _CallablePackage(types.ModuleType):
    """Lets ``onnxsparse.quantize(...)`` call :func:`quantize` even though it names this package."""

    def __call__(self, *args, **kwargs):
        return quantize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
