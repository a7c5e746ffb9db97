"""``--set KEY=VALUE``: change a recipe from the command line before it is validated.

Keys (values are YAML: ``0.5``, ``true``, ``[a, b]``, ``"2:4"``; ``null`` removes the key):

* ``steps.N.KIND.KEY`` -- key of step ``N`` (counted from 0), whose kind must be ``KIND``;
* ``KIND.KEY`` -- key of *the* step of that kind (an error when the recipe has several: use
  the ``steps.N`` form, so an override never lands on a step you did not mean);
* ``calib``, ``name``, ``description``, ``shape.INPUT`` -- top-level keys.

Relative paths in override values are relative to the working directory (not to the
recipe's folder): they were typed at the shell.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..options.fields import did_you_mean
from ._yaml import parse_value
from .config import STEP_TYPES, TOP_LEVEL_KEYS, RecipeError

__all__ = ["apply_overrides", "OVERRIDE_HELP"]

OVERRIDE_HELP = ("KEY=VALUE: steps.N.KIND.KEY (step N, from 0), KIND.KEY (the only step of that kind), "
                 "calib, name, description or shape.INPUT; VALUE is YAML (null removes the key)")


def _entry(steps: list[Any], index: int) -> tuple[str, dict[str, Any]]:
    """Normalise step ``index`` to ``{kind: {options}}`` and return its kind and options."""
    item = steps[index]
    options: dict[str, Any]
    if isinstance(item, str):
        kind, options = item, {}
    elif isinstance(item, Mapping) and len(item) == 1:
        kind, raw = next(iter(item.items()))
        options = dict(raw or {})
    else:
        raise RecipeError(f"steps.{index}: a step is one mapping {{kind: {{options}}}}")
    steps[index] = {kind: options}
    return str(kind), options


def _absolute(value: Any, key: str) -> Any:
    if key not in ("calib", "data", "labels") or not isinstance(value, str) or value == "random":
        return value
    path = Path(value).expanduser()
    return str(path.resolve()) if not path.is_absolute() and path.exists() else value


def _set_step_key(steps: list[Any], index: int, kind: str | None, key: str, value: Any, item: str) -> None:
    actual, options = _entry(steps, index)
    if kind is not None and actual != kind:
        raise RecipeError(f"--set {item}: steps.{index} is a {actual} step, not {kind}")
    cls = STEP_TYPES.get(actual)
    if cls is not None and key not in cls.keys():
        hint = did_you_mean(key, cls.keys()) or f" (keys: {', '.join(cls.keys())})"
        raise RecipeError(f"--set {item}: {actual} has no key {key!r}{hint}")
    if value is None:
        options.pop(key, None)
    else:
        options[key] = _absolute(value, key)


def _apply_one(data: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. prune.channels=0.5 or steps.0.prune.channels=0.5")
    value = parse_value(text, f"--set {item}")
    parts = key.split(".")
    steps = data.get("steps")
    if parts[0] == "steps":
        if len(parts) != 4:
            raise RecipeError(f"--set {item}: expected steps.N.KIND.KEY, e.g. steps.0.prune.channels=0.5")
        if not isinstance(steps, list):
            raise RecipeError(f"--set {item}: the recipe has no list of steps")
        try:
            index = int(parts[1])
        except ValueError:
            raise RecipeError(f"--set {item}: step index {parts[1]!r} is not a number") from None
        if not 0 <= index < len(steps):
            raise RecipeError(f"--set {item}: no step {index} (the recipe has {len(steps)}, counted from 0)")
        _set_step_key(steps, index, parts[2], parts[3], value, item)
    elif parts[0] in STEP_TYPES:
        if len(parts) != 2:
            raise RecipeError(f"--set {item}: expected {parts[0]}.KEY=VALUE")
        if not isinstance(steps, list):
            raise RecipeError(f"--set {item}: the recipe has no list of steps")
        kinds = [_entry(steps, i)[0] for i in range(len(steps))]
        found = [i for i, k in enumerate(kinds) if k == parts[0]]
        if not found:
            raise RecipeError(f"--set {item}: the recipe has no {parts[0]} step")
        if len(found) > 1:
            where = ", ".join(f"steps.{i}" for i in found)
            raise RecipeError(f"--set {item}: the recipe has {len(found)} {parts[0]} steps ({where}); "
                              f"say which: steps.{found[0]}.{parts[0]}.{parts[1]}=...")
        _set_step_key(steps, found[0], parts[0], parts[1], value, item)
    elif parts[0] == "shape" and len(parts) == 2:
        shape = data.get("shape")
        shape = dict(shape) if isinstance(shape, Mapping) else {}
        if value is None:
            shape.pop(parts[1], None)
        else:
            shape[parts[1]] = value
        data["shape"] = shape
    elif parts[0] in TOP_LEVEL_KEYS and parts[0] != "steps" and len(parts) == 1:
        if value is None:
            data.pop(parts[0], None)
        else:
            data[parts[0]] = _absolute(value, parts[0])
    else:
        known = [*STEP_TYPES, *(k for k in TOP_LEVEL_KEYS if k != "steps"), "steps"]
        raise RecipeError(f"--set {item}: unknown key {key!r}{did_you_mean(parts[0], known)}; {OVERRIDE_HELP}")


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of plain recipe ``data`` with every ``KEY=VALUE`` override applied, in order."""
    if not isinstance(data, Mapping):
        raise RecipeError("a recipe is a mapping with 'steps'")
    out = copy.deepcopy(dict(data))
    if isinstance(out.get("steps"), list):
        out["steps"] = list(out["steps"])
    for item in overrides:
        _apply_one(out, item)
    return out
