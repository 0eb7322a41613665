"""`merc-heads sweep`: many config trees (variants x grid x seeds) trained from one feature store.

    spec.py    the sweep file -> planned runs, each a resolved config tree with a hash id
    engine.py  run states (complete / resumable / failed / busy / new), local processes or dask
    worker.py  what a worker does: threads, kept features, train or resume one run, sweep.json
    procs.py   local workers forked from a warm server (preload.py: what every run imports, imported once)
    run.py     run_sweep

`run_sweep` is what the command calls: plan (every run resolved before any starts), show or run what is left,
one line per finished run, one bar for the sweep, a closing summary.
"""

from __future__ import annotations

import importlib

# Nothing is imported until asked for: the command starts the workers' server (procs.py) before torch loads.
_EXPORTS = {"run_sweep": ".run", "SweepOutcome": ".engine", "PlannedRun": ".spec", "SweepSpec": ".spec",
            "Variant": ".spec", "expand": ".spec", "load_spec": ".spec", "parse_seeds": ".spec"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
