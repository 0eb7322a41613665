"""`merc-heads plot`: every figure renders a non-empty PNG from a real small run, the heads' recorded figure data
add up (gate weights per class sum to 1, top-k usage counts to k per utterance, activation within the routed
decisions), recording changes nothing a run computes, `--against` draws the hand-computed mean ± std, and errors
are one-line messages.

Real runs of every paper head and a baseline on small planted-signal stores (tests/heads_synth.py), shrunk by
`small_overrides`, 2-3 epochs each.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from heads_synth import SynthSpec, build_store, features_arg, small_overrides
from typer.testing import CliRunner

from merc.heads.cli import app
from merc.heads.runs import RunRequest, train_run
from merc.pipelines.plot_against import Group, RunPoint, group_runs, metric_against, use_log_axis
from merc.pipelines.plots import figure_arrays, load_run_files, plot_run

torch.set_num_threads(1)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPLITS = {"train": 12, "dev": 5, "test": 5}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A categorical emotion store (t, a) and a MOSEI-like one with frames (sentiment + emotions) for MMoLRE."""
    root = tmp_path_factory.mktemp("plot-stores")
    cat = build_store(root / "cat.zarr", SynthSpec(splits=SPLITS, lengths=(3, 6), dims={"t": 8, "a": 8}, seed=21))
    mosei = build_store(root / "mosei.zarr", SynthSpec(kind="mosei", splits=SPLITS, lengths=(3, 6),
                                                      dims={"t": 8, "a": 8}, frames=(2, 4), seed=22))
    return {"cat": (str(root / "cat.zarr"), features_arg(cat, "ta")),
            "mosei": (str(root / "mosei.zarr"), features_arg(mosei, "ta"))}


def train(store: tuple[str, str], head: str, out: Path, name: str, *, epochs: int = 2, seed: int = 1,
          extra: dict[str, str] | None = None) -> Path:
    path, features = store
    overrides = {**small_overrides(head), **(extra or {})}
    res = train_run(RunRequest(head=head, store=path, dataset="synth", features=features, overrides=overrides,
                               seed=seed, precision="fp32", epochs=epochs, out=str(out), name=name, device="cpu"))
    return res.run_dir


HEAD_SETTINGS = {  # head -> (store, epochs, extra --set values)
    "mister-e": ("cat", 3, {}),
    "ada2i": ("cat", 2, {"head.start_mod": "1"}),  # gradient modulation from the first epoch
    "mmolre": ("mosei", 2, {"head.experts": "3", "head.top_k": "2", "head.unitse_blocks": "2"}),
    "summer": ("cat", 2, {}),
    "mlp": ("cat", 2, {}),
}


