"""`run_sweep`, what `merc-heads sweep` calls: plan (every run resolved before any starts), show or run what is
left, one line per finished run, one bar for the sweep, a closing summary."""

from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from pathlib import Path

from merc.data_manifests.console import TerminalBar

from .engine import STATES, SweepOutcome, describe, local_threads, plan_states, run_dask, run_local, tasks_for
from .spec import PlannedRun, Variant, expand, load_spec


def run_sweep(spec_file: str | Path | dict, *, store: str | None = None, out: str | Path = "runs",
              workers: int = 1, scheduler: str | None = None, use_dask: bool = False, dry_run: bool = False,
              overrides: Variant | None = None, seeds: list[int] | None = None, console=None,
              argv: list[str] | None = None) -> SweepOutcome:
    """Plan the sweep, then (unless `dry_run`) train what is not complete. See pipelines/sweep/engine.py."""
    from rich.markup import escape

    from merc.data_manifests.console import make_console
    from merc.heads.data import HeadsError

    console = console or make_console()
    if workers < 1:
        raise HeadsError(f"--workers {workers} must be >= 1", fix="pass --workers 1 (or the number of cores)")
    spec = load_spec(spec_file)
    out_dir = Path(out) / spec.name
    planned = expand(spec, store=store, out=str(out_dir), overrides=overrides, seeds=seeds)
    states = plan_states(planned, out_dir)
    found = Counter(s for _, s in states)
    outcome = SweepOutcome(out_dir=out_dir, found=found)
    n_var = len({p.variant for p in planned})
    n_seeds = len({p.seed for p in planned})
    summary = ", ".join(f"{found[s]} {s}" for s in STATES if found[s])
    console.print(escape(f"sweep {spec.name}: {len(planned)} runs ({n_var} variant{'s' * (n_var != 1)} x "
                         f"{n_seeds} seed{'s' * (n_seeds != 1)}) in {out_dir}: {summary}"))
    if dry_run:
        _print_plan(console, states, out_dir)
        console.print("dry run: nothing was changed")
        return outcome
    for p, s in states:
        if s == "busy":
            console.print(escape(f"busy  {p.variant} s{p.seed}: another process is training {out_dir / p.dirname}; "
                                 "left alone"))
    threads = None if (use_dask or scheduler) else local_threads(workers)
    tasks = tasks_for(spec, states, out_dir, threads)
    if not tasks:
        console.print(escape(f"nothing to do: every run is complete. Report: merc-heads report {out_dir} --by variant"))
        return outcome
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    progress = _SweepProgress(console, len(tasks))

    def on_done(task: dict, result: dict) -> None:
        if result["status"] == "not started":
            return  # queued to a worker when the sweep was stopped; a rerun does it
        outcome.results.append({**result, "variant": task["variant"], "seed": task["seed"], "head": task["head"]})
        progress.finished(describe(task, result))

    where = (f"dask scheduler {scheduler}" if scheduler else f"a dask LocalCluster of {workers}" if use_dask
             else f"{workers} local worker{'s' * (workers != 1)} x {threads} thread{'s' * (threads != 1)}")
    console.print(escape(f"running {len(tasks)} run{'s' * (len(tasks) != 1)} on {where}, longest first"))
    with progress, _sigterm_as_interrupt():
        try:
            if use_dask or scheduler:
                finished = run_dask(tasks, workers, scheduler, on_done)
            else:
                finished = run_local(tasks, workers, on_done)
        except KeyboardInterrupt:
            finished = False
    outcome.interrupted = not finished
    outcome.seconds = time.perf_counter() - t0
    _print_summary(console, outcome, len(planned), argv)
    return outcome


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """`kill <sweep>` stops it as Ctrl-C does: workers asked to stop, runs marked interrupted, a summary."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_plan(console, states: list[tuple[PlannedRun, str]], out_dir: Path) -> None:
    from rich.markup import escape

    verb = {"complete": "complete, skipped", "resumable": "would resume", "failed": "would train again",
            "busy": "busy elsewhere, left alone", "new": "would train"}
    for p, s in sorted(states, key=lambda ps: (ps[0].variant, ps[0].seed)):
        console.print(escape(f"  {verb[s]:<28} {p.variant} s{p.seed}  {out_dir / p.dirname}"))


def _print_summary(console, outcome: SweepOutcome, total: int, argv: list[str] | None) -> None:
    import shlex

    from rich.markup import escape

    done, failed, stopped = outcome.count("complete"), outcome.count("failed"), outcome.count("interrupted")
    busy = outcome.count("busy") + outcome.found["busy"]
    already = outcome.found["complete"]
    line = (f"sweep {'interrupted' if outcome.interrupted else 'finished'}: {done} trained, {already} already "
            f"complete, {failed} failed, {stopped} interrupted, {busy} busy elsewhere, of {total} runs in "
            f"{outcome.seconds:.0f}s")
    console.print(escape(line))
    if outcome.interrupted or failed or stopped or busy:
        cmd = " ".join(shlex.quote(a) for a in (argv or sys.argv))
        console.print(escape(f"rerun the same command to finish it (complete runs are skipped, interrupted ones "
                             f"resume, failed ones train again): {cmd}"))
    if done + already:
        console.print(escape(f"report: merc-heads report {outcome.out_dir} --by variant"))


class _SweepProgress(TerminalBar):
    """One bar for the whole sweep (on a terminal), one printed line per finished run."""

    def __init__(self, console, total: int):
        self.console = console
        self.progress = None
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                     console=console, transient=True)
            self.task = self.progress.add_task("sweep", total=total)

    def finished(self, line: str) -> None:
        from rich.markup import escape

        self.console.print(escape(line))
        if self.progress is not None:
            self.progress.update(self.task, advance=1)
