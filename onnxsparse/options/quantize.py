"""The options of ``quantize``: one frozen dataclass for the command, the API and the recipe step.

:class:`QuantizeOptions` is also :class:`onnxsparse.quantize.QuantizeConfig`.  Recipe key = API
keyword = flag without dashes; the one name for symmetric weights is ``symmetric`` (``--symmetric`` /
``--no-symmetric``; the config used to call it ``weight_symmetric``).  ``check`` (``--no-check``) is
the attribute ``check_fp32`` because ``check()`` is the cross-key validation.  Objects only the API
can hand over (a :class:`~onnxsparse.quantize.CpuInfo`, in-memory feeds) are keywords of
:func:`onnxsparse.quantize.quantize` or accepted by the ``calib`` parser.

The string tables live here (not in :mod:`onnxsparse.quantize.config`) so
that the options import without onnxruntime.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import UsageError
from . import fields as F
from .base import Options
from .fields import Cli, option

if TYPE_CHECKING:
    import numpy as np

    from ..calibration.data import DataSource

__all__ = [
    "QuantizeOptions",
    "FORMATS",
    "CALIBRATION_METHODS",
    "QUANT_TYPES",
    "BLOCK_SIZES",
    "ACCURACY_LEVELS",
    "DEFAULT_CALIB_SAMPLES",
    "CHECK_SAMPLES",
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

#: Samples used to compare the quantized model with fp32 on this CPU.
CHECK_SAMPLES = 64

_DATA = "data"
_QUANT = "quantization"
_OUT = "output"


def _modes() -> tuple[str, ...]:
    from ..quantize.modes import mode_names  # the registry lives with the modes (onnxruntime-backed)

    return tuple(mode_names())


def _targets() -> tuple[str, ...]:
    from ..quantize.cpu import TARGETS

    return tuple(TARGETS)




def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _choice(what: str, value: str | None, table: Mapping[str, str] | Sequence[str], allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value not in table:
        raise UsageError(f"unknown {what} {value!r}: choose from {', '.join(table)}")


@dataclass(frozen=True, kw_only=True)
class QuantizeOptions(Options):
    """What to do; ``None`` means "choose for this mode and CPU".

    mode: ``dynamic`` (int8 weights, activations quantized at run time),
    ``static`` (int8 weights and activations, calibrated) or ``int4``
    (weight-only 4-bit blocks for MatMul, ``MatMulNBits``).
    """

    kind: ClassVar[str] = "quantize"
    help: ClassVar[str] = "int8 dynamic/static or int4 weight-only quantization, pruned zeros kept exact"
    refuses: ClassVar[Mapping[str, str]] = {
        "quantized": "the model is already quantized",
        "sparse": "quantizing folds the sparse storage back into dense weights (sparsify after quantize "
                  "stores the int8 weights sparse)",
    }
    sets: ClassVar[frozenset[str]] = frozenset({"quantized"})

    mode: str = option("dynamic", parse=F.choice(_modes, "quantization mode"), kind="mode",
                       help="dynamic, static (needs calib) or int4 (default dynamic)", cli=Cli(text=str))
    #: a path or ``random`` (all front ends), in-memory feeds or a data source (API)
    calib: str | os.PathLike[str] | Mapping[str, np.ndarray] | DataSource | None = option(
        None, parse=F.optional(F.data_or_arrays), kind="path",
        help="calibration data: .npz keyed by input name, a folder of .npz, or 'random' (needed by static; "
             "dynamic/int4 use it only for the fp32 check; recipe default: its top-level calib)",
        cli=Cli(metavar="DATA", group=_DATA, text=str))
    shapes: Sequence[tuple[str, tuple[int, ...]]] | Mapping[str, tuple[int, ...]] = option(
        (), key="shape", parse=F.shape_map, kind="mapping", help="input shapes for calib random (dynamic dims)",
        cli=Cli(metavar="NAME=D0xD1...", group=_DATA, text=str))
    calib_samples: int | None = option(
        None, parse=F.optional(F.integer(1)), kind="int >= 1",
        help=f"calibration samples to use (default {DEFAULT_CALIB_SAMPLES})", cli=Cli(metavar="N", group=_DATA))
    calibrate: str = option(
        "minmax", parse=F.choice(lambda: tuple(CALIBRATION_METHODS), "calibration method"), kind="choice",
        help=f"how activation ranges are chosen (static): {', '.join(CALIBRATION_METHODS)} (default minmax)",
        cli=Cli(group=_DATA, text=str))
    format: str | None = option(
        None, parse=F.optional(F.choice(lambda: tuple(FORMATS), "format")), kind="choice",
        help="static: qdq (default) or qoperator; int4: qoperator (MatMulNBits, default) or qdq",
        cli=Cli(group=_QUANT, text=str))
    per_channel: bool | None = option(
        None, parse=F.optional(F.boolean), kind="bool",
        help="one scale per output channel (default: on; --no-per-channel for one scale per tensor)",
        cli=Cli(group=_QUANT))
    reduce_range: bool | None = option(
        None, parse=F.optional(F.boolean), kind="bool",
        help="7-bit weights against u8s8 saturation (default: on only for x86 CPUs without VNNI)",
        cli=Cli(group=_QUANT))
    activation_type: str | None = option(
        None, parse=F.optional(F.choice(lambda: tuple(QUANT_TYPES), "activation type")), kind="choice",
        help="static activations: int8 or uint8 (default uint8 on x86)", cli=Cli(group=_QUANT, text=str))
    weight_type: str = option(
        "int8", parse=F.choice(lambda: tuple(QUANT_TYPES), "weight type"), kind="choice",
        help="int8 weight type: int8 or uint8 (default int8)", cli=Cli(group=_QUANT, text=str))
    symmetric: bool = option(
        True, parse=F.boolean, kind="bool", help="symmetric weights (default; 0.0 -> code 0, pruned zeros exact)",
        cli=Cli(group=_QUANT, help="asymmetric weights with zero points (default symmetric: 0.0 -> code 0)"))
    block_size: int = option(
        32, parse=F.int_choice(BLOCK_SIZES), kind="int",
        help=f"int4 block size along K: {', '.join(map(str, BLOCK_SIZES))} (default 32)", cli=Cli(group=_QUANT))
    accuracy_level: int | None = option(
        None, parse=F.optional(F.int_choice(ACCURACY_LEVELS)), kind="int",
        help="int4 MatMulNBits compute type (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8)", cli=Cli(group=_QUANT))
    exclude: tuple[str, ...] = option(
        (), parse=F.strings, kind="list", help="node names (or glob patterns) to keep in float",
        cli=Cli(metavar="NODE", group=_QUANT, text=str))
    min_weight_elements: int = option(
        0, parse=F.integer(0), kind="int >= 0", help="keep weights with fewer elements in float",
        cli=Cli(metavar="N", group=_QUANT))
    target: str | None = option(
        None, parse=F.optional(F.choice(_targets, "target CPU")), kind="choice",
        help="quantize for this deployment CPU instead of the one running the command (optimum's preset "
             "names, onnxsparse.quantize.TARGETS): sets reduce_range and the activation type",
        cli=Cli(metavar="CPU", group=_QUANT, text=str))
    max_node_error: float | None = option(
        None, parse=F.optional(F.number(0)), kind="number > 0",
        help="mixed precision: keep in float every node whose quantization adds more than this relative L2 "
             "error to its output on the check data (measured, then quantized once more)",
        cli=Cli(metavar="E", group=_QUANT))
    preprocess: bool = option(True, parse=F.boolean, kind="bool", help="run onnxruntime's quant_pre_process",
                              cli=Cli(group=_QUANT, help="skip quant_pre_process"))
    check_fp32: bool = option(
        True, key="check", parse=F.boolean, kind="bool", help="compare with fp32 on this CPU (the check data)",
        cli=Cli(group=_OUT, help="do not compare with fp32 on this CPU"))
    check_samples: int = option(
        CHECK_SAMPLES, parse=F.integer(1), kind="int >= 1",
        help=f"samples of the fp32 comparison (default {CHECK_SAMPLES})", cli=Cli(metavar="N", group=_OUT))

    def __post_init__(self) -> None:
        for name in ("mode", "format", "calibrate", "activation_type", "weight_type", "target"):
            object.__setattr__(self, name, _lower(getattr(self, name)))
        object.__setattr__(self, "exclude", tuple(self.exclude or ()))
        self.check()

    def shape_map(self) -> dict[str, tuple[int, ...]]:
        return dict(self.shapes.items() if isinstance(self.shapes, Mapping) else self.shapes)

    @property
    def needs_calibration(self) -> bool:
        from ..quantize.modes import get_mode

        return bool(get_mode(self.mode).needs_calibration)

    def with_(self, **changes: Any) -> QuantizeOptions:
        return replace(self, **changes)

    def check(self) -> None:
        from ..quantize.cpu import TARGETS
        from ..quantize.modes import get_mode, mode_names

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
        if self.target is not None and self.target not in TARGETS:
            raise UsageError(f"unknown --target {self.target!r}: choose from {', '.join(TARGETS)}")
        if self.max_node_error is not None and not self.max_node_error > 0:
            raise UsageError(f"--max-node-error must be > 0, got {self.max_node_error}")
        if self.max_node_error is not None and not self.check_fp32:
            raise UsageError("--max-node-error measures each node on the check data: drop --no-check")
        if self.min_weight_elements < 0:
            raise UsageError(f"--min-weight-elements must be >= 0, got {self.min_weight_elements}")
        if self.check_samples < 1:
            raise UsageError(f"--check-samples must be at least 1, got {self.check_samples}")
        get_mode(self.mode).check_config(self)
