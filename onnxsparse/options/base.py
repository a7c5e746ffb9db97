"""One frozen dataclass per operation: its options parsed, checked and explained in one place.

An :class:`Options` subclass is the single declaration of an operation's options: the recipe step
keys, the command-line flags (:mod:`onnxsparse.options.cli`) and the Python API's keywords are all
read from its fields, so a name, a default or a range exists once.  Every problem is one
:class:`OptionsError` line naming where it happened (``recipe.yaml: steps.1.prune.chanels: unknown key
(did you mean 'channels'?)``, ``--channels: must be in [0, 1), got 1.5``).
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self

from ..errors import UsageError
from . import fields as F
from .fields import OPTION, Bad, FieldSpec, ParseContext, spec_of

__all__ = ["Options", "OptionsError", "cli_words", "field_values", "signature_extras"]


class OptionsError(UsageError):
    """Options that cannot run (exit code 2); the message names where."""


def cli_words(message: str) -> str:
    """Underlying APIs speak in CLI flags (``--block-size``); a recipe says ``block_size``."""
    return re.sub(r"--(no-)?([a-z][a-z0-9-]*)", lambda m: m.group(2).replace("-", "_"), message)


def _raw(value: Any) -> Any:
    """A dataclass value as plain recipe data (tuples of pairs -> mappings, tuples -> lists)."""
    if isinstance(value, tuple) and value and all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str)
                                                   for v in value):
        return {k: _raw(v) for k, v in value}
    if isinstance(value, tuple):
        return [_raw(v) for v in value]
    return value


def field_values(items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """``(attribute, value)`` pairs as dataclass keywords; ``group.name`` attributes (validate's gates)
    gather into one ``group`` tuple of ``(name, value)`` pairs."""
    values: dict[str, Any] = {}
    grouped: dict[str, dict[str, Any]] = {}
    for attr, value in items:
        if "." in attr:
            group, _, name = attr.partition(".")
            grouped.setdefault(group, {})[name] = value
        else:
            values[attr] = value
    for group, members in grouped.items():
        values[group] = tuple(members.items())
    return values


@dataclass(frozen=True, kw_only=True)
class Options:
    """The options of one operation (a recipe step, a command's flags, an API call's keywords).

    Subclasses declare their fields with :func:`~onnxsparse.options.fields.option` (or override
    :meth:`field_specs`) and, as recipe steps, the model-state rules below.
    """

    kind: ClassVar[str] = ""
    help: ClassVar[str] = ""
    #: False for steps that only look at the model (validate)
    transforms: ClassVar[bool] = True
    #: model states this step cannot run on -> why (states: ``quantized``, ``sparse``)
    refuses: ClassVar[Mapping[str, str]] = {}
    sets: ClassVar[frozenset[str]] = frozenset()
    clears: ClassVar[frozenset[str]] = frozenset()

    #: keys the underlying API accepts that this step does not model (passed through as given)
    extra: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def field_specs(cls) -> tuple[FieldSpec, ...]:
        """The fields declared with :func:`~onnxsparse.options.fields.option`, in declaration order."""
        return tuple(spec_of(f) for f in fields(cls) if OPTION in f.metadata)

    @classmethod
    def passthrough_params(cls) -> dict[str, str]:
        """Parameters of the underlying API not covered by :meth:`field_specs` -> their annotation.

        Such keys are passed through as given (values type-checked from the annotation where it is
        a plain ``int``/``float``/``str``/``bool``), so options the API gains work in recipes at once.
        """
        return {}

    @classmethod
    def passthrough_keys(cls) -> tuple[str, ...]:
        return tuple(cls.passthrough_params())

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(s.key for s in cls.field_specs()) + cls.passthrough_keys()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], ctx: ParseContext, where: str,
                     error: type[UsageError] = OptionsError) -> Self:
        specs = {s.key: s for s in cls.field_specs()}
        passthrough = cls.passthrough_params()
        parsed_items: list[tuple[str, Any]] = []
        extra: list[tuple[str, Any]] = []
        for key, value in data.items():
            if not isinstance(key, str):
                raise error(f"{where}: keys must be text, got {key!r}")
            spec = specs.get(key)
            if spec is None and key in passthrough:
                if value is not None:
                    extra.append((key, _passthrough_value(key, value, passthrough[key], ctx, f"{where}.{key}", error)))
                continue
            if spec is None:
                known = cls.keys()
                hint = F.did_you_mean(key, known) or (f" (keys: {', '.join(known)})" if known else " (it takes none)")
                raise error(f"{where}.{key}: unknown key{hint}")
            if value is None:
                continue  # null: the default
            try:
                parsed = spec.parse(value, ctx)
            except Bad as exc:
                raise error(f"{where}.{key}: {exc}") from None
            parsed_items.append((spec.attr, parsed))
        try:
            step = cls(**field_values(parsed_items), extra=tuple(extra))  # a class may check itself when built (QuantizeOptions)
            step.check()
        except Bad as exc:
            raise error(f"{where}{'.' + exc.key if exc.key else ''}: {cli_words(str(exc))}") from None
        except UsageError as exc:
            raise error(f"{where}: {cli_words(str(exc))}") from None
        return step

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], where: str) -> Self:
        """Python keywords (attribute names, or the recipe keys) parsed and checked like a recipe step.

        ``where`` names the call in errors: ``prune(): channels: must be in [0, 1), got 1.5``.
        """
        by_attr = {s.attr: s.key for s in cls.field_specs()}
        data = {by_attr.get(name, name): value for name, value in kwargs.items()}
        return cls.from_mapping(data, ParseContext(), where)

    def check(self) -> None:
        """Cross-key validation (raise :class:`Bad` with ``key``, or the underlying UsageError)."""

    def options(self, *, full: bool = False) -> dict[str, Any]:
        """The step as recipe keys: only what differs from the defaults unless ``full``."""
        defaults = type(self)()
        out: dict[str, Any] = {}
        for spec in self.field_specs():
            if "." in spec.attr:
                group, _, name = spec.attr.partition(".")
                value = dict(getattr(self, group)).get(name)
                default = None
            else:
                value = getattr(self, spec.attr)
                default = getattr(defaults, spec.attr)
            if full or value != default:
                if value is None and "." in spec.attr:
                    continue
                out[spec.key] = {} if spec.kind == "mapping" and not value else _raw(value)
        out.update({k: _raw(v) for k, v in self.extra})
        return out

    def describe(self) -> str:
        """One line for the plan: ``channels=0.3 round_to=8``."""
        opts = self.options()
        return " ".join(f"{k}={_short(v)}" for k, v in opts.items()) or "(defaults)"

    def extra_kwargs(self) -> dict[str, Any]:
        return dict(self.extra)


def _short(value: Any) -> str:
    if isinstance(value, str) and os.path.isabs(value):
        try:
            return os.path.relpath(value)
        except ValueError:
            return value
    if isinstance(value, list):
        return ",".join(_short(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}:{_short(v)}" for k, v in value.items())
    return str(value).lower() if isinstance(value, bool) else str(value)


_PATH_KEYS = ("calib", "data", "labels")

#: Pass-through keys whose values must name an entry of a table the API exports (checked if importable).
_PASSTHROUGH_CHOICES: dict[str, tuple[str, str]] = {"repair": ("onnxsparse.passes.reconstruct", "REPAIRS")}

_SIMPLE_TYPES: dict[str, F.Parser] = {"int": F.integer(), "float": F.number(), "str": F.text, "bool": F.boolean}


def _check_annotation(value: Any, annotation: str, ctx: ParseContext) -> Any:
    """Check ``value`` against an annotation made of plain types (``int | None``); anything else passes."""
    names = [part.strip() for part in str(annotation).split("|")]
    if not names or any(n not in _SIMPLE_TYPES and n != "None" for n in names):
        return value
    problems = []
    for name in names:
        if name == "None":
            continue
        try:
            return _SIMPLE_TYPES[name](value, ctx)
        except Bad as exc:
            problems.append(str(exc))
    raise Bad(problems[0] if len(problems) == 1 else f"expected {' or '.join(n for n in names if n != 'None')}, "
              f"got {value!r}")


def _passthrough_value(key: str, value: Any, annotation: str, ctx: ParseContext, where: str,
                       error: type[UsageError] = OptionsError) -> Any:
    """Pass-through values go to the API as given: data keys resolve like every other path, plain
    annotations are type-checked, and names from a known table are checked against it."""
    import importlib

    try:
        if key in _PATH_KEYS and isinstance(value, str):
            return F.data_path(random_ok=True)(value, ctx)
        value = _check_annotation(value, annotation, ctx)
        if key in _PASSTHROUGH_CHOICES and isinstance(value, str):
            module, attr = _PASSTHROUGH_CHOICES[key]
            try:
                table = tuple(getattr(importlib.import_module(module), attr))
            except (ImportError, AttributeError):
                table = ()
            if table and value not in table:
                raise Bad(f"unknown {key} {value!r}{F.did_you_mean(value, table)}; choose from {', '.join(table)}")
    except Bad as exc:
        raise error(f"{where}: {exc}") from None
    return tuple(value) if isinstance(value, list) else value


def signature_extras(fn: Callable[..., Any], covered: set[str]) -> dict[str, str]:
    params = inspect.signature(fn).parameters.values()
    return {p.name: str(p.annotation) for p in params
            if p.name not in covered and p.kind is not inspect.Parameter.VAR_KEYWORD}


