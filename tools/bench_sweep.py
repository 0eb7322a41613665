"""Benchmark `merc-heads sweep`: a 24-run sweep of a baseline head on the demo store, three ways, in one run.

    .venv/bin/python tools/bench_sweep.py [--store demo_out/cache.zarr] [--head dialogue-gru] [--runs 24]
                                          [--epochs 20] [--work /tmp/bench-sweep]

1. the obvious simple way: a shell loop of `merc-heads train`, one process per run (each imports torch and
   reads the store again);
2. `merc-heads sweep --workers 1` (one process with all cores' threads, features read once);
3. `merc-heads sweep --workers 2` (two single-thread processes; features read once per worker).

Reported: wall time of each, the speed-ups against (1) and 2 workers against 1, and the per-run overhead of a
sweep worker: the worker's spawn (its first run's start minus the sweep's start, shared by the runs it serves)
plus each run's setup (feature load + head build, until training starts), as a share of a run's time.
The runs are `--runs` / 3 variants (head.hidden) x 3 seeds, `--epochs` epochs each, early stopping off so every
run does the same work. Needs the demo store (`make demo` makes demo_out/cache.zarr).

Not a test: numbers depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def sweep_file(work: Path, head: str, runs: int, epochs: int) -> Path:
    seeds = 3
    variants = runs // seeds
    hidden = [16, 32, 64, 128, 256, 48, 96, 192, 24, 40, 80, 160][:variants]
    spec = {"name": f"bench-{head}", "head": head, "dataset": "meld", "features": "t=minilm,a=egemaps",
            "preset": "none", "seeds": seeds,
            "set": {"train.epochs": epochs, "train.patience": 10_000},
            "variants": [{"name": f"h{h}", "set": {"head.hidden": h}} for h in hidden]}
    path = work / "sweep.json"
    path.write_text(json.dumps(spec, indent=1))
    return path


def plain_loop(spec_path: Path, store: str, out: Path) -> float:
    """One `merc-heads train` per run, as a for-loop in a shell script would do it."""
    spec = json.loads(spec_path.read_text())
    t0 = time.perf_counter()
    for v in spec["variants"]:
        for seed in range(1, spec["seeds"] + 1):
            sets = [x for k, val in {**spec["set"], **v["set"]}.items() for x in ("--set", f"{k}={val}")]
            subprocess.run([str(BIN / "merc-heads"), "train", "--head", spec["head"], "--store", store,
                            "--dataset", spec["dataset"], "--features", spec["features"], "--preset", "none",
                            "--seed", str(seed), "--out", str(out), *sets],
                           check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - t0


def sweep(spec_path: Path, store: str, out: Path, workers: int) -> tuple[float, list[dict]]:
    from merc.data_manifests.console import make_console
    from merc.pipelines.sweep import run_sweep

    console = make_console(stderr=True)
    t0, wall0 = time.perf_counter(), time.time()
    outcome = run_sweep(spec_path, store=store, out=out, workers=workers, console=console)
    seconds = time.perf_counter() - t0
    assert outcome.count("complete") == len(outcome.results), [r for r in outcome.results if r["status"] != "complete"]
    for r in outcome.results:
        r["queued_at"] = wall0
    return seconds, outcome.results


def by_worker(results: list[dict]) -> dict[int, list[dict]]:
    by_pid: dict[int, list[dict]] = {}
    for r in results:
        by_pid.setdefault(r["pid"], []).append(r)
    return by_pid


def overhead(results: list[dict], sweep_start: float) -> dict[str, float]:
    """Spawn per worker (first start - sweep start), shared over its runs, + each run's setup, vs run time."""
    by_pid = by_worker(results)
    spawn = {pid: min(x["started"] for x in rs) - sweep_start for pid, rs in by_pid.items()}
    per_run = [spawn[r["pid"]] / len(by_pid[r["pid"]]) + (r["setup_seconds"] or 0.0) for r in results]
    run = [r["seconds"] for r in results]
    first_setup = [min(rs, key=lambda x: x["started"])["setup_seconds"] for rs in by_pid.values()]
    later_setup = [r["setup_seconds"] for r in results if r["setup_seconds"] not in first_setup]
    return {"spawn_s": statistics.mean(spawn.values()), "setup_first_s": statistics.mean(first_setup),
            "setup_later_s": statistics.mean(later_setup) if later_setup else float("nan"),
            "overhead_per_run_s": statistics.mean(per_run), "run_s": statistics.mean(run),
            "share": statistics.mean(per_run) / statistics.mean(run)}


