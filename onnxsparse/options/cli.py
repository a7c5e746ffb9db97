"""Command-line flags generated from an operation's :class:`~onnxsparse.options.base.Options`.

The flags, their help, ranges and defaults come from the same fields the recipe keys and API
keywords do, so a command cannot drift from its recipe step.  Flags are added with
``default=argparse.SUPPRESS``: :func:`from_args` sees only what the user typed and the dataclass
supplies every default, in one place.  :func:`to_argv` is the inverse (a test runs the same options
through the command line, the API and a recipe and compares the files written).
"""

from __future__ import annotations

import argparse
from collections.abc import Collection, Mapping, MutableMapping
from typing import Any, TypeVar

from ..errors import UsageError
from .base import Options, field_values
from .fields import Bad, FieldSpec, ParseContext

__all__ = ["add_arguments", "from_args", "given", "to_argv", "scalar"]

O = TypeVar("O", bound=Options)

_CTX = ParseContext()
#: kinds whose command-line text is a list of items (``--exclude a b``) or ``KEY=VALUE`` pairs
_LIST_KINDS = ("list",)
_MAP_KINDS = ("mapping",)


def scalar(text: str) -> Any:
    """Command-line text as the value a recipe would hold: ``3`` -> 3, ``0.3`` -> 0.3, else the text."""
    stripped = text.strip()
    for kind in (int, float):
        try:
            return kind(stripped)
        except ValueError:
            pass
    return text


def _dest(spec: FieldSpec) -> str:
    return spec.attr.replace(".", "__")


def _is_bool(spec: FieldSpec) -> bool:
    return spec.kind == "bool"


def _text(spec: FieldSpec) -> Any:
    return spec.cli.text if spec.cli is not None and spec.cli.text is not None else scalar


def _converter(spec: FieldSpec) -> Any:
    """argparse ``type=``: text -> value -> the field's parser, errors as argparse's one line."""
    to_value = _text(spec)

    def convert(text: str) -> Any:
        value = to_value(text)
        if spec.is_path:
            return value  # resolved and read by the loaders, which name a missing file in one line
        try:
            return spec.parse(value, _CTX)
        except Bad as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = spec.kind  # argparse names the type in "invalid <type> value" messages
    return convert


def add_arguments(parser: argparse.ArgumentParser, cls: type[Options], *, exclude: Collection[str] = (),
                  groups: MutableMapping[str, Any] | None = None) -> None:
    """Add a flag for every command-line field of ``cls`` (attributes in ``exclude`` left out).

    Fields whose :class:`~onnxsparse.options.fields.Cli` names a ``group`` go into that argparse
    group (created on first use, kept in ``groups`` so a command can add its own flags to it).
    """
    groups = {} if groups is None else groups
    for spec in cls.field_specs():
        cli = spec.cli
        if cli is None or spec.attr in exclude:
            continue
        target: Any = parser
        if cli.group:
            if cli.group not in groups:
                groups[cli.group] = parser.add_argument_group(cli.group)
            target = groups[cli.group]
        help_text = cli.help or spec.help
        dest = _dest(spec)
        names = [n for n in (cli.short, spec.flag) if n]
        common: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS}
        if _is_bool(spec):
            negative = cli.negative or "--no-" + spec.flag[2:]
            if spec.default is True:
                target.add_argument(negative, action="store_false", help=help_text, **common)
            elif spec.default is False:
                target.add_argument(*names, action="store_true", help=help_text, **common)
            else:
                pair = target.add_mutually_exclusive_group()
                pair.add_argument(*names, action="store_true", help=help_text, **common)
                pair.add_argument(negative, action="store_false", help=argparse.SUPPRESS, **common)
            continue
        metavar = cli.metavar or spec.key.upper()
        if spec.kind in _LIST_KINDS or spec.kind in _MAP_KINDS:
            action = "append" if cli.append or spec.kind in _MAP_KINDS else "extend"
            nargs = None if action == "append" else "+"
            target.add_argument(*names, action=action, nargs=nargs, metavar=metavar, help=help_text, **common)
            continue
        target.add_argument(*names, type=_converter(spec), metavar=metavar, help=help_text, **common)


def given(cls: type[Options], args: argparse.Namespace) -> set[str]:
    """The attributes of ``cls`` the user gave on the command line."""
    present = vars(args)
    return {s.attr for s in cls.field_specs() if s.cli is not None and _dest(s) in present}


def _collection(spec: FieldSpec, items: list[str]) -> Any:
    to_value = _text(spec)
    if spec.kind in _MAP_KINDS:
        pairs: dict[str, Any] = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key:
                shape = spec.cli.metavar if spec.cli is not None and spec.cli.metavar else None
                raise Bad(f"expected KEY=VALUE{f' ({shape})' if shape and shape != 'KEY=VALUE' else ''}, got {item!r}")
            pairs[key] = to_value(value)
        return pairs
    return [to_value(item) for item in items]


def from_args(cls: type[O], args: argparse.Namespace, **extra: Any) -> O:
    """The options the command line gave (dataclass defaults for the rest), checked like a recipe step.

    ``extra`` sets fields the command computes itself (e.g. a pass-through tuple).
    """
    present = vars(args)
    items: list[tuple[str, Any]] = []
    specs = {s.key: s for s in cls.field_specs()}
    for spec in specs.values():
        if spec.cli is None or _dest(spec) not in present:
            continue
        value = present[_dest(spec)]
        if spec.kind in _LIST_KINDS or spec.kind in _MAP_KINDS:
            try:
                value = spec.parse(_collection(spec, list(value)), _CTX)
            except Bad as exc:
                raise UsageError(f"{spec.flag}: {exc}") from None
        items.append((spec.attr, value))
    try:
        options = cls(**field_values(items), **extra)  # a class may check itself when built (QuantizeOptions)
        options.check()
    except Bad as exc:
        flag = specs[exc.key].flag if exc.key in specs else None
        raise UsageError(f"{flag}: {exc}" if flag else str(exc)) from None
    return options


def _argv_value(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def to_argv(options: Options) -> list[str]:
    """The flags that reproduce ``options`` on the command line (only what differs from the defaults)."""
    defaults = type(options)()
    argv: list[str] = []
    for spec in options.field_specs():
        if spec.cli is None or "." in spec.attr:
            continue
        value, default = getattr(options, spec.attr), getattr(defaults, spec.attr)
        if value == default:
            continue
        if _is_bool(spec):
            argv.append(spec.flag if value else (spec.cli.negative or "--no-" + spec.flag[2:]))
        elif spec.kind in _MAP_KINDS:
            items = value.items() if isinstance(value, Mapping) else value
            for key, item in items:  # dims as typed: NAME=1x8
                text = "x".join(map(str, item)) if isinstance(item, tuple) else item
                argv += [spec.flag, f"{key}={text}"]
        elif spec.kind in _LIST_KINDS and not spec.cli.append:
            argv += [spec.flag, *_argv_value(value)]
        elif spec.kind in _LIST_KINDS:
            for item in value:
                argv += [spec.flag, str(item)]
        else:
            argv += [spec.flag, *_argv_value(value)]
    return argv
