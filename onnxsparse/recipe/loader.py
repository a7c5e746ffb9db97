"""``load_recipe``: a file (YAML/JSON), a preset or plain data -> a validated :class:`Recipe`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import guard
from ..options.fields import did_you_mean
from ._yaml import parse_text
from .config import Recipe, RecipeError, parse_recipe
from .overrides import apply_overrides
from .presets import PREFIX, PRESETS, get_preset

__all__ = ["load_recipe", "RecipeSpec"]

RecipeSpec = Recipe | Mapping[str, Any] | str | os.PathLike


def _read(path: Path) -> Any:
    if not path.exists():
        hint = ""
        if path.suffix == "" and path.name in PRESETS:
            hint = f" (did you mean {PREFIX}{path.name}?)"
        elif path.suffix == "":
            close = did_you_mean(path.name, PRESETS)
            hint = close.replace("(did you mean '", f"(did you mean '{PREFIX}") if close else ""
        raise RecipeError(f"recipe not found: {path}{hint}")
    guard.input_file(path, "recipe", RecipeError)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc}") from None
    return parse_text(text, str(path), json_only=path.suffix.lower() == ".json")


def load_recipe(spec: RecipeSpec, *, overrides: Sequence[str] = ()) -> Recipe:
    """Read and validate a recipe; every problem is one :class:`RecipeError` (exit code 2).

    ``spec``: a path to ``.yaml``/``.yml``/``.json``, ``"preset:NAME"``, a mapping of recipe data,
    or a :class:`Recipe` (returned as is unless ``overrides`` are given).  ``overrides`` are
    ``--set`` items (``"steps.0.prune.channels=0.5"``, ``"quantize.mode=static"``, ``"calib=data.npz"``).
    Relative paths resolve against the recipe file's folder, then the working directory.
    """
    bases: tuple[Path, ...] = ()
    if isinstance(spec, Recipe):
        if not overrides:
            return spec
        data, source = spec.to_dict(), spec.source
    elif isinstance(spec, Mapping):
        data, source = dict(spec), "<recipe>"
    elif isinstance(spec, str) and spec.startswith(PREFIX):
        data, source = get_preset(spec[len(PREFIX):]).data(), spec
    elif isinstance(spec, (str, os.PathLike)):
        path = Path(spec)
        data, source = _read(path), str(path)
        bases = (path.resolve().parent,)
    else:
        raise TypeError(f"load_recipe takes a path, 'preset:NAME', a mapping or a Recipe, not {type(spec).__name__}")
    if overrides:
        data = apply_overrides(data, overrides) if isinstance(data, Mapping) else data
    return parse_recipe(data, source=source, bases=bases)