def timeline(results: list[dict], sweep_start: float, wall: float) -> str:
    """Where a sweep's wall time went, per worker: before its first run, in runs, idle after its last."""
    parts = []
    for rs in by_worker(results).values():
        first = min(x["started"] for x in rs) - sweep_start
        last = max(x["ended"] for x in rs) - sweep_start
        busy = sum(x["seconds"] for x in rs)
        parts.append(f"worker {len(parts) + 1}: {len(rs)} runs, starts at {first:.2f} s, busy {busy:.1f} s, "
                     f"done at {last:.1f} s, then idle {wall - last:.2f} s")
    return "; ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="demo_out/cache.zarr")
    ap.add_argument("--head", default="dialogue-gru")
    ap.add_argument("--runs", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench-sweep"))
    ap.add_argument("--skip-loop", action="store_true", help="skip the plain per-run loop (the slowest part)")
    ap.add_argument("--cli", action="store_true", help="also time the two sweeps as whole `merc-heads sweep` commands")
    args = ap.parse_args()
    if not (Path(args.store) / "zarr.json").exists():
        raise SystemExit(f"no store at {args.store}: run `make demo` first (it writes demo_out/cache.zarr)")
    os.environ["HF_HUB_OFFLINE"] = "1"
    import merc.heads.runs  # noqa: F401 - the parent's own imports (torch ...) before any timing, so that the first
    import merc.pipelines.sweep  # noqa: F401 - sweep timed does not pay them and the second not
    from merc.pipelines.sweep.procs import context, start_server

    start_server()  # and the workers' server (the command starts it beside its own imports): ready before timing
    warm = context().Process(target=int)
    warm.start()
    warm.join()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    spec = sweep_file(args.work, args.head, args.runs, args.epochs)
    n = json.loads(spec.read_text())
    n_runs = len(n["variants"]) * n["seeds"]
    print(f"{n_runs} runs of {args.head}, {args.epochs} epochs each, on {args.store}; {os.cpu_count()} cores",
          flush=True)
    loop = None if args.skip_loop else plain_loop(spec, args.store, args.work / "loop")
    if loop is not None:
        print(f"plain loop of merc-heads train: {loop:.1f} s", flush=True)
    t_start = time.time()
    one, res1 = sweep(spec, args.store, args.work / "w1", 1)
    ov1 = overhead(res1, t_start)
    print(f"sweep --workers 1: {one:.1f} s ({timeline(res1, t_start, one)})", flush=True)
    t_start = time.time()
    two, res2 = sweep(spec, args.store, args.work / "w2", 2)
    ov2 = overhead(res2, t_start)
    print(f"sweep --workers 2: {two:.1f} s ({timeline(res2, t_start, two)})", flush=True)

    print()
    print("| way | wall s | vs plain loop | per-run overhead (spawn share + setup) | overhead / run time |")
    print("|---|---|---|---|---|")
    if loop is not None:
        print(f"| plain loop of `merc-heads train` ({n_runs} processes) | {loop:.1f} | 1.00x | – | – |")
    for name, secs, ov in (("sweep --workers 1", one, ov1), ("sweep --workers 2", two, ov2)):
        vs = f"{loop / secs:.2f}x" if loop is not None else "–"
        print(f"| `merc-heads {name}` | {secs:.1f} | {vs} | {ov['overhead_per_run_s']:.2f} s "
              f"(spawn {ov['spawn_s']:.1f} s/worker, setup first {ov['setup_first_s']:.2f} s, later "
              f"{ov['setup_later_s']:.2f} s) | {100 * ov['share']:.1f} % of {ov['run_s']:.2f} s |")
    print(f"\nspeed-up of 2 workers over 1: {one / two:.2f}x")
    if args.cli:
        cli = {w: cli_sweep(spec, args.store, args.work / f"cli{w}", w) for w in (1, 2)}
        print(f"whole commands (`merc-heads sweep`, a new process each, its imports and worker server included): "
              f"--workers 1 {cli[1]:.1f} s, --workers 2 {cli[2]:.1f} s: {cli[1] / cli[2]:.2f}x")


def cli_sweep(spec_path: Path, store: str, out: Path, workers: int) -> float:
    """The command a user types, timed from its start to its exit."""
    t0 = time.perf_counter()
    subprocess.run([str(BIN / "merc-heads"), "sweep", str(spec_path), "--store", store, "--out", str(out),
                    "--workers", str(workers)], check=True, capture_output=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
