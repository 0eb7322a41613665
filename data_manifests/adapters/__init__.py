"""Corpus adapters, one module per corpus (lhotse style), behind one name -> loader registry.

The CLI and the pipelines only ever say ``load_manifest("meld", root, **options)``, so adding a
corpus means adding a module and one registry entry, and a typo in a name or an option gets an
error that lists what is available instead of a bare KeyError/TypeError.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from ..errors import ManifestError
from ..manifest import Manifest
from ..registry import Registry

AdapterFn = Callable[..., Manifest]

# name -> loader, each registered by its module's `@ADAPTERS.register(...)`, imported on first use
ADAPTERS: Registry[AdapterFn] = Registry("dataset", lazy={
    "meld": "merc.data_manifests.adapters.meld",
    "iemocap": "merc.data_manifests.adapters.iemocap",
    "mosi": "merc.data_manifests.adapters.mosi",
    "mosei": "merc.data_manifests.adapters.mosi",
    "manifest": "merc.data_manifests.adapters.generic",
})


def register_adapter(name: str, fn: AdapterFn) -> None:
    """Add a corpus adapter: ``fn(root, **options) -> Manifest`` (a validated one)."""
    ADAPTERS.register(name)(fn)


def adapter_options(name: str) -> list[str]:
    """The keyword options an adapter accepts (for CLI help and error messages)."""
    params = inspect.signature(_get(name)).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def load_manifest(name: str, root: str | Path, **options) -> Manifest:
    """Load corpus `name` from `root` with the adapter's options; returns a validated Manifest."""
    fn = _get(name)
    known = adapter_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ManifestError(f"adapter {name!r} has no option(s) {', '.join(unknown)}", file=str(root),
                            fix=f"use only {', '.join(known) or 'no options'}")
    return fn(root, **options)


def _get(name: str) -> AdapterFn:
    key = name.strip().lower()
    if key not in ADAPTERS:
        raise ManifestError(f"unknown dataset {name!r}", file="--dataset",
                            fix=f"use one of {', '.join(ADAPTERS.names())} (a CSV/JSONL file of your own: 'manifest')")
    return ADAPTERS.get(key)


__all__ = ["ADAPTERS", "adapter_options", "load_manifest", "register_adapter"]
