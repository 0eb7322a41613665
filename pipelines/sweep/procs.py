"""Local worker processes, forked from a warm server instead of each starting Python and torch from nothing.

A spawned worker spends 1.4-2 s importing torch, then ~1.5 s more on its first run importing what torch.optim and
the learning-curve plot pull in (torch._dynamo, matplotlib): a fixed cost per worker that a sweep of short runs
feels. With the `forkserver` start method, one server process imports all of it once (preload.py) and forks each
worker from there in milliseconds. The server never runs a torch op, so no OpenMP pool is forked (forking one
hangs the child). The sweep command starts the server before its own imports, so the two import side by side.

This module imports nothing heavy: the command calls `start_server` before torch is loaded.
"""

from __future__ import annotations

import multiprocessing as mp
import os

PRELOAD = ["merc.pipelines.sweep.preload"]


def context():
    """forkserver with the preload where the platform has it (Linux, macOS), else spawn."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return mp.get_context("spawn")


def start_server() -> None:
    """Start the worker server now, if this platform has one; a no-op when it already runs."""
    if context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def parent_state() -> dict:
    """What a worker takes from the sweep process rather than from the server it was forked from (which may have
    started earlier, under another directory or environment: a notebook or test session runs many sweeps)."""
    return {"cwd": os.getcwd(), "env": dict(os.environ)}


def adopt(state: dict | None) -> None:
    if not state:
        return
    os.chdir(state["cwd"])
    os.environ.clear()
    os.environ.update(state["env"])
