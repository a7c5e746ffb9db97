"""Recipes as typed, frozen dataclasses, validated completely before any work.

A recipe is a list of steps (``prune``, ``sparsify``, ``quantize``, ``densify``,
``validate``), each a frozen dataclass whose keys are the matching command's
long options (``--round-to`` -> ``round_to``; negative flags become positive
booleans: ``--no-memory`` -> ``memory: false``; repeatable options take lists).
Strings naming registered things (criteria, patterns, formats, quantization
modes, metrics, providers, gates) are checked against the live registries,
like optimum's ``QuantizationConfig`` converts strings to enums, so a plugin
that registers a criterion can use it in a recipe.  Every problem is one
:class:`RecipeError` line naming the recipe, the step index and the key:
``recipe.yaml: steps.1.prune.chanels: unknown key (did you mean 'channels'?)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from ..errors import UsageError
from ..options import fields as F
from ..options.base import Options, OptionsError, signature_extras
from ..options.fields import Bad, FieldSpec, ParseContext
from ..options.prune import PruneOptions

__all__ = [
    "RecipeError",
    "Recipe",
    "Step",
    "PruneStep",
    "SparsifyStep",
    "QuantizeStep",
    "DensifyStep",
    "ValidateStep",
    "STEP_TYPES",
    "DEFAULT_STEPS",
    "register_step",
    "parse_recipe",
    "check_order",
    "TOP_LEVEL_KEYS",
]


class RecipeError(OptionsError):
    """A recipe or ``--set`` override that cannot run (exit code 2); the message names where."""


#: Step kinds by name (``register_step``); the defaults, in the order help lists them:
DEFAULT_STEPS: tuple[str, ...] = ("prune", "sparsify", "quantize", "densify", "validate")
STEP_TYPES: dict[str, type[Step]] = {}

#: A recipe step is an operation's options (:class:`onnxsparse.options.Options`).
Step = Options


def register_step(cls: type[Step]) -> type[Step]:
    """Class decorator: make a step kind usable in recipes (the runner needs an executor too)."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} has no kind")
    STEP_TYPES[cls.kind] = cls
    return cls


#: The prune step is the prune command's options (one declaration: :mod:`onnxsparse.options.prune`).
register_step(PruneOptions)
PruneStep = PruneOptions


