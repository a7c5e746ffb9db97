"""The options every command that runs and times models shares (``validate``, ``bench``).

Data, providers, warm-up, the latency plan, session repeats and the memory probe are declared once
here; :class:`~onnxsparse.options.validate.ValidateOptions` and
:class:`~onnxsparse.options.bench.BenchOptions` extend :class:`RunOptions`, so the two commands'
flags, defaults and checks cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from . import fields as F
from .base import Options
from .fields import Bad, Cli, ParseContext, option

__all__ = ["RunOptions", "TIMING_GROUP", "comma_list"]

#: the argparse group the latency-plan flags are listed under
TIMING_GROUP = "timing (default: interleaved rounds until --budget seconds per model, within --min-runs..--max-runs)"


def comma_list(value: Any, ctx: ParseContext) -> tuple[str, ...]:
    """``cpu,cuda`` or a list; commas split either way."""
    items = F.strings(value, ctx)
    return tuple(p.strip() for item in items for p in item.split(",") if p.strip())


@dataclass(frozen=True, kw_only=True)
class RunOptions(Options):
    """Which data the models run on, where, and how they are timed (no operation of its own)."""

    data: str = option("random", parse=F.data_path(random_ok=True), kind="path",
                       help="an .npz keyed by input name (axis 0 = samples), a folder of them, or 'random' (default)",
                       cli=Cli(text=str))
    shapes: Sequence[tuple[str, tuple[int, ...]]] = option(
        (), key="shape", parse=F.shape_map, kind="mapping",
        help="shape of an input with dynamic dims, for random data (repeatable; recipe default: its top-level shape)",
        cli=Cli(metavar="NAME=D0xD1...", text=str))
    samples: int | None = option(None, parse=F.optional(F.integer(1)), kind="int >= 1",
                                 help="random data: how many samples (default 8 for validate, the largest batch "
                                      "for bench); files: use at most N",
                                 cli=Cli(metavar="N"))
    seed: int = option(0, parse=F.integer(), kind="int", help="seed for random data (default 0)")
    providers: tuple[str, ...] = option(("cpu",), parse=comma_list, kind="list",
                                        help="execution providers, comma-separated (default cpu)",
                                        cli=Cli(metavar="LIST", append=True, text=str))
    warmup: int = option(10, parse=F.integer(0), kind="int >= 0", help="untimed runs per model first (default 10)",
                         cli=Cli(metavar="N"))
    runs: int | None = option(None, parse=F.optional(F.integer(1)), kind="int >= 1",
                              help="exactly N timed runs per model instead of a time budget",
                              cli=Cli(metavar="N", group=TIMING_GROUP))
    budget: float | None = option(None, parse=F.optional(F.number(0)), kind="seconds",
                                  help="keep timing until the interleaved runs took this many seconds per model "
                                       "(default 1)", cli=Cli(metavar="SECONDS", group=TIMING_GROUP))
    min_runs: int | None = option(None, parse=F.optional(F.integer(1)), kind="int >= 1",
                                  help="with the budget: at least N timed runs per model (default 10)",
                                  cli=Cli(metavar="N", group=TIMING_GROUP))
    max_runs: int | None = option(None, parse=F.optional(F.integer(1)), kind="int >= 1",
                                  help="with the budget: at most N timed runs per model (default 100000)",
                                  cli=Cli(metavar="N", group=TIMING_GROUP))
    session_repeats: int = option(3, parse=F.integer(1), kind="int >= 1",
                                  help="create each session N times, interleaved, and report the fastest (default 3)",
                                  cli=Cli(metavar="N"))
    memory: bool = option(True, parse=F.boolean, kind="bool", help="measure peak memory (a child process per model)",
                          cli=Cli(help="skip the peak-memory probe (a child process per model and provider, "
                                       "~0.3 s each)"))

    def check(self) -> None:
        """Providers known, and a latency plan that makes sense."""
        from ..validate.latency import latency_plan
        from ..validate.providers import resolve_providers

        try:
            resolve_providers(",".join(self.providers))
        except UsageError as exc:
            raise Bad(str(exc), key="providers") from None
        try:
            latency_plan(self.runs, self.budget, self.min_runs, self.max_runs)
        except UsageError as exc:
            raise Bad(str(exc), key=str(exc).split()[0].lstrip("-").replace("-", "_")) from None  # "--min-runs ..."

    def shape_map(self) -> dict[str, tuple[int, ...]]:
        return dict(self.shapes)
