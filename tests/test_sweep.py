"""`merc-heads sweep`: planning (ids, variants x grid x seeds, checks before anything runs), --dry-run changes
nothing, workers keep features, a killed sweep rerun gives every run exactly once, and dask runs the same runs.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from heads_synth import SynthSpec, build_store, features_arg
from typer.testing import CliRunner

from merc.heads.checkpoint import read_status
from merc.heads.cli import app
from merc.heads.data import HeadsError
from merc.pipelines.sweep import Variant, expand, load_spec, run_sweep
from merc.pipelines.sweep.engine import run_state
from merc.pipelines.sweep.spec import RECIPES, recipe_path

BIN = Path(sys.executable).parent / "merc-heads"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep-store") / "s.zarr"
    names = build_store(path, SynthSpec(splits={"train": 24, "dev": 8, "test": 8}, lengths=(3, 6),
                                        dims={"t": 8, "a": 8}, seed=3))
    return str(path), features_arg(names, "ta")


def spec_dict(features: str, **extra) -> dict:
    return {"name": "grid", "head": "mlp", "dataset": "synth", "features": features,
            "set": {"train.epochs": 2, "head.hidden": 16}, "seeds": 2,
            "variants": [{"name": "base"}, {"name": "no-dropout", "set": {"head.dropout": 0.0}}],
            "grid": {"optim.lr": [1e-3, 3e-3]}, **extra}


def write_spec(tmp_path: Path, spec: dict, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def test_expand_crosses_variants_grid_and_seeds_with_stable_distinct_ids(store, tmp_path):
    path, features = store
    spec = load_spec(spec_dict(features))
    planned = expand(spec, store=path)
    assert len(planned) == 2 * 2 * 2
    assert len({p.run_id for p in planned}) == 8
    assert {p.variant for p in planned} == {"base[optim.lr=0.001]", "base[optim.lr=0.003]",
                                            "no-dropout[optim.lr=0.001]", "no-dropout[optim.lr=0.003]"}
    again = expand(load_spec(spec_dict(features)), store=path)
    assert [p.run_id for p in again] == [p.run_id for p in planned]  # the id is the config, not the order
    p = next(p for p in planned if p.variant == "no-dropout[optim.lr=0.003]" and p.seed == 2)
    assert p.config.head.dropout == 0.0 and p.config.optim.lr == 3e-3 and p.config.train.seed == 2
    assert p.config.train.epochs == 2 and p.values == {"train.epochs": 2, "head.hidden": 16, "head.dropout": 0.0,
                                                       "optim.lr": 3e-3}
    # a command-line override wins over the file, and changes the ids
    over = expand(spec, store=path, overrides=Variant(name="", sets={"train.epochs": "3"}))
    assert all(q.config.train.epochs == 3 for q in over)
    assert not {q.run_id for q in over} & {q.run_id for q in planned}


def test_a_bad_key_or_value_fails_before_any_run_naming_the_variant(store, tmp_path):
    path, features = store
    bad = spec_dict(features, variants=[{"name": "ok"}, {"name": "typo", "set": {"head.hiden": 3}}])
    with pytest.raises(HeadsError, match="variant 'typo.*hiden"):
        expand(load_spec(bad), store=path)
    with pytest.raises(HeadsError, match="unknown key"):
        load_spec(spec_dict(features, grids={}))
    with pytest.raises(HeadsError, match="used twice"):
        load_spec(spec_dict(features, variants=[{"name": "a"}, {"name": "a"}]))
    same = spec_dict(features, grid={}, variants=[{"name": "a"}, {"name": "b", "set": {"head.hidden": 16}}])
    with pytest.raises(HeadsError, match="same config"):
        expand(load_spec(same), store=path)
    result = CliRunner().invoke(app, ["sweep", str(write_spec(tmp_path, bad)), "--store", path,
                                      "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "typo" in result.output and not (tmp_path / "runs").exists()


def test_dry_run_changes_nothing_and_lists_each_run(store, tmp_path):
    path, features = store
    spec_file = write_spec(tmp_path, spec_dict(features))
    before = sorted(p for p in tmp_path.rglob("*"))
    result = CliRunner().invoke(app, ["sweep", str(spec_file), "--store", path, "--out", str(tmp_path / "runs"),
                                      "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.output.count("would train") == 8 and "nothing was changed" in result.output
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_workers_read_each_feature_set_once_and_a_rerun_skips_complete_runs(store, tmp_path):
    path, features = store
    spec = spec_dict(features, grid={}, variants=[{"name": "h16"}, {"name": "h24", "set": {"head.hidden": 24}}])
    outcome = run_sweep(spec, store=path, out=tmp_path / "runs", workers=1)
    assert outcome.count("complete") == 4 and not outcome.interrupted
    reads = sorted(r["store_reads"] for r in outcome.results)
    assert reads == [0, 0, 0, 2]  # one worker: the first run reads text and audio, the others read nothing
    for r in outcome.results:
        info = json.loads((Path(r["run_dir"]) / "sweep.json").read_text())
        assert info["variant"] == r["variant"] and info["seed"] == r["seed"] and info["sweep"] == "grid"
        assert read_status(Path(r["run_dir"]))["status"] == "complete"
    again = run_sweep(spec, store=path, out=tmp_path / "runs", workers=1)
    assert again.results == [] and again.found["complete"] == 4


def _children_alive(pgid: int) -> list[int]:
    """Processes still alive in the sweep's process group (its workers)."""
    out = subprocess.run(["ps", "-eo", "pid=,pgid=,stat="], capture_output=True, text=True).stdout.split("\n")
    return [int(p) for p, g, st in (line.split() for line in out if line.strip()) if int(g) == pgid and
            not st.startswith("Z")]


