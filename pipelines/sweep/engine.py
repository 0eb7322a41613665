"""Run a sweep's planned runs on local worker processes or a dask cluster; a rerun does only what is left.

Each planned run has a directory `<out>/<sweep>/<head>-s<seed>-<id>` named by the hash of its config tree, and
its state decides what a (re)run of the sweep does with it:

    complete     metrics written, run.json says complete      -> skipped
    resumable    interrupted or killed after it started        -> `--resume`d from its last completed epoch
    failed       run.json says failed, or nothing usable       -> removed and trained again
    busy         another live process holds its lock           -> left alone (reported)
    new          no directory                                  -> trained

So a killed sweep loses only the epochs in flight, and rerunning the same command finishes it with every run
trained exactly once. Runs start longest first (a sweep ends when its last run does).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .spec import PlannedRun, SweepSpec

STATES = ("complete", "resumable", "failed", "busy", "new")
ACTION = {"resumable": "resume", "failed": "train", "new": "train"}


def run_state(run_dir: Path) -> str:
    """What a sweep must do with this run directory (see the module docstring)."""
    from merc.heads.checkpoint import lock_is_held, read_status
    from merc.heads.data import HeadsError

    if not run_dir.exists():
        return "new"
    try:
        status = read_status(run_dir)
    except HeadsError:
        return "failed"  # run.json damaged: nothing in it can be trusted
    if status is None:
        return "failed"  # killed before it recorded anything
    if status["status"] == "complete":
        return "complete" if (run_dir / "metrics.json").exists() else "failed"
    if status["status"] == "failed":
        return "failed"
    if lock_is_held(run_dir):
        return "busy"
    return "resumable" if (run_dir / "config.json").exists() else "failed"


@dataclass
class SweepOutcome:
    """What a sweep did: one record per run it ran, and the states it found."""

    out_dir: Path
    found: Counter = field(default_factory=Counter)  # state -> runs found in it
    results: list[dict[str, Any]] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r["status"] == status)


def plan_states(planned: list[PlannedRun], out_dir: Path) -> list[tuple[PlannedRun, str]]:
    return [(p, run_state(out_dir / p.dirname)) for p in planned]


def sweep_info(spec: SweepSpec, p: PlannedRun) -> dict[str, Any]:
    """sweep.json: what `merc-heads report` groups by."""
    return {"sweep": spec.name, "variant": p.variant, "values": p.values, "seed": p.seed, "run_id": p.run_id,
            "sweep_file": spec.path}


def tasks_for(spec: SweepSpec, states: list[tuple[PlannedRun, str]], out_dir: Path, threads: int | None
              ) -> list[dict[str, Any]]:
    """The runs left to do, longest first, as the dicts a worker executes."""
    todo = [(p, s) for p, s in states if s in ACTION]
    todo.sort(key=lambda ps: (-ps[0].cost, -ps[0].size))
    tasks = []
    for p, state in todo:
        req = p.request
        req.out, req.name = str(out_dir), p.dirname
        tasks.append({"run_id": p.run_id, "run_dir": str(out_dir / p.dirname), "action": ACTION[state],
                      "state": state, "request": req, "threads": threads, "variant": p.variant, "seed": p.seed,
                      "head": p.head, "cost": p.cost, "sweep_info": sweep_info(spec, p)})
    return tasks


def local_threads(workers: int) -> int:
    """Torch threads per local worker: the cores shared out, at least one each."""
    return max(1, (os.cpu_count() or 1) // workers)


def run_local(tasks: list[dict[str, Any]], workers: int, on_done) -> bool:
    """Run tasks on `workers` processes forked from a warm server (procs.py), or spawned. Returns False when
    interrupted (Ctrl-C): every worker is asked to stop, so its run is marked interrupted and resumable."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from .procs import context, parent_state
    from .worker import configure, execute

    threads = tasks[0]["threads"] if tasks else 1
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)) or 1, mp_context=context(),
                               initializer=configure, initargs=(threads, parent_state()))
    pending = {pool.submit(execute, t): t for t in tasks}  # FIFO: longest first
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                task = pending.pop(fut)
                on_done(task, _result(fut, task))
    except KeyboardInterrupt:
        running = {f: t for f, t in pending.items() if not f.cancel()}  # runs not started stay new
        # a Ctrl-C in a terminal reached the workers too; a SIGINT to the sweep alone did not: ask those still busy
        with contextlib.suppress(KeyboardInterrupt):
            wait(running, timeout=0.3)  # a worker that got the Ctrl-C itself reports within milliseconds
        if any(not f.done() for f in running):
            _stop_workers(pool)
        for fut, task in running.items():
            with contextlib.suppress(BaseException):
                on_done(task, fut.result(timeout=120))
        pool.shutdown(wait=False, cancel_futures=True)
        return False
    pool.shutdown(wait=True)
    return True


