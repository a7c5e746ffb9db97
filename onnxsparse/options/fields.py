"""Typed option fields: parse, check and explain one value, for recipes, flags and API keywords.

An operation declares each option once, as a dataclass field made with :func:`option` (parser,
help, kind, and how it looks on the command line).  The same rows (:class:`FieldSpec`) drive
recipe parsing, ``--set`` key checks, the dry-run plan, ``run --help``, the key tables in
``docs/recipes.md`` (a test checks that the docs mention every key) and the generated command-line
flags (:mod:`onnxsparse.options.cli`).  Parsers raise :class:`Bad` with the problem only; the caller
prefixes where it happened (``recipe.yaml: steps.0.prune.channels: ...`` or ``--channels: ...``).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Bad",
    "Cli",
    "FieldSpec",
    "OPTION",
    "option",
    "spec_of",
    "ParseContext",
    "did_you_mean",
    "ratio",
    "number",
    "integer",
    "boolean",
    "optional",
    "text",
    "strings",
    "choice",
    "int_choice",
    "data_path",
    "ratio_map",
    "str_map",
    "block_shape",
    "dims",
    "shape_map",
    "data_or_arrays",
]


class Bad(ValueError):
    """A value does not fit its field; the message says why (without saying where).

    ``key`` names the offending key when a cross-key check raises it.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class ParseContext:
    """What parsers need beyond the value: the folders relative paths resolve against, in order."""

    bases: tuple[Path, ...] = ()


Parser = Callable[[Any, ParseContext], Any]


@dataclass(frozen=True)
class Cli:
    """How an option looks on the command line; the defaults derive everything from the key.

    ``flag`` defaults to ``--key-with-dashes``; booleans that default to true get ``negative``
    (``--no-memory``) instead; a field with ``kind == "list"`` takes ``nargs="+"`` and extends.
    ``text`` turns the command-line text into the value the parser takes (default: numbers become
    int/float, everything else stays text); ``help`` overrides the recipe help where a flag needs
    other words.  ``group`` names the argparse group the flag is listed under.
    """

    flag: str | None = None
    short: str | None = None
    metavar: str | None = None
    negative: str | None = None
    group: str | None = None
    help: str | None = None
    text: Callable[[str], Any] | None = None
    append: bool = False


#: Key of a dataclass field's metadata that holds its :class:`FieldSpec`.
OPTION = "onnxsparse.option"


@dataclass(frozen=True)
class FieldSpec:
    """One option of an operation: ``key`` in a recipe, ``attr`` on the dataclass, ``cli`` on the
    command line (``None``: recipe and API only)."""

    key: str
    attr: str
    parse: Parser
    help: str
    kind: str
    cli: Cli | None = None
    default: Any = None

    @property
    def is_path(self) -> bool:
        return self.kind.startswith("path")

    @property
    def flag(self) -> str:
        """The command-line flag (``--round-to``), whether or not the option is on the command line."""
        if self.cli is not None and self.cli.flag:
            return self.cli.flag
        return "--" + self.key.replace("_", "-")


def option(default: Any, *, parse: Parser, help: str, kind: str, key: str | None = None,
           cli: Cli | bool = True) -> Any:
    """A dataclass field that is an option: default, parser, help, kind (for docs), CLI look.

    ``key`` is the recipe key / API keyword when it differs from the attribute (``global`` for
    ``global_ranking``); ``cli=False`` keeps the option out of the command line.
    """
    spec = _PartialSpec(key, parse, help, kind, Cli() if cli is True else (cli or None))
    return field(default=default, metadata={OPTION: spec})


@dataclass(frozen=True)
class _PartialSpec:
    key: str | None
    parse: Parser
    help: str
    kind: str
    cli: Cli | None


def spec_of(f: Field[Any]) -> FieldSpec:
    """The :class:`FieldSpec` of a field made with :func:`option`."""
    part: _PartialSpec = f.metadata[OPTION]
    default = None if f.default is MISSING else f.default
    return FieldSpec(part.key or f.name, f.name, part.parse, part.help, part.kind, part.cli, default)


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    close = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, str):
        return f"text {value!r}"
    return f"{type(value).__name__} {value!r}"


def _float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Bad(f"expected {what}, got {_type_name(value)}")
    result = float(value)
    if not math.isfinite(result):
        raise Bad(f"expected a finite number, got {value!r}")
    return result


def ratio(value: Any, ctx: ParseContext) -> float:
    result = _float(value, "a fraction in [0, 1)")
    if not 0.0 <= result < 1.0:
        raise Bad(f"must be in [0, 1), got {value!r}")
    return result


def number(lo: float | None = None, hi: float | None = None) -> Parser:
    def parse(value: Any, ctx: ParseContext) -> float:
        result = _float(value, "a number")
        if lo is not None and result < lo:
            raise Bad(f"must be >= {lo:g}, got {value!r}")
        if hi is not None and result > hi:
            raise Bad(f"must be <= {hi:g}, got {value!r}")
        return result

    return parse


def integer(lo: int | None = None) -> Parser:
    def parse(value: Any, ctx: ParseContext) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise Bad(f"expected an integer, got {_type_name(value)}")
        if lo is not None and value < lo:
            raise Bad(f"must be >= {lo}, got {value}")
        return int(value)

    return parse


def integer_or(word: str, lo: int | None = None) -> Parser:
    """An integer, or the keyword ``word`` (e.g. ``auto``)."""
    plain = integer(lo)

    def parse(value: Any, ctx: ParseContext) -> int | str:
        if isinstance(value, str) and value.strip().lower() == word:
            return word
        try:
            return plain(value, ctx)
        except Bad as exc:
            raise Bad(f"{exc} (or {word!r})") from None

    return parse