def _statuses(root: Path) -> dict[str, dict]:
    return {d.name: read_status(d) for d in sorted(root.iterdir()) if d.is_dir()}


def _background_job() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # what a shell does to `cmd &`; spawned workers inherit it


@pytest.mark.parametrize("how", ["sigkill-group", "sigkill-sweep", "sigint-group", "sigterm-background-sweep"])
def test_a_killed_sweep_rerun_gives_every_run_exactly_once(store, tmp_path, how):
    """Stop the sweep mid-way: SIGKILL to its whole process group (a killed job), SIGKILL to the sweep process
    alone (its workers then mark their runs interrupted and exit), SIGINT to the group (Ctrl-C in a terminal),
    or SIGTERM to the sweep process alone when it runs as a background job (SIGINT ignored, `kill <pid>`); rerun the same command: every run exists once and is complete, the runs that had finished are
    untouched, the one in flight resumed from its last completed epoch, and no orphan trained on."""
    path, features = store
    spec = {"name": "kill", "head": "mlp", "dataset": "synth", "features": features, "seeds": 3,
            "set": {"train.epochs": 100, "train.patience": 1000, "head.hidden": 256, "train.batch_size": 8}}
    spec_file = write_spec(tmp_path, spec)
    cmd = [str(BIN), "sweep", str(spec_file), "--store", path, "--out", str(tmp_path / "runs"), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=ENV, start_new_session=True,
                            text=True, preexec_fn=_background_job if how.startswith("sigterm") else None)
    root = tmp_path / "runs" / "kill"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # one run complete and the next one past its first epoch
        st = _statuses(root) if root.exists() else {}
        if any(s and s["status"] == "complete" for s in st.values()) and \
                any(s and s["status"] == "running" and s.get("epochs_done", 0) >= 2 for s in st.values()):
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the sweep never reached a complete run and a running one")
    if how == "sigkill-group":
        os.killpg(proc.pid, signal.SIGKILL)
    elif how == "sigkill-sweep":
        os.kill(proc.pid, signal.SIGKILL)
    elif how == "sigint-group":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    if not how.startswith("sigkill"):
        assert proc.returncode == 130, output
        assert "rerun the same command" in output and "Traceback" not in output
    deadline = time.monotonic() + 30
    while _children_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in _children_alive(proc.pid)], "a worker outlived the sweep"
    before = _statuses(root)
    complete_before = {n: s for n, s in before.items() if s and s["status"] == "complete"}
    in_flight = [n for n, s in before.items() if s and s["status"] in ("running", "interrupted")]
    assert complete_before and len(in_flight) == 1, before
    if how != "sigkill-group":
        assert before[in_flight[0]]["status"] == "interrupted"
    assert run_state(root / in_flight[0]) == "resumable"
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    after = _statuses(root)
    assert len(after) == 3 and all(s["status"] == "complete" for s in after.values())  # 3 runs, no duplicates
    for name, s in complete_before.items():  # finished runs were not trained again
        assert after[name]["created"] == s["created"] and after[name]["model_sha256"] == s["model_sha256"]
        assert not after[name].get("resumed")
    assert after[in_flight[0]]["resumed"] and after[in_flight[0]]["resumed"][0]["epochs_done"] >= 2
    assert "done resumed" in rerun.stdout
    ids = [json.loads((root / n / "sweep.json").read_text())["run_id"] for n in after]
    assert len(set(ids)) == 3 and all(n.endswith(i) for n, i in zip(after, ids, strict=True))


def test_a_failed_run_is_reported_and_trained_again(store, tmp_path):
    path, features = store
    spec = {"name": "f", "head": "mlp", "dataset": "synth", "features": features, "seeds": 1,
            "set": {"train.epochs": 2, "head.hidden": 16}}
    outcome = run_sweep(spec, store=path, out=tmp_path / "runs", workers=1)
    run_dir = Path(outcome.results[0]["run_dir"])
    status = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**status, "status": "failed", "error": "boom"}))
    assert run_state(run_dir) == "failed"
    again = run_sweep(spec, store=path, out=tmp_path / "runs", workers=1)
    assert [r["status"] for r in again.results] == ["complete"] and again.results[0]["action"] == "train"
    assert read_status(run_dir)["status"] == "complete" and len(list(run_dir.parent.iterdir())) == 1


