"""The options of ``validate``: one frozen dataclass for the command and the recipe step.

Recipe key = flag without dashes; the gates (``min_cosine``, ``max_latency_ratio``, ...) come from the
threshold registry (:data:`onnxsparse.validate.THRESHOLDS`), so a registered gate is a recipe key and
a flag at once.  :meth:`ValidateOptions.validate_kwargs` gives the keywords of
:func:`onnxsparse.validate.validate`, which also takes objects only Python can hand over (arrays of
labels, :class:`~onnxsparse.validate.Metric` objects, in-memory data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import UsageError
from . import fields as F
from .base import signature_extras
from .fields import Bad, Cli, FieldSpec, ParseContext, option
from .run import RunOptions, comma_list

__all__ = ["ValidateOptions"]

_GATES = "thresholds (exit 1 when one is not met)"


def _thresholds() -> dict[str, Any]:
    from ..validate.thresholds import THRESHOLDS

    return THRESHOLDS


def _noise(value: Any, ctx: ParseContext) -> float:
    """A fraction of each float input's std: finite and > 0 (leave it out for none)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise Bad(f"--noise must be a finite number > 0 (a fraction of each input's std), got {value!r}; "
                  "leave it out for none")
    return float(value)



@dataclass(frozen=True, kw_only=True)
class ValidateOptions(RunOptions):
    """Compare a candidate with its reference; failing gates stop a recipe (exit 1)."""

    kind: ClassVar[str] = "validate"
    help: ClassVar[str] = "compare with the input model (fidelity, accuracy, latency, size); gates stop the run"
    transforms: ClassVar[bool] = False

    threads: int | None = option(None, parse=F.optional(F.integer(1)), kind="int >= 1",
                                 help="intra-op threads (default: onnxruntime's choice)", cli=Cli(metavar="N"))
    batch: int | None = option(None, parse=F.optional(F.integer(1)), kind="int >= 1",
                               help="samples per run, for outputs and latency (default: the model's fixed batch or 1)",
                               cli=Cli(metavar="N"))
    labels: str | None = option(None, parse=F.optional(F.data_path(random_ok=False)), kind="path",
                                help="one label per data sample: .npy of ints, or .npz with one array",
                                cli=Cli(metavar="FILE", text=str))
    metric: tuple[str, ...] = option((), parse=comma_list, kind="list",
                                     help="task metric(s) with labels (default top1; comma-separated or repeatable)",
                                     cli=Cli(metavar="NAME", append=True, text=str))
    label_output: str | None = option(None, parse=F.optional(F.text), kind="text",
                                      help="reference output the metrics score (default: the first output)",
                                      cli=Cli(metavar="NAME", text=str))
    output_map: tuple[tuple[str, str], ...] = option(
        (), parse=F.str_map, kind="mapping",
        help="pair a reference output with a differently named candidate output (REF=CAND, repeatable)",
        cli=Cli(metavar="REF=CAND", text=str))
    noise: float | None = option(
        None, parse=F.optional(_noise), kind="number > 0",
        help="also run both models on inputs with Gaussian noise of this many stds of each float input "
             "(fixed seed) and report fidelity and accuracy under noise beside the clean numbers",
        cli=Cli(metavar="SIGMA"))
    require_providers: bool = option(
        False, parse=F.boolean, kind="bool",
        help="fail (exit 1) when a requested provider is unavailable instead of only reporting it")
    #: the gates set (``{name: limit}`` as pairs); each is a key / flag of its own (:meth:`field_specs`)
    gates: tuple[tuple[str, float], ...] = ()

    @classmethod
    def field_specs(cls) -> tuple[FieldSpec, ...]:
        """The declared fields, then one key / flag per registered gate (read when asked, so plugins count)."""
        gates = tuple(
            FieldSpec(name, f"gates.{name}", F.optional(F.number()), t.help, "gate",
                      Cli(flag=t.flag, metavar="X", group=_GATES))
            for name, t in _thresholds().items()
        )
        return super().field_specs() + gates

    @classmethod
    def passthrough_params(cls) -> dict[str, str]:
        from ..validate import validate

        covered = {"reference", "candidate", "data", "labels", "metric", "label_output", "providers", "threads",
                   "warmup", "runs", "budget", "min_runs", "max_runs", "batch", "shape", "samples", "seed",
                   "output_map", "memory", "session_repeats", "thresholds", "require_providers", "progress", "noise"}
        return signature_extras(validate, covered)

    def check(self) -> None:
        from ..validate.metrics import resolve_metric
        from ..validate.thresholds import check_threshold_inputs

        if self.labels is not None and self.data == "random":
            raise Bad("--labels needs --data (labels of random inputs mean nothing)", key="labels")
        if self.metric and self.labels is None:
            raise Bad("--metric needs --labels", key="metric")
        for name in self.metric:
            try:
                resolve_metric(name)
            except UsageError as exc:
                raise Bad(str(exc), key="metric") from None
        super().check()
        for name, _ in self.gates:
            try:
                check_threshold_inputs({name: dict(self.gates)[name]}, labels=self.labels is not None,
                                       memory=self.memory)
            except UsageError as exc:
                raise Bad(str(exc), key=name) from None

    def validate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`onnxsparse.validate.validate` (without the models)."""
        return dict(
            data=self.data, labels=self.labels, metric=list(self.metric) or None, label_output=self.label_output,
            providers=",".join(self.providers), threads=self.threads, warmup=self.warmup, runs=self.runs,
            budget=self.budget, min_runs=self.min_runs, max_runs=self.max_runs, shape=self.shape_map(),
            batch=self.batch, samples=self.samples, seed=self.seed, output_map=dict(self.output_map) or None,
            memory=self.memory, session_repeats=self.session_repeats, thresholds=dict(self.gates),
            require_providers=self.require_providers, noise=self.noise, **self.extra_kwargs(),
        )
