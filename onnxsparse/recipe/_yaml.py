"""Read recipe text (YAML or JSON) into plain Python data, strictly.

PyYAML follows YAML 1.1, where ``2:4`` is the sexagesimal integer 124, ``010``
is octal 8 and ``1e-5`` is a string.  Recipes write N:M patterns and small
thresholds, so scalars are resolved the YAML 1.2 way (``2:4`` stays a string,
``1e-5`` is a float, no dates).  Duplicate keys are an error instead of the last
one silently winning.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from ..errors import UsageError

__all__ = ["parse_text", "parse_value"]

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema numbers and duplicate-key detection."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT, _TIMESTAMP)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?[0-9]+|0x[0-9a-fA-F]+|0o[0-7]+)$"), list("-+0123456789")
)
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."),
)


#: Recipes are small: deeper nesting or longer integers are a broken or hostile file, refused in one line
#: (instead of a ``RecursionError`` or Python's 4300-digit int conversion error).
MAX_DEPTH = 64
MAX_INT_DIGITS = 40


def _compose_node(self: yaml.SafeLoader, parent: Any, index: Any) -> Any:
    depth = getattr(self, "_depth", 0)
    if depth >= MAX_DEPTH:
        raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                          self.peek_event().start_mark)
    self._depth = depth + 1
    try:
        return yaml.SafeLoader.compose_node(self, parent, index)
    finally:
        self._depth = depth


_Loader.compose_node = _compose_node


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if len(text) > MAX_INT_DIGITS:
        raise yaml.constructor.ConstructorError(
            None, None, f"integer of {len(text)} digits is too long (at most {MAX_INT_DIGITS})", node.start_mark
        )
    return int(text, 0) if text[:2] in ("0x", "0o") else int(text, 10)


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
            )
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_Loader.add_constructor(_INT, _construct_int)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_text(text: str, origin: str, *, json_only: bool = False) -> Any:
    """Parse a recipe file's text; errors are one line naming ``origin`` and the position."""
    if json_only:
        try:
            return json.loads(text, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{origin}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
        except ValueError as exc:  # duplicate keys, integers past Python's digit limit
            raise UsageError(f"{origin}: invalid JSON: {exc}") from None
        except RecursionError:
            raise UsageError(f"{origin}: invalid JSON: nested too deeply") from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise UsageError(f"{origin}: invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{origin}: invalid YAML: {' '.join(str(exc).split())}") from None


def parse_value(text: str, origin: str) -> Any:
    """One ``--set`` value: YAML scalars/lists/mappings (``0.5``, ``true``, ``[a, b]``, ``2:4``, ``null``)."""
    if text.strip() == "":
        return ""
    return parse_text(text, origin)
