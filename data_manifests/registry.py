"""One registry helper for everything merc looks up by name: corpus adapters, encoders, heads.

Like lhotse's `register_extractor`: the defining module decorates its object (`@ADAPTERS.register("meld")`),
and the registry knows which module defines each built-in name, so that module is imported on first use
only (listing heads or reading a store never imports an encoder's heavy dependencies). A name nobody
registered is a `KeyError` that lists the known ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """name -> object (+ a description), filled by `register`; `lazy` maps built-in names to their module."""

    def __init__(self, kind: str, lazy: Mapping[str, str] | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}
        self._lazy = dict(lazy or {})

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        """Decorator: `@REG.register("name", "what it is")` on a class or function; returns it unchanged."""

        def add(obj: T) -> T:
            old = self._items.get(name)
            if old is not None and old is not obj and _origin(old) != _origin(obj):
                raise ValueError(f"{self.kind} {name!r} is already registered to {_origin(old)}")
            self._items[name] = obj
            self._descriptions[name] = description
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._items and name in self._lazy:
            importlib.import_module(self._lazy[name])  # its decorators register it
        if name not in self._items:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._items[name]

    def description(self, name: str) -> str:
        self.get(name)
        return self._descriptions.get(name, "")

    def names(self) -> list[str]:
        return sorted(set(self._items) | set(self._lazy))

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def _origin(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
