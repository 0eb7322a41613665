"""Heads registered by name: `@register_head` on the class, `build_head("mmolre", ...)` to make one.

The shared Registry (merc.data_manifests.registry) imports the model modules lazily, so `merc-heads list` and
training start fast.
"""

from __future__ import annotations

from typing import Any

from merc.data_manifests.registry import Registry

from .models.base import Head, TaskSpec

# name -> module that defines it; imported on first use.
MODULES = {
    "mister-e": "merc.heads.models.mister_e",
    "summer": "merc.heads.models.summer",
    "mmolre": "merc.heads.models.mmolre",
    "ada2i": "merc.heads.models.ada2i",
    "mlp": "merc.heads.models.baselines",
    "late-fusion": "merc.heads.models.baselines",
    "dialogue-gru": "merc.heads.models.baselines",
}
HEADS: Registry[type[Head]] = Registry("head", lazy=MODULES)


def register_head(cls: type[Head]) -> type[Head]:
    """Class decorator: registers a head under its `name`, with its `description`."""
    return HEADS.register(cls.name, cls.description)(cls)


def head_class(name: str) -> type[Head]:
    return HEADS.get(name)


def available_heads() -> list[str]:
    return HEADS.names()


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