@pytest.fixture(scope="module")
def runs(stores, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("runs")
    return {head: train(stores[store], head, out, head, epochs=epochs, extra=extra)
            for head, (store, epochs, extra) in HEAD_SETTINGS.items()}


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def log_of(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def assert_png_with_content(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC, path
    pixels = imread(path)[..., :3].reshape(-1, 3)
    assert pixels.shape[0] > 100 * 100, path
    colours = np.unique(np.round(pixels * 255).astype(np.uint8), axis=0)
    assert len(colours) > 10, f"{path} is (nearly) one colour"  # axes, text and data, not a blank canvas


# -- every plot of every head ---------------------------------------------------------------------------------

EXPECTED = {
    "mister-e": {"confusion_test_emotion", "learning_curves", "per_class_f1_emotion", "gate_weights_test"},
    "ada2i": {"confusion_test_emotion", "learning_curves", "per_class_f1_emotion", "disparity_ratios"},
    # sentiment is a regression (no confusion matrix, no classes), emotions multi-label (F1 per emotion)
    "mmolre": {"learning_curves", "per_class_f1_emotions", "expert_usage_test"},
    "summer": {"confusion_test_emotion", "learning_curves", "per_class_f1_emotion", "expert_activation"},
    "mlp": {"confusion_test_emotion", "learning_curves", "per_class_f1_emotion"},
}


@pytest.mark.parametrize("head", list(EXPECTED))
def test_every_plot_renders_a_png_from_a_real_run(runs, head):
    paths = plot_run(runs[head])
    assert {p.stem for p in paths} == EXPECTED[head]
    for p in paths:
        assert p.parent == runs[head] / "plots" and p.suffix == ".png"
        assert_png_with_content(p)
    assert (runs[head] / "figures.json").exists() == (head != "mlp")  # a baseline records no figure data


def test_figure_data_of_the_log_and_of_figures_json_agree(runs):
    for head in ("mister-e", "ada2i", "mmolre", "summer"):
        run = load_run_files(runs[head])
        log = log_of(runs[head])
        assert [{"stage": r["stage"], "epoch": r["epoch"], **r["figures"]} for r in log] == run.figures["epochs"]
        assert run.figures["head"] == head and set(run.figures["splits"]) == {"train", "dev", "test"}
    assert all("figures" not in r for r in log_of(runs["mlp"]))


def test_mister_e_gate_weights_per_gold_class(runs):
    run = load_run_files(runs["mister-e"])
    assert run.figures["axes"] == {"experts": ["speech", "text", "fusion"],
                                   "classes": ["neutral", "joy", "anger", "sadness"]}
    metrics = metrics_of(runs["mister-e"])["splits"]
    for split in ("train", "dev", "test"):
        fig = figure_arrays(run, split)
        assert fig["gate_sum"].shape == (4, 3) and fig["gate_count"].shape == (4,)
        assert fig["gate_count"].sum() == metrics[split]["emotion"]["n"]  # every labelled utterance, once
        # gold counts per class = the confusion matrix's row sums
        assert fig["gate_count"].tolist() == np.sum(metrics[split]["emotion"]["confusion_matrix"], axis=1).tolist()
        seen = fig["gate_count"] > 0
        mean = fig["gate_sum"][seen] / fig["gate_count"][seen, None]
        np.testing.assert_allclose(mean.sum(axis=1), 1.0, atol=1e-5)  # a softmax gate per utterance
        assert (mean > 0).all() and (mean < 1).all()
    epochs = figure_arrays(run)
    assert epochs["gate_sum"].shape == (3, 4, 3)  # epochs x classes x experts
    assert (epochs["gate_count"].sum(axis=1) == metrics["train"]["emotion"]["n"]).all()


def test_ada2i_disparity_ratios_per_epoch(runs):
    run = load_run_files(runs["ada2i"])
    assert run.figures["axes"] == {"modalities": ["a", "t"]}
    epochs = figure_arrays(run)
    assert epochs["ratio_sum"].shape == (2, 2)
    batch = run.config["train"]["batch_size"]
    n_batches = math.ceil(SPLITS["train"] / batch)
    assert epochs["ratio_batches"].tolist() == [n_batches] * 2
    # rho_m = s_m / min s: every batch's ratios are >= 1, and the weakest modality's is exactly 1
    assert (epochs["ratio_sum"] >= epochs["ratio_batches"][:, None] - 1e-9).all()
    assert np.isfinite(epochs["ratio_sum"]).all() and (epochs["ratio_sum"] < 100 * n_batches).all()
    assert run.config["head"]["modulation"] is True and run.config["head"]["start_mod"] == 1


def test_mmolre_expert_usage_counts_top_k_per_utterance(runs):
    run = load_run_files(runs["mmolre"])
    axes = run.figures["axes"]
    assert axes == {"roles": ["t", "a"], "blocks": ["1", "2"], "tasks": ["sentiment", "emotions"],
                    "experts": ["1", "2", "3"]}
    metrics = metrics_of(runs["mmolre"])["splits"]
    for split in ("train", "test"):
        fig = figure_arrays(run, split)
        n = fig["utterances"]
        assert n == metrics[split]["sentiment"]["n"]  # every utterance of the split (all have a sentiment)
        assert fig["usage"].shape == (2, 2, 2, 3)  # roles x blocks x tasks x experts
        np.testing.assert_array_equal(fig["usage"].sum(axis=-1), 2 * n)  # top_k = 2 of 3 per utterance
        assert (fig["usage"] >= 0).all() and (fig["usage"] <= n).all()
        # gate weights of the selected experts: each <= 1, their sum per utterance < 1 (no renormalisation)
        assert (fig["gate_sum"] <= fig["usage"] + 1e-9).all()
        assert (fig["gate_sum"].sum(axis=-1) < n).all() and (fig["gate_sum"].sum(axis=-1) > 0.5 * n).all()
    epochs = figure_arrays(run)  # every training epoch routes every train utterance once per router
    assert epochs["usage"].shape == (2, 2, 2, 2, 3)
    np.testing.assert_array_equal(epochs["utterances"], metrics["train"]["sentiment"]["n"])
    np.testing.assert_array_equal(epochs["usage"].sum(axis=-1), 2 * metrics["train"]["sentiment"]["n"])


def test_summer_expert_activation_per_stage(runs):
    run = load_run_files(runs["summer"])
    assert run.figures["axes"] == {"modules": ["teacher (t)", "student t", "student a"], "experts": ["1", "2"]}
    n = metrics_of(runs["summer"])["splits"]["train"]["emotion"]["n"]
    records = run.figures["epochs"]
    assert [r["stage"] for r in records] == ["teacher", "teacher", "student", "student"]
    for r in records:
        active, routed = np.asarray(r["active"]), np.asarray(r["routed"])
        assert routed.tolist() == ([n, 0, 0] if r["stage"] == "teacher" else [0, n, n])
        assert (active <= routed[:, None]).all()
        on = routed > 0
        assert (active[on].sum(axis=1) >= routed[on]).all()  # an utterance's top expert is never switched off
        assert (active[~on] == 0).all()
    test = figure_arrays(run, "test")  # the final evaluation routes with the student
    assert test["routed"][0] == 0 and test["routed"][1] == test["routed"][2] > 0


@pytest.mark.parametrize("head", ["ada2i", "summer"])  # both draw random numbers (gradient noise, Gumbel routing)
def test_recording_figure_data_changes_nothing_the_run_computes(stores, runs, tmp_path, monkeypatch, head):
    from merc.heads.registry import head_class

    store, epochs, extra = HEAD_SETTINGS[head]
    monkeypatch.setattr(head_class(head), "figure_stats", lambda self, batch, out: {})
    plain = train(stores[store], head, tmp_path, "plain", epochs=epochs, extra=extra)
    assert not (plain / "figures.json").exists()
    assert (plain / "model.safetensors").read_bytes() == (runs[head] / "model.safetensors").read_bytes()
    assert metrics_of(plain)["splits"] == metrics_of(runs[head])["splits"]
    strip = [[{k: v for k, v in r.items() if k not in ("seconds", "figures")} for r in log_of(d)]
             for d in (plain, runs[head])]
    assert strip[0] == strip[1]


# -- the command ----------------------------------------------------------------------------------------------

def invoke(*args):
    return CliRunner().invoke(app, ["plot", *[str(a) for a in args]], env={"COLUMNS": "200"})


def test_cli_plots_a_run_into_a_chosen_folder_and_split(runs, tmp_path):
    res = invoke(runs["mister-e"], "--out", tmp_path / "figs", "--split", "dev")
    assert res.exit_code == 0, res.output
    printed = [Path(line) for line in res.output.splitlines()]
    assert {p.name for p in printed} == {"confusion_dev_emotion.png", "learning_curves.png",
                                         "per_class_f1_emotion.png", "gate_weights_dev.png"}
    for p in printed:
        assert p.parent == tmp_path / "figs"
        assert_png_with_content(p)


def test_a_run_without_figure_data_gets_the_other_plots_and_a_note(runs, tmp_path):
    old = tmp_path / "old-run"  # as a run trained before figure data was recorded
    shutil.copytree(runs["summer"], old, ignore=shutil.ignore_patterns("plots"))
    (old / "figures.json").unlink()
    res = invoke(old)
    assert res.exit_code == 0, res.output
    assert {Path(line).name for line in res.stdout.splitlines()} == \
        {"confusion_test_emotion.png", "learning_curves.png", "per_class_f1_emotion.png"}
    assert "note: no expert activation figure for this summer run: the run has no figures.json" in res.stderr


@pytest.fixture(scope="module")
def sweep(stores, tmp_path_factory) -> Path:
    """mlp runs: head.hidden in {8, 32} x seeds {1, 2}, as a sweep lays them out, plus one interrupted run."""
    root = tmp_path_factory.mktemp("sweep")
    for hidden in (8, 32):
        for seed in (1, 2):
            extra = {k: v for k, v in small_overrides("mlp").items() if k != "hidden"}
            train(stores["cat"], "mlp", root / "grid", f"h{hidden}-s{seed}", seed=seed,
                  extra={**extra, "head.hidden": str(hidden)})
    broken = root / "grid" / "h8-s3"
    shutil.copytree(root / "grid" / "h8-s1", broken)
    status = json.loads((broken / "run.json").read_text())
    (broken / "run.json").write_text(json.dumps({**status, "status": "interrupted"}))
    return root


def hand_computed(root: Path, metric: str) -> dict[int, tuple[float, float]]:
    values: dict[int, list[float]] = {}
    for d in sorted((root / "grid").iterdir()):
        if json.loads((d / "run.json").read_text())["status"] != "complete":
            continue
        hidden = json.loads((d / "config.json").read_text())["head"]["hidden"]
        values.setdefault(hidden, []).append(metrics_of(d)["splits"]["test"]["emotion"][metric])
    assert sorted(len(v) for v in values.values()) == [2, 2]
    return {k: (statistics.mean(v), statistics.stdev(v)) for k, v in values.items()}


@pytest.mark.parametrize("metric", [None, "accuracy"])
def test_against_plots_hand_computed_means_and_stds(sweep, metric):
    args = ["--metric", metric] if metric else []
    res = invoke(sweep, "--against", "head.hidden", *args)
    assert res.exit_code == 0, res.output
    name = metric or "weighted_f1"  # the runs' monitor metric by default
    png, table = sweep / "plots" / f"{name}_vs_head.hidden_test.png", sweep / "plots" / f"{name}_vs_head.hidden_test.csv"
    assert res.stdout.split() == [str(png), str(table)]
    assert_png_with_content(png)
    rows = list(csv.DictReader(table.open()))
    expected = hand_computed(sweep, name)
    assert [r["value"] for r in rows] == ["8", "32"]  # value order
    for r in rows:
        mean, std = expected[int(r["value"])]
        assert r["n"] == "2" and r["metric"] == name and r["seeds"] == "1;2"
        assert float(r["mean"]) == pytest.approx(mean, abs=1e-12)
        assert float(r["std"]) == pytest.approx(std, abs=1e-12)
    assert "h8-s3 (status interrupted)" in res.stderr  # the incomplete run is left out, and said so


def test_against_reads_the_value_from_sweep_json_first(sweep, tmp_path):
    copy = tmp_path / "runs"
    shutil.copytree(sweep / "grid", copy)
    for d in copy.iterdir():
        hidden = json.loads((d / "config.json").read_text())["head"]["hidden"]
        (d / "sweep.json").write_text(json.dumps({"sweep": "widths", "variant": f"w{hidden}", "seed": 1, "run_id": d.name,
                                                  "values": {"head.hidden": "narrow" if hidden == 8 else "wide"}}))
    result = metric_against(copy, "head.hidden", out_dir=tmp_path / "out")
    assert [g.label for g in result.groups] == ["narrow", "wide"] and [g.n for g in result.groups] == [2, 2]
    expected = hand_computed(sweep, "weighted_f1")
    assert result.groups[0].mean == pytest.approx(expected[8][0]) and result.groups[1].std == pytest.approx(expected[32][1])
    assert not result.log_x and result.png.parent == tmp_path / "out"


def test_against_axis_and_value_order():
    assert use_log_axis([1e-4, 3e-4, 1e-2]) and use_log_axis([1, 128])
    assert not use_log_axis([16, 32, 64]) and not use_log_axis([0, 1e-4, 1e-2]) and not use_log_axis(["a", "b"])
    assert not use_log_axis([True, 1000])
    points = [RunPoint(Path(f"r{i}"), v, m, i) for i, (v, m) in enumerate([(128, 0.5), (16, 0.3), (8, 0.2), (16, 0.5),
                                                                          (128.0, 0.7), ("x", 0.1)])]
    groups = group_runs(points)
    assert [g.label for g in groups] == ["8", "16", "128", "x"]  # numeric order (128 and 128.0 together), then text
    assert [g.n for g in groups] == [1, 2, 2, 1]
    assert groups[1].mean == pytest.approx(0.4) and groups[1].std == pytest.approx(statistics.stdev([0.3, 0.5]))
    assert math.isnan(Group(8, "8", [points[2]]).std)  # one run: no spread to draw


# -- errors -----------------------------------------------------------------------------------------------------

def assert_one_line_error(res, *parts: str) -> None:
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and "Traceback" not in res.output
    flat = " ".join(res.output.split())
    for part in parts:
        assert part in flat, res.output


def test_errors_are_messages_naming_the_path_and_the_fix(runs, sweep, tmp_path):
    assert_one_line_error(invoke(tmp_path / "nowhere"), str(tmp_path / "nowhere"), "not a run directory", "Fix:")
    assert_one_line_error(invoke(sweep / "grid"), "not a run directory (no config.json)", "--against")
    assert_one_line_error(invoke(sweep / "grid" / "h8-s3"), "h8-s3", "not complete (status interrupted",
                          "merc-heads train --resume")
    assert_one_line_error(invoke(runs["mlp"], "--split", "valid"), "no 'valid' split", "use --split")
    assert_one_line_error(invoke(runs["mlp"], "--metric", "accuracy"), "--metric applies to --against only")
    assert_one_line_error(invoke(sweep, "--against", "head.width"), "has the option 'head.width'",
                          "options that vary between these runs: head.hidden")
    assert_one_line_error(invoke(sweep, "--against", "head.hidden", "--metric", "f2"), "no metric 'f2'",
                          "use --metric one of accuracy")
    empty = tmp_path / "empty"
    shutil.copytree(sweep / "grid" / "h8-s3", empty / "h8-s3")
    assert_one_line_error(invoke(empty, "--against", "head.hidden"), "no complete run under", "(1 incomplete")
