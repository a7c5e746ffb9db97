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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..options import fields as F
from ..options.base import Options, OptionsError
from ..options.fields import Bad, ParseContext
from ..options.densify import DensifyOptions
from ..options.quantize import QuantizeOptions
from ..options.sparsify import SparsifyOptions
from ..options.validate import ValidateOptions
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


#: ``sparsify``: the command's options are the step's keys (one dataclass, :mod:`onnxsparse.options.sparsify`).
SparsifyStep = SparsifyOptions
register_step(SparsifyStep)


#: ``quantize``: the command's options are the step's keys (:mod:`onnxsparse.options.quantize`).
QuantizeStep = QuantizeOptions
register_step(QuantizeStep)


#: ``densify``: no options (:mod:`onnxsparse.options.densify`).
DensifyStep = DensifyOptions
register_step(DensifyStep)


#: ``validate``: the command's options are the step's keys (:mod:`onnxsparse.options.validate`).
ValidateStep = ValidateOptions
register_step(ValidateStep)


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
    shape = top("shape", F.shape_map, ())
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
