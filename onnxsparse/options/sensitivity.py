"""The options of ``sensitivity``, declared once: its command-line flags and the API keywords.

``onnxsparse sensitivity`` and :func:`~onnxsparse.passes.sensitivity.run_sensitivity` read this
dataclass, so the defaults (criterion, ratios, samples, repair, cache) exist in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import UsageError
from ..passes.reconstruct import DEFAULT_DAMP, REPAIRS
from ..passes.sensitivity import DEFAULT_RATIOS, DEFAULT_SAMPLES, parse_ratios
from . import fields as F
from .base import Options
from .fields import Bad, Cli, ParseContext, option
from .prune import criteria

__all__ = ["SensitivityOptions"]


def _ratios(value: Any, ctx: ParseContext) -> tuple[float, ...]:
    """``"0.1,0.25,0.5"``, or a list of numbers / such texts (``--ratios 0.1 0.25``), each in (0, 1)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if not isinstance(value, (str, list, tuple)):
        raise Bad(f"expected R1,R2,... or a list of ratios, got {type(value).__name__}")
    try:
        return parse_ratios(value)
    except UsageError as exc:
        raise Bad(str(exc)) from None


@dataclass(frozen=True, kw_only=True)
class SensitivityOptions(Options):
    """Per-group, per-ratio output error of pruning each group alone (``onnxsparse sensitivity``)."""

    kind: ClassVar[str] = "sensitivity"
    help: ClassVar[str] = "how much each prunable group hurts when pruned alone"
    transforms: ClassVar[bool] = False

    calib: str | None = option(
        None, parse=F.optional(F.data_path(random_ok=True)), kind="path or random", cli=Cli(metavar="DATA"),
        help="calibration data (required): .npz keyed by input name (axis 0 = samples), a folder of them, or 'random'")
    ratios: tuple[float, ...] = option(
        DEFAULT_RATIOS, parse=_ratios, kind="list", cli=Cli(metavar="R1,R2,...", text=str),
        help=f"fractions of each group's units to remove, each in (0, 1) (default {','.join(map(str, DEFAULT_RATIOS))})")
    heads: bool = option(False, parse=F.boolean, kind="bool", help="only attention head and KV groups")
    criterion: str = option("l2", parse=F.choice(criteria, "criterion"), kind="criterion",
                            help="importance criterion choosing the units removed (default l2)")
    calib_samples: int = option(DEFAULT_SAMPLES, parse=F.integer(1), kind="int >= 1", cli=Cli(metavar="N"),
                                help=f"calibration samples used (default {DEFAULT_SAMPLES})")
    calib_batch: int = option(32, parse=F.integer(1), kind="int >= 1", cli=Cli(metavar="N"),
                              help="calibration samples per onnxruntime run (default 32)")
    shape: tuple[str, ...] = option((), parse=F.strings, kind="list",
                                    cli=Cli(metavar="NAME=D0xD1x...", append=True, text=str),
                                    help="input shape for 'random' data and the MAC count (e.g. input_ids=1x128)")
    repair: str = option(
        "none", parse=F.choice(lambda: REPAIRS, "repair"), kind="none|bias|lstsq",
        cli=Cli(metavar="{" + ",".join(REPAIRS) + "}"),
        help="measure each entry after the repair prune would apply to that group's consumers (prune --target "
             "measures its loss table with prune's repair; default none: masked only)")
    damp: float = option(DEFAULT_DAMP, parse=F.number(0), kind="number >= 0", cli=Cli(metavar="F"),
                         help=f"lstsq ridge of the repair (default {DEFAULT_DAMP:g})")
    blocks: bool = option(True, parse=F.boolean, kind="bool",
                          help="also measure removing each residual block (x + f(x) -> x) whole (--no-blocks: not)")
    workers: int | None = option(
        None, parse=F.optional(F.integer(1)), kind="int >= 1", cli=Cli(metavar="N"),
        help="parallel evaluations (local processes, or Ray actors); 1 = in this process (default: up to "
             "min(cores, 4) processes when the sweep is long enough to pay for their start-up; on Ray, the "
             "cluster's CPUs)")
    executor: str = option("local", parse=F.text, kind="local|ray[:ADDRESS]",
                           cli=Cli(metavar="local|ray[:ADDRESS]", text=str),
                           help="where evaluations run: local processes, or Ray (pip install 'onnxsparse[ray]'; "
                                "ray:ADDRESS joins a cluster) (default local)")
    cache: str | None = option(None, parse=F.optional(F.text), kind="path", cli=Cli(metavar="DIR", text=str),
                               help="keep every evaluation in DIR so an interrupted sweep resumes (default: "
                                    "sensitivity/ in the user cache, $XDG_CACHE_HOME/onnxsparse)")
    use_cache: bool = option(True, parse=F.boolean, kind="bool", cli=Cli(negative="--no-cache"),
                             help="do not read or write the evaluation cache")
    seed: int = option(0, parse=F.integer(), kind="int", help="seed for random data and the random criterion")

    def check(self) -> None:
        if self.calib is None:
            raise Bad("calibration data is required: give --calib DATA (.npz, folder or 'random')", key="calib")
        if self.cache is not None and not self.use_cache:
            raise Bad("--no-cache and --cache DIR contradict each other", key="cache")
        from ..executor import parse_executor

        try:
            parse_executor(self.executor)
        except UsageError as exc:
            raise Bad(str(exc), key="executor") from None
