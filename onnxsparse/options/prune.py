"""The options of ``prune``, declared once: its command-line flags, recipe keys and API keywords.

``onnxsparse prune``, ``onnxsparse.prune()``, :class:`~onnxsparse.passes.prune.PrunePass` and a
recipe's ``prune`` step all read this dataclass and run
:func:`~onnxsparse.passes.prune.run_prune`, so a default (criterion with data, ``round_to``) or a
cross-key rule exists in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from ..calibration.data import DEFAULT_CALIB_SAMPLES
from ..passes.reconstruct import DEFAULT_DAMP, REPAIRS
from . import fields as F
from .base import Options
from .fields import Bad, Cli, option

__all__ = ["PruneOptions", "criteria"]

_CAL = "calibration (activation-aware criteria and repairs)"
_HEADS = "transformer heads and FFN neurons"
_BUDGET = "accuracy budget (instead of a ratio or a target fraction)"


def criteria() -> tuple[str, ...]:
    """The structured criteria registered now (plugins included)."""
    from ..criteria import available_criteria

    return tuple(available_criteria("structured"))


@dataclass(frozen=True, kw_only=True)
class PruneOptions(Options):
    """Structured pruning: channels (``prune --channels``), attention heads and FFN neurons."""

    kind: ClassVar[str] = "prune"
    help: ClassVar[str] = "structured pruning: channels, attention heads, FFN neurons (a smaller dense model)"
    refuses: ClassVar[Mapping[str, str]] = {
        "quantized": "pruning a quantized model is not supported",
        "sparse": "pruning a sparse-stored model is not supported",
    }

    channels: float | None = option(None, parse=F.optional(F.ratio), kind="ratio", cli=Cli(metavar="RATIO"),
                                    help="fraction of channels removed from every prunable group, in [0, 1)")
    threshold: float | None = option(
        None, parse=F.optional(F.number(0)), kind="number >= 0", cli=Cli(metavar="T"),
        help="instead of a ratio: remove every unit whose raw criterion score is below T in every prunable group "
             "(after group-lasso training: 1e-8; `inspect` shows the score histogram)")
    target: str | None = option(
        None, parse=F.optional(F.text), kind="METRIC=R", cli=Cli(metavar="METRIC=R", text=str),
        help="instead of ratios: keep fraction R of the original's macs, params or latency (e.g. macs=0.7), with "
             "per-group widths allocated on a loss table measured on calib and the result verified by measuring it "
             "(with max_accuracy_drop: the objective's name)")
    criterion: str | None = option(
        None, parse=F.optional(F.choice(criteria, "criterion")), kind="criterion",
        help="importance criterion (onnxsparse.criteria registry; default l2, wanda with calibration data)")
    global_ranking: bool = option(False, key="global", parse=F.boolean, kind="bool",
                                  help="rank channels across groups (scores normalised per group) instead of the "
                                       "same ratio everywhere")
    round_to: int | str = option(
        "auto", parse=F.integer_or("auto", 1), kind="int >= 1 or auto", cli=Cli(metavar="N|auto"),
        help="keep channel / FFN widths multiples of N; auto: multiples of this CPU's blocked Conv kernel width "
             "(16 with AVX-512, 8 with AVX2) for the groups that width already")
    min_keep: int = option(1, parse=F.integer(1), kind="int >= 1", cli=Cli(metavar="N"),
                           help="channels every group keeps")
    exclude: tuple[str, ...] = option((), parse=F.strings, kind="list", cli=Cli(metavar="NODE"),
                                      help="node / block names or fnmatch patterns whose outputs keep every channel")
    seed: int = option(0, parse=F.integer(), kind="int", help="seed of the random criterion and of random data")
    shape: tuple[str, ...] = option(
        (), parse=F.strings, kind="list", cli=Cli(metavar="NAME=D0xD1x...", append=True, text=str),
        help="input shape for the MAC count and random data (symbolic dims count as 1 otherwise); in a recipe "
             "the top-level shape applies when unset")
    heads: float = option(0.0, parse=F.ratio, kind="ratio", cli=Cli(metavar="RATIO", group=_HEADS),
                          help="fraction of attention heads (KV groups for grouped-query attention) removed per "
                               "block; at least one is kept")
    ffn: float | None = option(None, parse=F.optional(F.ratio), kind="ratio", cli=Cli(metavar="RATIO", group=_HEADS),
                               help="fraction of FFN intermediate neurons removed per block (default: channels)")
    allow_signature_change: bool = option(False, parse=F.boolean, kind="bool", cli=Cli(group=_HEADS),
                                          help="prune heads whose KV cache is a graph input/output (changes those "
                                               "shapes)")
    calib: str | None = option(
        None, parse=F.optional(F.data_path(random_ok=True)), kind="path or random", cli=Cli(metavar="DATA", group=_CAL),
        help="calibration data: .npz keyed by input name (axis 0 = samples), a folder of them, or 'random' "
             "(in a recipe the top-level calib applies when unset)")
    calib_samples: int = option(DEFAULT_CALIB_SAMPLES, parse=F.integer(1), kind="int >= 1",
                                cli=Cli(metavar="N", group=_CAL), help="calibration samples used")
    calib_batch: int = option(32, parse=F.integer(1), kind="int >= 1", cli=Cli(metavar="N", group=_CAL),
                              help="calibration samples per onnxruntime run")
    repair: str | None = option(
        None, parse=F.optional(F.choice(lambda: REPAIRS, "repair")), kind="none|bias|lstsq",
        cli=Cli(group=_CAL, metavar="{" + ",".join(REPAIRS) + "}"),
        help="repair the layers that lost inputs (default lstsq with calibration data, none without)")
    sequential: bool | None = option(
        None, parse=F.optional(F.boolean), kind="bool", cli=Cli(negative="--one-shot", group=_CAL),
        help="repair layer by layer on the already-repaired model's activations (default; false / --one-shot: "
             "every layer from the original activations, faster, less accurate)")
    dead: bool = option(False, parse=F.boolean, kind="bool", cli=Cli(group=_CAL),
                        help="first remove the units that are dead (always 0) or constant on the calibration data, "
                             "exactly: constants are folded into the consumers' biases (docs/activations.md); "
                             "channels then applies to what remains")
    damp: float = option(DEFAULT_DAMP, parse=F.number(0), kind="number >= 0", cli=Cli(metavar="F", group=_CAL),
                         help="lstsq ridge: lambda = F * mean(diag(X X^T))")
    max_accuracy_drop: float | None = option(
        None, parse=F.optional(F.number(0)), kind="number >= 0", cli=Cli(metavar="X", group=_BUDGET),
        help="prune as far as the task metric on data/labels drops by at most X (e.g. 0.01): bisects target "
             "OBJECTIVE=f (OBJECTIVE from target: macs|params|latency, default macs) and checks the winner on a "
             "held-out part of the data")
    data: str | None = option(None, parse=F.optional(F.data_path(random_ok=False)), kind="path",
                              cli=Cli(metavar="DATA", group=_BUDGET),
                              help="labelled data for max_accuracy_drop (.npz, folder)")
    labels: str | None = option(None, parse=F.optional(F.data_path(random_ok=False)), kind="path",
                                cli=Cli(metavar="LABELS", group=_BUDGET),
                                help="labels of data (.npy or .npz), one per sample")
    metric: str = option("top1", parse=F.text, kind="name", cli=Cli(metavar="NAME", group=_BUDGET, text=str),
                         help="task metric of max_accuracy_drop: top1, top5 or module:function")
    label_output: str | None = option(None, parse=F.optional(F.text), kind="name",
                                      cli=Cli(metavar="NAME", group=_BUDGET, text=str),
                                      help="the output the labels score (default: the first)")
    holdout: float = option(0.3, parse=F.ratio, kind="ratio", cli=Cli(metavar="F", group=_BUDGET),
                            help="fraction of data held out from the max_accuracy_drop search to check the winner")

    @property
    def selects(self) -> bool:
        """Whether anything chooses units to remove (a ratio, target, threshold, dead units or a budget)."""
        return bool(self.channels is not None or self.heads or self.ffn or self.target is not None
                    or self.threshold is not None or self.dead or self.max_accuracy_drop is not None)

    def check(self) -> None:
        if self.max_accuracy_drop is not None:
            self._check_budget()
            return
        if self.data is not None or self.labels is not None:
            raise Bad("--data/--labels are for --max-accuracy-drop (calibration data is --calib)",
                      key="data" if self.data is not None else "labels")
        if self.target is not None:
            from ..errors import UsageError
            from ..passes.prune_target import parse_target

            try:
                parse_target(self.target)
            except UsageError as exc:
                raise Bad(str(exc), key="target") from None
            given = [name for name, value in (("--channels", self.channels), ("--heads", self.heads or None),
                                              ("--ffn", self.ffn), ("--global", self.global_ranking or None))
                     if value is not None]
            if given:
                raise Bad(f"--target allocates the per-group ratios itself: drop {', '.join(given)}", key="target")
        if self.threshold is not None and (self.channels or self.heads or self.ffn or self.target is not None):
            raise Bad("--threshold replaces the ratios: give --threshold or --channels/--heads/--ffn/--target, "
                      "not both", key="threshold")
        if not self.selects:
            raise Bad("nothing to prune: set --channels, --heads or --ffn (or --target, --threshold, or --dead with "
                      "calibration data)")

    def _check_budget(self) -> None:
        if self.data is None or self.labels is None:
            raise Bad("--max-accuracy-drop needs labelled data: give --data DATA --labels LABELS",
                      key="max_accuracy_drop")
        if self.target is not None and "=" in self.target:
            raise Bad("with --max-accuracy-drop, --target names what to minimise (macs, params or latency), "
                      "not a fraction", key="target")
        given = [name for name, value in (("--channels", self.channels), ("--heads", self.heads or None),
                                          ("--ffn", self.ffn), ("--threshold", self.threshold)) if value is not None]
        if given:
            raise Bad(f"--max-accuracy-drop chooses how much to prune itself: drop {', '.join(given)}",
                      key="max_accuracy_drop")