def boolean(value: Any, ctx: ParseContext) -> bool:
    if not isinstance(value, bool):
        raise Bad(f"expected true or false, got {_type_name(value)}")
    return value


def optional(parser: Parser) -> Parser:
    """``null`` means "not set" (the step's default / auto choice)."""

    def parse(value: Any, ctx: ParseContext) -> Any:
        return None if value is None else parser(value, ctx)

    return parse


def text(value: Any, ctx: ParseContext) -> str:
    if not isinstance(value, str):
        raise Bad(f"expected text, got {_type_name(value)}")
    return value


def strings(value: Any, ctx: ParseContext) -> tuple[str, ...]:
    """A list of strings; a single string is a list of one."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise Bad(f"expected a list of text, got {_type_name(value)}")
    return tuple(value)


def choice(names: Callable[[], Sequence[str]], what: str) -> Parser:
    """One of ``names()`` (read when parsing, so entries registered later by plugins count)."""

    def parse(value: Any, ctx: ParseContext) -> str:
        known = tuple(names())
        if not isinstance(value, str):
            raise Bad(f"expected one of {', '.join(known)}, got {_type_name(value)}")
        key = value.strip().lower()
        if key not in known:
            raise Bad(f"unknown {what} {value!r}{did_you_mean(key, known)}; choose from {', '.join(known)}")
        return key

    return parse


def int_choice(values: Sequence[int]) -> Parser:
    def parse(value: Any, ctx: ParseContext) -> int:
        result = integer()(value, ctx)
        if result not in values:
            raise Bad(f"must be one of {', '.join(map(str, values))}, got {result}")
        return result

    return parse


def _resolve(value: str, bases: Sequence[Path]) -> Path | None:
    path = Path(os.path.expanduser(value))
    if path.is_absolute():
        return path if path.exists() else None
    for base in (*bases, Path.cwd()):
        candidate = base / path
        if candidate.exists():
            return candidate.resolve()
    return None


def data_path(*, random_ok: bool) -> Parser:
    """An existing file or folder (relative: the recipe's folder first, then the working directory);
    ``random`` when ``random_ok``."""

    def parse(value: Any, ctx: ParseContext) -> str:
        if not isinstance(value, (str, os.PathLike)):
            raise Bad(f"expected a file path{' or random' if random_ok else ''}, got {_type_name(value)}")
        value = os.fspath(value)
        if random_ok and value == "random":
            return value
        found = _resolve(value, ctx.bases)
        if found is None:
            looked = ", ".join(dict.fromkeys(str(b) for b in (*ctx.bases, Path.cwd())))
            raise Bad(f"file not found: {value} (looked in {looked})")
        return str(found)

    return parse


def _mapping(value: Any) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise Bad(f"expected a mapping, got {_type_name(value)}")
    return value


def ratio_map(value: Any, ctx: ParseContext) -> tuple[tuple[str, float], ...]:
    """``{glob: ratio}`` (first match wins, in file order)."""
    out = []
    for glob, item in _mapping(value).items():
        if not isinstance(glob, str):
            raise Bad(f"keys must be text (name patterns), got {_type_name(glob)}")
        try:
            out.append((glob, ratio(item, ctx)))
        except Bad as exc:
            raise Bad(f"{glob!r}: {exc}") from None
    return tuple(out)


def str_map(value: Any, ctx: ParseContext) -> tuple[tuple[str, str], ...]:
    out = []
    for key, item in _mapping(value).items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise Bad(f"expected text: text entries, got {key!r}: {item!r}")
        out.append((key, item))
    return tuple(out)


_DIMS = re.compile(r"^\s*\d+(\s*[x,]\s*\d+)*\s*$")


def dims(value: Any, ctx: ParseContext) -> tuple[int, ...]:
    """``[1, 3, 224, 224]`` or ``"1x3x224x224"``."""
    if isinstance(value, str):
        if not _DIMS.match(value):
            raise Bad(f"expected dims like [1, 3, 224, 224] or 1x3x224x224, got {value!r}")
        parts = tuple(int(p) for p in re.split(r"[x,]", value.replace(" ", "")))
    elif isinstance(value, (list, tuple)) and value and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        parts = tuple(value)
    else:
        raise Bad(f"expected dims like [1, 3, 224, 224], got {_type_name(value)}")
    if any(p < 1 for p in parts):
        raise Bad(f"dims must be >= 1, got {list(parts)}")
    return parts


def block_shape(value: Any, ctx: ParseContext) -> tuple[int, int]:
    """``4x4`` or ``[4, 4]``."""
    parts = dims(value, ctx)
    if len(parts) != 2:
        raise Bad(f"expected two sides like 4x4, got {value!r}")
    return parts[0], parts[1]


def shape_map(value: Any, ctx: ParseContext) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``{input name: dims}`` (dims as for :func:`dims`): shapes of inputs with dynamic dims."""
    out = []
    for name, item in _mapping(value).items():
        if not isinstance(name, str):
            raise Bad(f"input names must be text, got {name!r}")
        try:
            out.append((name, dims(item, ctx)))
        except Bad as exc:
            raise Bad(f"{name}: {exc}") from None
    return tuple(out)


def data_or_arrays(value: Any, ctx: ParseContext) -> Any:
    """A data path or ``random``, resolved like every path; the API may also hand over in-memory data."""
    if isinstance(value, (str, os.PathLike)):
        return data_path(random_ok=True)(value, ctx)
    return value
