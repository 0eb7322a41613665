"""Heads registered by name: `@register_head` on the class, `build_head("mmolre", ...)` to make one.

The registry imports the model modules lazily, so `merc-heads list` and training start fast.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from .models.base import Head, TaskSpec

HEADS: dict[str, type[Head]] = {}
# name -> module that defines it; imported on first use.
_MODULES = {
    "mister-e": "merc.heads.models.mister_e",
    "summer": "merc.heads.models.summer",
    "mmolre": "merc.heads.models.mmolre",
    "ada2i": "merc.heads.models.ada2i",
    "mlp": "merc.heads.models.baselines",
    "late-fusion": "merc.heads.models.baselines",
    "dialogue-gru": "merc.heads.models.baselines",
}


def register_head(cls: type[Head]) -> type[Head]:
    HEADS[cls.name] = cls
    return cls


def head_class(name: str) -> type[Head]:
    if name not in HEADS and name in _MODULES:
        importlib.import_module(_MODULES[name])
    if name not in HEADS:
        raise KeyError(f"unknown head {name!r}; known heads: {', '.join(available_heads())}")
    return HEADS[name]


def available_heads() -> list[str]:
    return sorted(set(_MODULES) | set(HEADS))


def make_config(name: str, overrides: dict[str, Any] | None = None):
    """The head's config dataclass with `--set key=value` overrides applied (values parsed to field types)."""
    cls = head_class(name).config_cls
    cfg = cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, raw in (overrides or {}).items():
        if key not in fields:
            raise KeyError(f"head {name!r} has no option {key!r}; options: {', '.join(sorted(fields))}")
        current = getattr(cfg, key)
        setattr(cfg, key, _coerce(raw, current))
    return cfg


def _coerce(raw: Any, current: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    if isinstance(current, bool):
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"expected true/false, got {raw!r}")
    if isinstance(current, int):
        return int(raw)
    if isinstance(current, float):
        return float(raw)
    if isinstance(current, tuple):
        parts = [p for p in raw.replace(";", ",").split(",") if p]
        kind = type(current[0]) if current else str
        return tuple(kind(p) for p in parts)
    if current is None:
        for cast in (int, float):
            try:
                return cast(raw)
            except ValueError:
                pass
    return raw


def build_head(name: str, dims: dict[str, int], tasks: list[TaskSpec], overrides: dict[str, Any] | None = None) -> Head:
    cls = head_class(name)
    return cls(make_config(name, overrides), dims, tasks)
