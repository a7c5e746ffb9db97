"""A tiny name -> object registry shared by storage formats, sparsity patterns and criteria.

Entries are registered with a decorator; the defaults are one explicit tuple in
the package ``__init__`` so the CLI choices (generated from the registry) never
drift from what the code implements.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import UsageError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects registered by (lower-case) name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None, *, replace: bool = False) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("csr")`` on a class or function."""

        def decorator(obj: T) -> T:
            label = name or getattr(obj, "name", None) or getattr(obj, "__name__", None)
            key = label.lower() if isinstance(label, str) else ""
            if not key:
                raise ValueError(f"cannot register {obj!r} in {self.kind} registry without a name")
            if key in self._items and not replace:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._items[key] = obj
            return obj

        return decorator

    def add(self, name: str, obj: T, *, replace: bool = False) -> T:
        return self.register(name, replace=replace)(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name.lower()]
        except KeyError:
            raise UsageError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}") from None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self._items.items()))

    def __len__(self) -> int:
        return len(self._items)