def test_dask_local_cluster_runs_the_same_runs(store, tmp_path):
    path, features = store
    spec = spec_dict(features, grid={}, variants=[{"name": "only"}])
    outcome = run_sweep(spec, store=path, out=tmp_path / "runs", workers=2, use_dask=True)
    assert outcome.count("complete") == 2
    planned = expand(load_spec(spec), store=path, out=str(tmp_path / "runs" / "grid"))
    assert {Path(r["run_dir"]).name for r in outcome.results} == {p.dirname for p in planned}
    assert all(r["threads"] == 1 for r in outcome.results)  # 2 single-thread workers on 2 cores


def test_every_packaged_recipe_plans(tmp_path):
    """Each recipe resolves (every key and value checked against the heads' config trees and presets), and its
    runs are distinct configs; `--seeds 1 --set train.epochs=1` shrinks it for the demo store."""
    recipes = sorted(RECIPES.glob("*.yaml"))
    assert {r.stem for r in recipes} >= {"mister_e_ablations", "ada2i_ablations", "summer_ablations",
                                         "mmolre_ablations", "meld_text_heads"}
    for recipe in recipes:
        spec = load_spec(recipe_path(recipe.stem))
        planned = expand(spec, store=str(tmp_path / "cache.zarr"), seeds=[1],
                         overrides=Variant(name="", sets={"train.epochs": "1"}))
        assert len(planned) == len(spec.variants) >= 2, recipe.name
        assert all(p.config.train.epochs == 1 for p in planned)
        with_preset = [p for p in planned if p.head not in ("mlp", "late-fusion") and p.variant != "gru-default"]
        assert all(p.config.preset for p in with_preset), recipe.name  # the head's preset for the dataset


def test_kept_features_are_read_once_and_equal_a_fresh_read(store):
    """A process that keeps features (a sweep worker) gets the same data as a fresh read, without reading again;
    a checkpoint's fingerprint that no longer matches is still refused."""
    import numpy as np

    from merc.extract.store import StoreError
    from merc.heads import feature_cache
    from merc.heads.data import HeadsData

    path, features = store
    fresh = HeadsData.load(path, "synth", features)
    feature_cache.keep_features()
    try:
        first = HeadsData.load(path, "synth", features)
        second = HeadsData.load(path, "synth", features, normalize="none")
        assert feature_cache.stats["pooled_reads"] == 2 and feature_cache.stats["pooled_hits"] == 2
        for role in fresh.feats:
            assert np.array_equal(fresh.feats[role].numpy(), first.feats[role].numpy())
            assert not np.array_equal(first.feats[role].numpy(), second.feats[role].numpy())  # own normalisation
        with pytest.raises(StoreError, match="fingerprint"):
            HeadsData.load(path, "synth", features, fingerprints={"t": "0" * 16})
    finally:
        feature_cache.clear()


def test_an_existing_dask_scheduler_takes_the_runs(store, tmp_path):
    """`--scheduler ADDR`: the runs go to a running cluster's workers (here a LocalCluster started by the test);
    each run's torch threads are this host's cores shared among the cluster's worker threads on it."""
    from distributed import LocalCluster

    path, features = store
    spec = spec_dict(features, grid={}, variants=[{"name": "only"}], seeds=[5])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        outcome = run_sweep(spec, store=path, out=tmp_path / "runs", scheduler=cluster.scheduler_address)
    assert [r["status"] for r in outcome.results] == ["complete"]
    assert outcome.results[0]["threads"] == max(1, (os.cpu_count() or 1) // 1)
    assert json.loads((Path(outcome.results[0]["run_dir"]) / "sweep.json").read_text())["seed"] == 5


def test_runs_of_equal_cost_start_biggest_first(store, tmp_path):
    """Runs of one head and schedule differ in time by their size: the sweep counts each head's parameters on
    torch's meta device and starts the biggest first, so that no long run is left for the end."""
    from merc.pipelines.sweep.engine import plan_states, tasks_for

    path, features = store
    spec = spec_dict(features, grid={}, seeds=1, variants=[{"name": f"h{h}", "set": {"head.hidden": h}}
                                                            for h in (8, 64, 16, 32)])
    planned = expand(load_spec(spec), store=path)
    assert all(p.size > 0 for p in planned)
    sizes = {p.variant: p.size for p in planned}
    assert sizes["h64"] > sizes["h32"] > sizes["h16"] > sizes["h8"]
    order = [t["variant"] for t in tasks_for(load_spec(spec), plan_states(planned, tmp_path), tmp_path, 1)]
    assert order == ["h64", "h32", "h16", "h8"]


def test_forked_workers_take_the_sweeps_directory_and_environment(tmp_path, monkeypatch):
    """Local workers fork from a server that may have started earlier (another sweep in this process), under
    another directory and environment: each takes the sweep's own, as a spawned process would."""
    from concurrent.futures import ProcessPoolExecutor

    from merc.pipelines.sweep.procs import context, parent_state, start_server
    from merc.pipelines.sweep.worker import configure

    start_server()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MERC_SWEEP_TEST", "from-the-sweep")
    with ProcessPoolExecutor(1, mp_context=context(), initializer=configure, initargs=(1, parent_state())) as pool:
        assert pool.submit(os.getcwd).result() == str(tmp_path)
        assert pool.submit(os.getenv, "MERC_SWEEP_TEST").result() == "from-the-sweep"
