"""JSON Schemas of the files onnxsparse writes for other programs, and a checker for them.

``groups.schema.json``: ``inspect --groups`` (``docs/groups.md``).  :func:`check` implements the
subset of JSON Schema these files use (``type``, ``properties``, ``required``,
``additionalProperties: false``, ``items``, ``enum``, ``const``, ``minimum``, local ``$ref``) so
that no schema library becomes a dependency; it raises on any other keyword rather than ignore it.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

__all__ = ["load_schema", "check"]

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,), "null": (type(None),),
    "integer": (int,), "number": (int, float),
}
_KNOWN = frozenset({"$schema", "$id", "$defs", "$ref", "title", "description", "type", "properties", "required",
                    "additionalProperties", "items", "enum", "const", "minimum"})


def load_schema(name: str) -> dict[str, Any]:
    """A shipped schema by file stem, e.g. ``"groups"``."""
    return json.loads(resources.files(__name__).joinpath(f"{name}.schema.json").read_text(encoding="utf-8"))


def _is(value: Any, type_name: str) -> bool:
    if isinstance(value, bool) and type_name in ("integer", "number"):
        return False
    return isinstance(value, _TYPES[type_name])


def check(instance: Any, schema: dict[str, Any]) -> list[str]:
    """Every violation of ``schema`` in ``instance``, as ``path: problem`` lines (empty: valid)."""
    errors: list[str] = []
    _check(instance, schema, schema, "$", errors)
    return errors


def _check(value: Any, node: dict[str, Any], root: dict[str, Any], path: str, errors: list[str]) -> None:
    unknown = set(node) - _KNOWN
    if unknown:
        raise ValueError(f"schema keyword(s) {sorted(unknown)} at {path} are not supported by this checker")
    if "$ref" in node:
        target: Any = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        _check(value, target, root, path, errors)
    types = node.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else list(types)
        if not any(_is(value, t) for t in names):
            errors.append(f"{path}: expected {' or '.join(names)}, got {type(value).__name__}")
            return
    if "const" in node and value != node["const"]:
        errors.append(f"{path}: expected {node['const']!r}, got {value!r}")
    if "enum" in node and value not in node["enum"]:
        errors.append(f"{path}: {value!r} is not one of {node['enum']}")
    if "minimum" in node and _is(value, "number") and value < node["minimum"]:
        errors.append(f"{path}: {value} is below the minimum {node['minimum']}")
    if isinstance(value, dict):
        props = node.get("properties", {})
        for key in node.get("required", ()):
            if key not in value:
                errors.append(f"{path}: missing {key!r}")
        for key, item in value.items():
            if key in props:
                _check(item, props[key], root, f"{path}.{key}", errors)
            elif node.get("additionalProperties", True) is False:
                errors.append(f"{path}: unexpected key {key!r}")
    if isinstance(value, list) and "items" in node:
        for i, item in enumerate(value):
            _check(item, node["items"], root, f"{path}[{i}]", errors)