def _result(fut, task: dict[str, Any]) -> dict[str, Any]:
    try:
        return fut.result()
    except BaseException as e:  # noqa: BLE001 - a worker that died (killed, out of memory) fails only its run
        return {"run_id": task["run_id"], "run_dir": task["run_dir"], "action": task["action"], "status": "failed",
                "error": f"worker died: {type(e).__name__}: {e}"}


def _stop_workers(pool) -> None:
    """SIGTERM every worker, which stops its run as Ctrl-C does (a Ctrl-C in a terminal already reached them; a
    signal to the sweep alone did not, and a shell's background job ignores SIGINT)."""
    for proc in list(getattr(pool, "_processes", {}).values()):
        with contextlib.suppress(ProcessLookupError, AttributeError):
            os.kill(proc.pid, signal.SIGTERM)


def run_dask(tasks: list[dict[str, Any]], workers: int, scheduler: str | None, on_done) -> bool:
    """Run tasks on dask.distributed: a LocalCluster of `workers` single-thread processes, or the cluster at
    `scheduler`. Each task's priority is its expected cost (longest first)."""
    from distributed import Client, LocalCluster, as_completed

    from .worker import execute

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    else:
        client = Client(scheduler)
    try:
        infos = client.scheduler_info().get("workers", {})
        host_threads: Counter = Counter()
        for addr, w in infos.items():
            host_threads[addr.split("://")[-1].rsplit(":", 1)[0]] += int(w.get("nthreads", 1))
        futures = {}
        for t in tasks:
            t = {**t, "threads": None, "host_threads": dict(host_threads)}
            futures[client.submit(execute, t, key=f"merc-run-{t['run_id']}", pure=False,
                                  priority=int(t["cost"] * 1000))] = t
        try:
            for fut in as_completed(futures):
                on_done(futures[fut], _result(fut, futures[fut]))
        except KeyboardInterrupt:
            # dask workers hold no terminal: the run in flight is cancelled and resumes from its last epoch
            client.cancel(list(futures))
            return False
        return True
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def describe(task: dict[str, Any], result: dict[str, Any]) -> str:
    """One line per finished run: what it is, its dev and test figure, how long."""
    what = f"{task['head']} {task['variant']} s{task['seed']}"
    secs = result.get("seconds")
    took = f" ({secs:.0f}s)" if secs is not None else ""
    if result.get("skipped") == "busy":
        return f"busy  {what}: another process is training it now; left alone ({result['run_dir']})"
    if result["status"] == "complete":
        fig = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        from merc.pipelines.report import metric_name

        resumed = (" resumed" if result.get("action") == "resume" else
                   " (completed elsewhere)" if result.get("skipped") else "")
        name = metric_name(result["metric"]) if result.get("metric") else "?"
        return (f"done{resumed}  {what}: dev {name} {fig(result['dev'])}  test {fig(result['test'])}"
                f"{took}  {result['run_dir']}")
    if result["status"] == "interrupted":
        return f"interrupted  {what}{took}: resumes when the sweep is run again"
    return f"FAILED  {what}{took}: {result.get('error', '?')}  ({result['run_dir']})"

