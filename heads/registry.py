"""Heads registered by name: `@register_head` on the class, `build_head("mmolre", ...)` to make one.

The registry imports the model modules lazily, so `merc-heads list` and training start fast.
"""

from __future__ import annotations

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
    """The head's config dataclass with `key=value` overrides applied, each parsed to its field's type by the one
    parser of heads/config.py. Unknown keys and unparseable values are HeadsErrors that say what is valid."""
    from .config import Setting, default_settings, resolve

    cls = head_class(name)
    settings = [Setting(f"head.{k}", v, f"head.{k}={v}") for k, v in (overrides or {}).items()]
    return resolve(name, cls.config_cls, default_settings(cls) + settings).head


def build_head(name: str, dims: dict[str, int], tasks: list[TaskSpec], overrides: dict[str, Any] | None = None) -> Head:
    cls = head_class(name)
    return cls(make_config(name, overrides), dims, tasks)
