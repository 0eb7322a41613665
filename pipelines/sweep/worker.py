"""What one sweep worker process does: configure itself once, then train (or resume) the runs it is handed.

A worker keeps every feature set it reads (heads/feature_cache.py), so the second run on the same features
reads nothing from the store. It sets its torch threads so that N workers never oversubscribe the cores
(two busy 2-thread processes on 2 cores run 3-10x slower: shared/specs/environment.md). On Linux it asks the
kernel for a SIGTERM when the sweep process dies, and takes SIGTERM as Ctrl-C, so a killed sweep leaves its runs
marked interrupted (and resumable), never trained on by an orphan.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

_configured: int | None = None  # threads this process was set to
_stopping = False  # set by the first Ctrl-C/SIGTERM: runs queued to this worker after it are not started
_parent_pid: int | None = None  # a local worker's parent when it started: the sweep, or the server it forks from
_in_run = False  # a run is being trained or resumed in this process now


def configure(threads: int, parent: dict | None = None) -> None:
    """Once per process (a local worker's initializer, with the sweep's directory and environment; each dask
    task calls it, cheaply, again)."""
    global _configured
    if _configured == threads:
        return
    from .procs import adopt

    adopt(parent)
    import torch

    from merc.heads import feature_cache

    torch.set_num_threads(max(1, threads))
    feature_cache.keep_features()
    stop_on_sigterm()
    _die_with_parent()
    if parent is not None:  # a local worker (dask's are not started by this sweep)
        _release_server()
        _watch_parent()
    _configured = threads


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """SIGTERM stops a run as Ctrl-C does (marked interrupted, resumable). SIGINT may be ignored: a shell starts
    background jobs with SIGINT ignored, and children inherit that, so SIGTERM is the signal that always works."""
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies (prctl PR_SET_PDEATHSIG), so that a killed sweep leaves no
    orphan training on; elsewhere a no-op."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _release_server() -> None:
    """A local worker forked from the server (procs.py) holds a copy of the pipe by which the server knows that
    the sweep process lives: close it, so that when the sweep dies the server reads the pipe's end and exits,
    and this worker, whose parent the server is, gets its SIGTERM (_die_with_parent). A spawned worker has none."""
    try:
        from multiprocessing import forkserver

        server = forkserver._forkserver
        if server._forkserver_alive_fd is not None:
            os.close(server._forkserver_alive_fd)
            server._forkserver_alive_fd = None
    except (AttributeError, OSError):
        pass


def _watch_parent() -> None:
    """When the sweep process dies, stop: an idle worker exits; a busy one stops its run as Ctrl-C does (marked
    interrupted, resumable), and execute() then exits. The kernel's SIGTERM (_die_with_parent) may land on one of
    torch's threads while the main thread waits in a blocking read, where Python never runs its handler, so a
    thread watches the parent (the sweep, or the server, which exits with it) and signals the main thread."""
    import threading

    global _parent_pid
    _parent_pid = os.getppid()
    main_id = threading.main_thread().ident

    def watch() -> None:
        signalled = False
        while True:
            time.sleep(0.5)
            if os.getppid() == _parent_pid:
                continue
            if not _in_run:
                os._exit(1)
            if not signalled and not _stopping:
                signal.pthread_kill(main_id, signal.SIGTERM)
                signalled = True

    threading.Thread(target=watch, name="merc-sweep-parent-watch", daemon=True).start()


def _sweep_gone() -> bool:
    """The process this worker started under has died (the sweep, or the server that exits with it)."""
    return _parent_pid is not None and os.getppid() != _parent_pid


def dask_threads(task: dict[str, Any]) -> int:
    """Threads for a run on a dask worker: this host's cores shared among the dask worker threads on it."""
    try:
        from distributed import get_worker

        worker = get_worker()
        host = worker.address.split("://")[-1].rsplit(":", 1)[0]
        busy = task.get("host_threads", {}).get(host) or worker.state.nthreads
    except (ImportError, ValueError):
        host, busy = socket.gethostname(), 1
    return max(1, (os.cpu_count() or 1) // max(1, busy))


class _SweepRecord:
    """A trainer callback that writes sweep.json at the start of training and times the setup."""

    def __init__(self, run_dir: Path, info: dict[str, Any], t0: float):
        self.run_dir, self.info, self.t0 = run_dir, info, t0
        self.setup_seconds: float | None = None

    def on_stage_start(self, stage: str, epochs: int) -> None:
        if self.setup_seconds is None:
            self.setup_seconds = time.perf_counter() - self.t0
            write_sweep_json(self.run_dir, self.info)

    def on_epoch_start(self, stage: str, epoch: int, n_batches: int) -> None: ...
    def on_step(self, loss: float) -> None: ...
    def on_best(self, head, stage: str, epoch: int) -> None: ...
    def on_checkpoint(self, state) -> None: ...
    def on_epoch_end(self, record: dict) -> None: ...


def write_sweep_json(run_dir: Path, info: dict[str, Any]) -> None:
    from merc.heads.checkpoint import atomic_write_text

    atomic_write_text(run_dir / "sweep.json", json.dumps(info, indent=2, default=str) + "\n")


def execute(task: dict[str, Any]) -> dict[str, Any]:
    """Train or resume one run; return what the sweep prints and records. Never raises for a failing run."""
    t0, started = time.perf_counter(), time.time()
    threads = task.get("threads") or dask_threads(task)
    configure(threads)
    from merc.heads import feature_cache
    from merc.heads.runs import resume_run, train_run

    run_dir = Path(task["run_dir"])
    record = _SweepRecord(run_dir, task["sweep_info"], t0)
    reads_before = feature_cache.stats["pooled_reads"] + feature_cache.stats["frames_reads"]
    out: dict[str, Any] = {"run_id": task["run_id"], "run_dir": str(run_dir), "action": task["action"],
                           "pid": os.getpid(), "threads": threads}
    from .engine import ACTION, run_state

    global _stopping, _in_run
    if _stopping:  # the sweep is stopping: a run already queued to this worker stays as it is (new or resumable)
        out.update(status="not started", seconds=0.0, setup_seconds=None, store_reads=0, started=time.time(),
                   ended=time.time())
        return out
    state = run_state(run_dir)  # again now: another sweep may have finished or taken it since the plan
    if state not in ACTION:
        out.update(status="complete" if state == "complete" else "busy", seconds=0.0, setup_seconds=None,
                   store_reads=0, started=time.time(), ended=time.time(), skipped=state)
        if state == "complete":
            out.update(_recorded_figures(run_dir))
        return out
    out["action"] = ACTION[state]
    _in_run = True
    try:
        if out["action"] == "resume":
            result = resume_run(run_dir, callbacks=[record])
        else:
            if run_dir.exists():  # a failed run, or one killed before it recorded anything: start it again
                shutil.rmtree(run_dir)
            result = train_run(task["request"], callbacks=[record])
        write_sweep_json(run_dir, task["sweep_info"])
        out.update(status="complete", **_figures(result))
    except KeyboardInterrupt:
        _stopping = True
        out.update(status="interrupted")
    except Exception as e:  # noqa: BLE001 - the sweep reports it and goes on with the other runs
        out.update(status="failed", error=f"{type(e).__name__}: {e}")
    finally:
        _in_run = False
    out["seconds"] = time.perf_counter() - t0
    out["started"], out["ended"] = started, time.time()  # wall clock: spawn and queue time, for benchmarks
    out["setup_seconds"] = record.setup_seconds
    out["store_reads"] = feature_cache.stats["pooled_reads"] + feature_cache.stats["frames_reads"] - reads_before
    if out["status"] == "interrupted" and _sweep_gone():
        os._exit(1)  # the sweep died (SIGTERM from the kernel): the run is marked interrupted; nobody is waiting
    return out


def _recorded_figures(run_dir: Path) -> dict[str, Any]:
    """dev/test of a run completed by someone else, from its metrics.json."""
    m = json.loads((run_dir / "metrics.json").read_text())
    task, metric = m["primary_task"], m["monitor"]
    get = lambda split: m["splits"].get(split, {}).get(task, {}).get(metric)  # noqa: E731
    return {"task": task, "metric": metric, "dev": get("dev"), "test": get("test")}


def _figures(result) -> dict[str, Any]:
    """The primary task's selection metric on dev and test (what the sweep's line per run shows)."""
    task = next(iter(result.metrics.get("dev") or result.metrics.get("test") or {}), None)
    from merc.heads.metrics import PRIMARY

    metric = result.fit.monitor
    some = next(iter(result.metrics.values()), {}).get(task, {})
    if metric not in some:  # monitor "loss": show the task kind's primary metric
        metric = next((m for m, _ in PRIMARY.values() if m in some), metric)
    get = lambda split: result.metrics.get(split, {}).get(task, {}).get(metric)  # noqa: E731
    return {"task": task, "metric": metric, "dev": get("dev"), "test": get("test"),
            "train_seconds": result.fit.seconds}