@register_step
@dataclass(frozen=True, kw_only=True)
class SparsifyStep(Step):
    """Zero weights to a pattern (optional) and store them compactly (``onnxsparse sparsify``)."""

    kind: ClassVar[str] = "sparsify"
    help: ClassVar[str] = "zero weights to a pattern and store them sparse (smaller file, same speed)"
    refuses: ClassVar[Mapping[str, str]] = {
        "sparse": "the model is already stored sparse; put all sparsify options in one step",
    }
    sets: ClassVar[frozenset[str]] = frozenset({"sparse"})

    sparsity: float | None = None
    pattern: str = "unstructured"
    criterion: str = "magnitude"
    format: str = "auto"
    global_scope: bool = False
    allocate: str = "auto"
    owl_lambda: float | None = None
    owl_threshold: float | None = None
    ratio: tuple[tuple[str, float], ...] = ()
    exclude: tuple[str, ...] = ()
    min_size: int | None = None
    block: tuple[int, int] | None = None
    decoder: tuple[tuple[str, str], ...] = ()
    raise_opset: bool = True
    normalize: bool = True

    @classmethod
    def field_specs(cls) -> tuple[FieldSpec, ...]:
        def criteria() -> tuple[str, ...]:
            from ..criteria import available_criteria

            return available_criteria("elementwise")

        def formats() -> tuple[str, ...]:
            from ..formats import format_choices

            return format_choices()

        def allocators() -> tuple[str, ...]:
            from ..sparsity.allocate import ALLOCATORS, AUTO

            return (AUTO, *ALLOCATORS)

        return (
            FieldSpec("sparsity", "sparsity", F.optional(F.ratio), "fraction of weights zeroed per tensor (omit: lossless re-encode)", "ratio"),
            FieldSpec("pattern", "pattern", F.text, "unstructured, N:M (quote it: \"2:4\") or block:RxC", "pattern"),
            FieldSpec("criterion", "criterion", F.choice(criteria, "sparsity criterion"), "how weights are scored", "criterion"),
            FieldSpec("format", "format", F.choice(formats, "storage format"), "storage format (auto: smallest per tensor)", "format"),
            FieldSpec("global", "global_scope", F.boolean, "one threshold across all tensors", "bool"),
            FieldSpec("allocate", "allocate", F.choice(allocators, "allocation"), "spread sparsity over tensors (its parameter-weighted average): auto (sensitivity with calib data, else uniform), uniform, owl, sensitivity", "allocation"),
            FieldSpec("owl_lambda", "owl_lambda", F.optional(F.number(0.0)), "owl: ratios span 2x this around the target (default 0.08)", "number >= 0"),
            FieldSpec("owl_threshold", "owl_threshold", F.optional(F.number(0.0)), "owl: outliers score above this x the tensor mean (default 5)", "number > 0"),
            FieldSpec("ratio", "ratio", F.ratio_map, "per-layer sparsity {glob: ratio}, first match wins", "mapping"),
            FieldSpec("exclude", "exclude", F.strings, "tensors / nodes left dense and unpruned (globs)", "list"),
            FieldSpec("min_size", "min_size", F.optional(F.integer(0)), "tensors with fewer elements stay dense (default 4096)", "int >= 0"),
            FieldSpec("block", "block", F.optional(F.block_shape), "BSR block shape RxC (default: per tensor)", "RxC"),
            FieldSpec("decoder", "decoder", F.str_map, "decode-graph variant per format, e.g. {bitmask: gather}", "mapping"),
            FieldSpec("raise_opset", "raise_opset", F.boolean, "allow raising the opset for a decode graph", "bool"),
            FieldSpec("normalize", "normalize", F.boolean, "lift Constant weights first", "bool"),
        )

    @classmethod
    def passthrough_params(cls) -> dict[str, str]:
        from ..passes.sparsify import SparsifyConfig

        covered = {"sparsity", "pattern", "criterion", "format", "global_scope", "ratios", "exclude", "min_size",
                   "block", "decoders", "raise_opset", "normalize", "stats", "allocate", "owl_lambda",
                   "owl_threshold"}
        return {f.name: str(f.type) for f in fields(SparsifyConfig) if f.name not in covered}

    @property
    def calib(self) -> Any:
        """This step's own calibration data (a pass-through key of the sparsify config)."""
        return dict(self.extra).get("calib")

    @property
    def needs_calibration(self) -> bool:
        """An activation-aware criterion (wanda) scores the weights, or ``allocate: sensitivity`` measures
        output errors: calibration data is read."""
        from ..criteria import get_criterion

        return get_criterion(self.criterion).requires_data or self.allocate == "sensitivity"

    def to_config(self):
        """The :class:`onnxsparse.passes.sparsify.SparsifyConfig` this step runs."""
        from ..passes.sparsify import SparsifyConfig

        kwargs: dict[str, Any] = dict(
            sparsity=self.sparsity, pattern=self.pattern, criterion=self.criterion, format=self.format,
            global_scope=self.global_scope, allocate=self.allocate, ratios=list(self.ratio), exclude=list(self.exclude), block=self.block,
            decoders=dict(self.decoder), raise_opset=self.raise_opset, normalize=self.normalize,
        )
        if self.min_size is not None:
            kwargs["min_size"] = self.min_size
        for key in ("owl_lambda", "owl_threshold"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        kwargs.update(self.extra_kwargs())
        return SparsifyConfig(**kwargs)

    def check(self) -> None:
        from ..sparsity import parse_pattern

        try:
            parse_pattern(self.pattern)
        except UsageError as exc:
            raise Bad(str(exc), key="pattern") from None
        self.to_config().resolved(need_data=False)  # the recipe's calib is checked with the data files


@register_step
@dataclass(frozen=True, kw_only=True)
class QuantizeStep(Step):
    """int8 dynamic/static or int4 weight-only quantization (``onnxsparse quantize``)."""

    kind: ClassVar[str] = "quantize"
    help: ClassVar[str] = "int8 dynamic/static or int4 weight-only quantization, pruned zeros kept exact"
    refuses: ClassVar[Mapping[str, str]] = {
        "quantized": "the model is already quantized",
        "sparse": "quantizing folds the sparse storage back into dense weights (sparsify after quantize "
                  "stores the int8 weights sparse)",
    }
    sets: ClassVar[frozenset[str]] = frozenset({"quantized"})

    mode: str = "dynamic"
    format: str | None = None
    per_channel: bool | None = None
    reduce_range: bool | None = None
    calibrate: str = "minmax"
    calib_samples: int | None = None
    activation_type: str | None = None
    weight_type: str = "int8"
    symmetric: bool = True
    exclude: tuple[str, ...] = ()
    min_weight_elements: int = 0
    block_size: int = 32
    accuracy_level: int | None = None
    preprocess: bool = True
    calib: str | None = None
    check_fp32: bool = True

    @classmethod
    def field_specs(cls) -> tuple[FieldSpec, ...]:
        def table(name: str) -> Callable[[], tuple[str, ...]]:
            def names() -> tuple[str, ...]:
                from ..quantize import config

                return tuple(getattr(config, name))

            return names

        def modes() -> tuple[str, ...]:
            from ..quantize import mode_names

            return mode_names()

        from ..quantize.config import ACCURACY_LEVELS, BLOCK_SIZES  # plain tuples, cheap module

        return (
            FieldSpec("mode", "mode", F.choice(modes, "quantization mode"), "dynamic, static (needs calib) or int4", "mode"),
            FieldSpec("format", "format", F.optional(F.choice(table("FORMATS"), "format")), "qdq or qoperator (default per mode)", "choice"),
            FieldSpec("per_channel", "per_channel", F.optional(F.boolean), "per-channel weight scales (default: on)", "bool"),
            FieldSpec("reduce_range", "reduce_range", F.optional(F.boolean), "7-bit weights (default: auto from the CPU)", "bool"),
            FieldSpec("calibrate", "calibrate", F.choice(table("CALIBRATION_METHODS"), "calibration method"), "minmax, entropy or percentile", "choice"),
            FieldSpec("calib_samples", "calib_samples", F.optional(F.integer(1)), "calibration samples used (default 256)", "int >= 1"),
            FieldSpec("activation_type", "activation_type", F.optional(F.choice(table("QUANT_TYPES"), "activation type")), "uint8 or int8 (static)", "choice"),
            FieldSpec("weight_type", "weight_type", F.choice(table("QUANT_TYPES"), "weight type"), "int8 or uint8", "choice"),
            FieldSpec("symmetric", "symmetric", F.boolean, "symmetric weights (pruned zeros stay code 0)", "bool"),
            FieldSpec("exclude", "exclude", F.strings, "nodes left in float (names or globs)", "list"),
            FieldSpec("min_weight_elements", "min_weight_elements", F.integer(0), "smaller weights stay float", "int >= 0"),
            FieldSpec("block_size", "block_size", F.int_choice(BLOCK_SIZES), "int4 block size", "int"),
            FieldSpec("accuracy_level", "accuracy_level", F.optional(F.int_choice(ACCURACY_LEVELS)), "int4 MatMulNBits accuracy level", "int"),
            FieldSpec("preprocess", "preprocess", F.boolean, "run onnxruntime's pre-processing", "bool"),
            FieldSpec("calib", "calib", F.optional(F.data_path(random_ok=True)), "calibration data (default: the recipe's calib)", "path"),
            FieldSpec("check", "check_fp32", F.boolean, "compare with fp32 on the calibration data", "bool"),
        )

    @classmethod
    def passthrough_params(cls) -> dict[str, str]:
        from ..quantize import QuantizeConfig, quantize

        covered = {"mode", "format", "per_channel", "reduce_range", "calibrate", "calib_samples", "activation_type",
                   "weight_type", "weight_symmetric", "exclude", "min_weight_elements", "block_size",
                   "accuracy_level", "preprocess"}
        config_extra = {f.name: str(f.type) for f in fields(QuantizeConfig) if f.name not in covered}
        call_covered = {"model", "output", "mode", "calib", "shapes", "config", "force", "check", "cpu", "progress"}
        return config_extra | signature_extras(quantize, call_covered)

    def _config_extra(self) -> dict[str, Any]:
        from ..quantize import QuantizeConfig

        names = {f.name for f in fields(QuantizeConfig)}
        return {k: v for k, v in self.extra if k in names}

    def call_kwargs(self) -> dict[str, Any]:
        """Pass-through keyword arguments of :func:`onnxsparse.quantize.quantize` itself."""
        config_keys = set(self._config_extra())
        return {k: v for k, v in self.extra if k not in config_keys}

    def to_config(self):
        """The validated :class:`onnxsparse.quantize.QuantizeConfig` this step runs."""
        from ..quantize import QuantizeConfig

        return QuantizeConfig(
            mode=self.mode, format=self.format, per_channel=self.per_channel, reduce_range=self.reduce_range,
            calibrate=self.calibrate, calib_samples=self.calib_samples, activation_type=self.activation_type,
            weight_type=self.weight_type, weight_symmetric=self.symmetric, exclude=self.exclude,
            min_weight_elements=self.min_weight_elements, block_size=self.block_size,
            accuracy_level=self.accuracy_level, preprocess=self.preprocess, **self._config_extra(),
        )

    @property
    def needs_calibration(self) -> bool:
        from ..quantize import get_mode

        return bool(get_mode(self.mode).needs_calibration)

    def check(self) -> None:
        self.to_config()


@register_step
@dataclass(frozen=True, kw_only=True)
class DensifyStep(Step):
    """Turn onnxsparse sparse storage back into dense initializers (``onnxsparse densify``)."""

    kind: ClassVar[str] = "densify"
    help: ClassVar[str] = "decode sparse-stored weights back to dense (e.g. before pruning a sparse input)"
    clears: ClassVar[frozenset[str]] = frozenset({"sparse"})


def _thresholds() -> dict[str, Any]:
    from ..validate.thresholds import THRESHOLDS

    return THRESHOLDS


def _providers(value: Any, ctx: ParseContext) -> tuple[str, ...]:
    items = F.strings(value, ctx)
    return tuple(p.strip() for item in items for p in item.split(",") if p.strip())


@register_step
@dataclass(frozen=True, kw_only=True)
class ValidateStep(Step):
    """Compare the model so far with the recipe's input model; failing gates stop the run (exit 1)."""

    kind: ClassVar[str] = "validate"
    help: ClassVar[str] = "compare with the input model (fidelity, accuracy, latency, size); gates stop the run"
    transforms: ClassVar[bool] = False

    data: str = "random"
    labels: str | None = None
    metric: tuple[str, ...] = ()
    label_output: str | None = None
    output_map: tuple[tuple[str, str], ...] = ()
    providers: tuple[str, ...] = ("cpu",)
    require_providers: bool = False
    threads: int | None = None
    batch: int | None = None
    samples: int | None = None
    seed: int = 0
    warmup: int = 10
    runs: int | None = None
    budget: float | None = None
    min_runs: int | None = None
    max_runs: int | None = None
    session_repeats: int = 3
    memory: bool = True
    noise: float | None = None
    gates: tuple[tuple[str, float], ...] = ()

    @classmethod
    def field_specs(cls) -> tuple[FieldSpec, ...]:
        base = (
            FieldSpec("data", "data", F.data_path(random_ok=True), ".npz keyed by input name, a folder of them, or random", "path"),
            FieldSpec("labels", "labels", F.optional(F.data_path(random_ok=False)), "one label per data sample (.npy)", "path"),
            FieldSpec("metric", "metric", F.strings, "task metrics with labels (default top1)", "list"),
            FieldSpec("label_output", "label_output", F.optional(F.text), "output the metrics score (default: first)", "text"),
            FieldSpec("output_map", "output_map", F.str_map, "{reference output: candidate output} pairs", "mapping"),
            FieldSpec("providers", "providers", _providers, "execution providers (default cpu)", "list"),
            FieldSpec("require_providers", "require_providers", F.boolean, "an unavailable provider fails the gate", "bool"),
            FieldSpec("threads", "threads", F.optional(F.integer(1)), "intra-op threads (default: onnxruntime's)", "int >= 1"),
            FieldSpec("batch", "batch", F.optional(F.integer(1)), "samples per run", "int >= 1"),
            FieldSpec("samples", "samples", F.optional(F.integer(1)), "samples used (random: generated)", "int >= 1"),
            FieldSpec("seed", "seed", F.integer(), "seed of random data", "int"),
            FieldSpec("warmup", "warmup", F.integer(0), "untimed runs per model", "int >= 0"),
            FieldSpec("runs", "runs", F.optional(F.integer(1)),
                      "exactly this many timed runs per model instead of a time budget", "int >= 1"),
            FieldSpec("budget", "budget", F.optional(F.number(0)),
                      "without runs: time the models for this many seconds per model (default 1)", "seconds"),
            FieldSpec("min_runs", "min_runs", F.optional(F.integer(1)),
                      "without runs: at least this many timed runs per model (default 10)", "int >= 1"),
            FieldSpec("max_runs", "max_runs", F.optional(F.integer(1)),
                      "without runs: at most this many timed runs per model (default 100000)", "int >= 1"),
            FieldSpec("session_repeats", "session_repeats", F.integer(1), "session creations per model", "int >= 1"),
            FieldSpec("memory", "memory", F.boolean, "measure peak memory (a child process per model)", "bool"),
            FieldSpec("noise", "noise", F.optional(F.number(0)),
                      "also compare under Gaussian input noise of this many stds of each float input", "number > 0"),
        )
        gates = tuple(
            FieldSpec(name, f"gates.{name}", F.optional(F.number()), t.help, "gate")
            for name, t in _thresholds().items()
        )
        return base + gates

    @classmethod
    def passthrough_params(cls) -> dict[str, str]:
        from ..validate import validate

        covered = {"reference", "candidate", "data", "labels", "metrics", "label_output", "providers", "threads",
                   "warmup", "runs", "budget", "min_runs", "max_runs", "batch", "shapes", "samples", "seed",
                   "output_map", "memory", "session_repeats", "thresholds", "require_providers", "progress", "noise"}
        return signature_extras(validate, covered)

    def check(self) -> None:
        from ..validate.latency import latency_plan
        from ..validate.metrics import resolve_metric
        from ..validate.providers import resolve_providers
        from ..validate.thresholds import check_threshold_inputs

        if self.labels is not None and self.data == "random":
            raise Bad("labels need data (labels of random inputs mean nothing)", key="labels")
        if self.metric and self.labels is None:
            raise Bad("metrics need labels", key="metric")
        if self.noise == 0:
            raise Bad("noise must be > 0 (a fraction of each input's std); leave it out for none", key="noise")
        for name in self.metric:
            try:
                resolve_metric(name)
            except UsageError as exc:
                raise Bad(str(exc), key="metric") from None
        try:
            resolve_providers(",".join(self.providers))
        except UsageError as exc:
            raise Bad(str(exc), key="providers") from None
        try:
            latency_plan(self.runs, self.budget, self.min_runs, self.max_runs)
        except UsageError as exc:
            raise Bad(str(exc), key=str(exc).split()[0].lstrip("-").replace("-", "_")) from None  # "--min-runs ..."
        for name, _ in self.gates:
            try:
                check_threshold_inputs({name: dict(self.gates)[name]}, labels=self.labels is not None,
                                       memory=self.memory)
            except UsageError as exc:
                raise Bad(str(exc), key=name) from None

    def validate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`onnxsparse.validate.validate` (without models and shapes)."""
        return dict(
            data=self.data, labels=self.labels, metrics=list(self.metric) or None, label_output=self.label_output,
            providers=",".join(self.providers), threads=self.threads, warmup=self.warmup, runs=self.runs,
            budget=self.budget, min_runs=self.min_runs, max_runs=self.max_runs,
            batch=self.batch, samples=self.samples, seed=self.seed, output_map=dict(self.output_map) or None,
            memory=self.memory, session_repeats=self.session_repeats, thresholds=dict(self.gates),
            require_providers=self.require_providers, noise=self.noise, **self.extra_kwargs(),
        )


# ------------------------------------------------------------------------------------------ recipe


@dataclass(frozen=True)
class Recipe:
    """A validated pipeline; build it with :func:`onnxsparse.recipe.load_recipe`."""

    name: str
    steps: tuple[Step, ...]
    description: str = ""
    #: shared data (path or ``random``) for steps that take calibration data
    calib: str | None = None
    #: input shapes (``{"input": (1, 3, 224, 224)}``) for MAC counts, random data and checks
    shape: tuple[tuple[str, tuple[int, ...]], ...] = ()
    #: where it came from (a path, ``preset:NAME`` or ``<dict>``), for messages
    source: str = "<recipe>"
    #: non-fatal remarks found while validating (e.g. no validate step)
    notes: tuple[str, ...] = ()

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self.shape)

    def where(self, index: int) -> str:
        return f"steps.{index}.{self.steps[index].kind}"

    def to_dict(self, *, full: bool = False) -> dict[str, Any]:
        """Plain recipe data; ``load_recipe(recipe.to_dict())`` gives an equal recipe."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        if self.calib is not None:
            out["calib"] = self.calib
        if self.shape:
            out["shape"] = {k: list(v) for k, v in self.shape}
        out["steps"] = [{s.kind: s.options(full=full)} for s in self.steps]
        return out


#: Top-level keys of a recipe file.
TOP_LEVEL_KEYS: tuple[str, ...] = ("name", "description", "calib", "shape", "steps")


def _shape_map(value: Any, ctx: ParseContext) -> tuple[tuple[str, tuple[int, ...]], ...]:
    if not isinstance(value, Mapping):
        raise Bad("expected a mapping {input name: [dims]}")
    out = []
    for name, item in value.items():
        if not isinstance(name, str):
            raise Bad(f"input names must be text, got {name!r}")
        try:
            out.append((name, F.dims(item, ctx)))
        except Bad as exc:
            raise Bad(f"{name}: {exc}") from None
    return tuple(out)


def _step_entry(item: Any, where: str) -> tuple[str, Mapping[str, Any]]:
    if isinstance(item, str):
        return item, {}
    if not isinstance(item, Mapping) or len(item) != 1:
        raise RecipeError(f"{where}: a step is one mapping {{kind: {{options}}}}, e.g. '- prune: {{channels: 0.3}}'")
    kind, options = next(iter(item.items()))
    if options is None:
        options = {}
    if not isinstance(kind, str):
        raise RecipeError(f"{where}: step kind must be text, got {kind!r}")
    if not isinstance(options, Mapping):
        raise RecipeError(f"{where}.{kind}: options must be a mapping, got {options!r}")
    return kind, options


def parse_recipe(data: Any, *, source: str = "<recipe>", bases: Sequence[Path] = ()) -> Recipe:
    """Validate plain recipe data (already read from YAML/JSON) into a :class:`Recipe`."""
    ctx = ParseContext(tuple(Path(b) for b in bases))
    if not isinstance(data, Mapping):
        raise RecipeError(f"{source}: a recipe is a mapping with 'steps' (and optional {', '.join(TOP_LEVEL_KEYS[:-1])})")
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            hint = F.did_you_mean(str(key), TOP_LEVEL_KEYS) or f" (keys: {', '.join(TOP_LEVEL_KEYS)})"
            raise RecipeError(f"{source}: {key}: unknown key{hint}")

    def top(key: str, parser: F.Parser, default: Any) -> Any:
        value = data.get(key)
        if value is None:
            return default
        try:
            return parser(value, ctx)
        except Bad as exc:
            raise RecipeError(f"{source}: {key}: {exc}") from None

    if source.startswith("preset:"):
        default_name = source.removeprefix("preset:")
    elif source.startswith("<"):
        default_name = "recipe"
    else:
        default_name = Path(source).stem
    name = top("name", F.text, default_name)
    description = top("description", F.text, "")
    calib = top("calib", F.data_path(random_ok=True), None)
    shape = top("shape", _shape_map, ())
    raw_steps = data.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise RecipeError(f"{source}: steps: a recipe needs a non-empty list of steps "
                          f"({', '.join(STEP_TYPES)})")
    steps: list[Step] = []
    for index, item in enumerate(raw_steps):
        kind, options = _step_entry(item, f"{source}: steps.{index}")
        cls = STEP_TYPES.get(kind)
        if cls is None:
            raise RecipeError(f"{source}: steps.{index}.{kind}: unknown step{F.did_you_mean(kind, STEP_TYPES)}; "
                              f"steps are {', '.join(STEP_TYPES)}")
        steps.append(cls.from_mapping(options, ctx, f"{source}: steps.{index}.{kind}", RecipeError))
    recipe = Recipe(name=name, steps=tuple(steps), description=description, calib=calib, shape=shape, source=source)
    notes = check_order(recipe)
    _check_calibration(recipe)
    return replace(recipe, notes=tuple(notes))


def _check_calibration(recipe: Recipe) -> None:
    """Steps that need data get it: static quantization, data-driven pruning criteria."""
    from ..criteria import get_criterion

    for index, step in enumerate(recipe.steps):
        if isinstance(step, PruneStep) and (step.channels or step.heads or step.ffn) and step.criterion:
            if getattr(get_criterion(step.criterion), "requires_data", False) and step.calib is None and (
                    recipe.calib is None):
                raise RecipeError(
                    f"{recipe.source}: {recipe.where(index)}.criterion: criterion {step.criterion!r} needs "
                    "calibration data: set calib at the top of the recipe or in this step"
                )
        if isinstance(step, QuantizeStep) and step.needs_calibration and step.calib is None and recipe.calib is None:
            raise RecipeError(
                f"{recipe.source}: {recipe.where(index)}.calib: {step.mode} quantization needs calibration data: "
                "set calib in this step or at the top of the recipe (or --set calib=DATA)"
            )


def check_order(recipe: Recipe, initial: Mapping[str, str] | None = None) -> list[str]:
    """Raise on step orders that cannot work; return notes on orders that work but gain little.

    ``initial`` maps states of the input model (``quantized``, ``sparse``) to a description, when known.
    """
    state: dict[str, str] = dict(initial or {})
    notes: list[str] = []
    transformed = False
    quant_mode: str | None = None
    for index, step in enumerate(recipe.steps):
        where = f"{recipe.source}: {recipe.where(index)}"
        for name, reason in step.refuses.items():
            if name not in state:
                continue
            origin = state[name]
            if origin.startswith("steps."):
                raise RecipeError(f"{where}: cannot run after {origin}: {reason}; move {step.kind} before it")
            fix = "; add a densify step before it" if name == "sparse" else ""
            raise RecipeError(f"{where}: {reason}, and {origin}{fix}")
        if not step.transforms and not transformed:
            raise RecipeError(f"{where}: nothing to {step.kind} yet: no step before it changes the model")
        if isinstance(step, PruneStep) and step.channels and step.ffn is None and any(
                isinstance(s, PruneStep) and s.ffn for s in recipe.steps[:index]):
            notes.append(f"{recipe.where(index)}: FFN neurons follow channels unless ffn is set, so this step prunes "
                         "the FFNs an earlier ffn step already pruned; set ffn: 0 to leave them")
        if isinstance(step, SparsifyStep) and quant_mode == "int4":
            notes.append(f"{recipe.where(index)}: int4 weights are packed nibbles (a zero is code 8), "
                         "so sparse storage gains nothing on them")
        for name in step.sets:
            state[name] = recipe.where(index)
        for name in step.clears:
            state.pop(name, None)
        if isinstance(step, QuantizeStep):
            quant_mode = step.mode
        transformed = transformed or step.transforms
    if not any(isinstance(s, ValidateStep) for s in recipe.steps):
        notes.append("no validate step: nothing checks the result against the input model")
    return notes
