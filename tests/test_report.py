"""`merc-heads report`: mean ± std over seeds, best-on-dev selection, paired baseline comparison, markdown/CSV.

The unit tests write small run directories by hand (config.json, metrics.json, run.json, sweep.json with made-up
numbers, shaped as heads/runs.py writes them); `test_report_of_real_runs` checks that contract against runs
trained for real.
"""

import csv
import io
import json
import math

import pytest
import torch
from heads_synth import SynthSpec, build_store, features_arg
from typer.testing import CliRunner

from merc.heads.cli import app
from merc.heads.data import HeadsError
from merc.pipelines.report import aggregate, collect, csv_text, markdown, metric_name, report

torch.set_num_threads(1)
runner = CliRunner()

CLASSES = ["neutral", "joy", "anger"]


def write_run(root, name, *, seed, dev, test, head="mlp", dataset="synth", features=None, variant=None,
              sweep="abl", status="complete", task="emotion", kind="categorical", monitor="weighted_f1",
              extra=None, per_class=None, config=None):
    """A run directory as heads/runs.py writes it: `dev`/`test` are the monitor's values, `extra` more metrics
    ({metric: (dev, test)}), `per_class` {class: (dev F1, test F1)}, `config` dotted keys of the tree."""
    d = root / name
    d.mkdir(parents=True)
    features = features or {"t": "text32"}
    tree = {"head": {"name": head, "hidden": 32}, "optim": {"name": "adamw", "lr": 1e-3},
            "train": {"seed": seed, "epochs": 2, "monitor": None},
            "data": {"dataset": dataset, "features": features, "tasks": [task]}}
    for key, value in (config or {}).items():
        ns, k = key.split(".", 1)
        tree[ns][k] = value
    classes = CLASSES if kind == "categorical" else []
    cfg = {"merc_run_format": 3, **tree, "preset": None, "features": features,
           "tasks": [{"name": task, "kind": kind, "classes": classes}], "monitor": monitor}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "run.json").write_text(json.dumps({"status": status}))
    if variant is not None:
        (d / "sweep.json").write_text(json.dumps({"sweep": sweep, "variant": variant, "values": {}, "seed": seed,
                                                  "run_id": name}))
    if status != "complete":
        return d

    def split(value, which):
        m = {"n": 40, monitor: value}
        for k, v in (extra or {}).items():
            m[k] = v[which]
        if per_class:
            m["per_class"] = {c: {"precision": 0.5, "recall": 0.5, "f1": v[which], "support": 10}
                              for c, v in per_class.items()}
        return {task: m}

    metrics = {"monitor": monitor, "primary_task": task, "best": {"main": {"epoch": 1, "value": dev}},
               "splits": {"train": split(0.99, 0), "dev": split(dev, 0), "test": split(test, 1)}}
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


def rows_of(root):
    return collect(root).rows


def group(table, **keys):
    (g,) = [g for g in table.groups if all(g.keys[k] == v for k, v in keys.items())]
    return g


def csv_rows(table):
    return list(csv.DictReader(io.StringIO(csv_text(table))))


# ---------------------------------------------------------------------------------------------------


def test_mean_and_std_match_hand_computed(tmp_path):
    for seed, dev, test in ((0, 0.50, 0.40), (1, 0.60, 0.44), (2, 0.70, 0.52)):
        write_run(tmp_path, f"a-s{seed}", seed=seed, dev=dev, test=test, variant="a")
    write_run(tmp_path, "b-s0", seed=0, dev=0.55, test=0.45, variant="b")
    table = aggregate(rows_of(tmp_path), ["head", "variant"])
    a, b = group(table, variant="a"), group(table, variant="b")
    assert a.n == 3 and a.seeds == [0, 1, 2]
    # dev: mean 0.6; deviations -0.1, 0, 0.1 -> std sqrt(0.02 / 2) = 0.1
    assert a.stat("weighted_f1", "dev").mean == pytest.approx(0.6)
    assert a.stat("weighted_f1", "dev").std == pytest.approx(0.1)
    # test: mean 1.36 / 3; deviations -0.16/3, -0.04/3, 0.2/3 -> squares sum 0.0672/9, / (n - 1) = 2
    assert a.stat("weighted_f1", "test").mean == pytest.approx(1.36 / 3)
    assert a.stat("weighted_f1", "test").std == pytest.approx(math.sqrt(0.0672 / 9 / 2))
    assert a.stat("weighted_f1", "test").std == pytest.approx(0.0611010, abs=1e-7)
    # one run: no std ("–" in the markdown, an empty CSV cell)
    assert b.n == 1 and math.isnan(b.stat("weighted_f1", "dev").std)
    md = markdown(table)
    assert "| mlp | a | 3 | 0,1,2 | 0.6000 ± 0.1000 | 0.4533 ± 0.0611 |" in md
    assert "| mlp | b | 1 | 0 | 0.5500 ± – | 0.4500 ± – |" in md
    rows = {r["variant"]: r for r in csv_rows(table)}
    assert float(rows["a"]["test_mean"]) == pytest.approx(1.36 / 3) and float(rows["a"]["dev_std"]) == pytest.approx(0.1)
    assert rows["b"]["dev_std"] == "" and rows["b"]["test_std"] == "" and rows["a"]["seeds"] == "0 1 2"
    assert rows["a"]["n"] == "3" and rows["a"]["metric"] == "weighted_f1" and rows["a"]["task"] == "emotion"


def _two_variants(root, dev_a, test_a, dev_b, test_b):
    for seed in (0, 1):
        write_run(root, f"a-s{seed}", seed=seed, dev=dev_a[seed], test=test_a[seed], variant="a")
        write_run(root, f"b-s{seed}", seed=seed, dev=dev_b[seed], test=test_b[seed], variant="b")
    table = aggregate(rows_of(root), ["head", "variant"])  # default --select: head -> the best variant per head
    return [g.keys["variant"] for g in table.groups if g.selected]


def test_best_on_dev_ignores_test(tmp_path):
    dev_a, dev_b = (0.60, 0.62), (0.58, 0.59)  # a is better on dev
    assert _two_variants(tmp_path / "1", dev_a, (0.40, 0.41), dev_b, (0.50, 0.52)) == ["a"]
    # test values changed any way at all: the choice stays
    for test_a, test_b in (((0.10, 0.12), (0.90, 0.95)), ((0.90, 0.95), (0.10, 0.12)), ((0.5, 0.5), (0.5, 0.5))):
        root = tmp_path / f"t{test_a[0]}-{test_b[0]}"
        assert _two_variants(root, dev_a, test_a, dev_b, test_b) == ["a"]
    # dev values changed: the choice follows them
    assert _two_variants(tmp_path / "2", (0.50, 0.51), (0.40, 0.41), dev_b, (0.50, 0.52)) == ["b"]


def test_selection_per_group_and_overall(tmp_path):
    for head, devs in (("mlp", {"a": 0.6, "b": 0.7}), ("gru", {"a": 0.8, "b": 0.75})):
        for variant, dev in devs.items():
            write_run(tmp_path, f"{head}-{variant}", head=head, seed=0, dev=dev, test=0.1, variant=variant)
    rows = rows_of(tmp_path)
    table = aggregate(rows, ["head", "variant"])
    assert {(g.keys["head"], g.keys["variant"]) for g in table.groups if g.selected} == {("mlp", "b"), ("gru", "a")}
    assert "✓ = best dev mean per head (chosen on dev only; test is never used to choose)" in markdown(table)
    overall = aggregate(rows, ["head", "variant"], select=[])
    assert [(g.keys["head"], g.keys["variant"]) for g in overall.groups if g.selected] == [("gru", "a")]
    assert not any(g.selected for g in aggregate(rows, ["head", "variant"], select=None).groups)
    assert "best on dev" not in markdown(aggregate(rows, ["head", "variant"], select=None))


def test_lower_is_better_metric(tmp_path):
    for seed in (0, 1):  # regression: MAE, lower is better; a has the lower dev MAE
        write_run(tmp_path, f"a-s{seed}", seed=seed, dev=0.80 + seed / 100, test=0.90, variant="a", task="sentiment",
                  kind="regression", monitor="mae")
        write_run(tmp_path, f"b-s{seed}", seed=seed, dev=0.70 + seed / 100, test=[0.95, 0.85][seed], variant="b",
                  task="sentiment", kind="regression", monitor="mae")
    table = aggregate(rows_of(tmp_path), ["head", "variant"], baseline={"variant": "a"})
    assert [g.keys["variant"] for g in table.groups if g.selected] == ["b"]
    b = group(table, variant="b")
    assert b.paired.test_diff == pytest.approx(0.0) and b.paired.test_wins == 1  # 0.85 < 0.90 wins, 0.95 loses
    assert b.paired.dev_diff == pytest.approx(-0.10) and b.paired.dev_wins == 2
    md = markdown(table)
    assert md.startswith("### sentiment: MAE (dev-selected checkpoint)") and "MAE: lower is better" in md


def test_paired_comparison_against_baseline(tmp_path):
    full = {0: (0.60, 0.50), 1: (0.62, 0.52), 2: (0.64, 0.54)}
    for seed, (dev, test) in full.items():
        write_run(tmp_path, f"full-s{seed}", seed=seed, dev=dev, test=test, variant="full")
    # no-x: test +0.03, -0.01, +0.04 -> mean +0.02, wins 2/3; dev -0.02 on every seed
    for seed, dt in zip((0, 1, 2), (0.03, -0.01, 0.04), strict=True):
        write_run(tmp_path, f"nox-s{seed}", seed=seed, dev=full[seed][0] - 0.02, test=full[seed][1] + dt,
                  variant="no-x")
    for seed in (0, 2):  # two of the baseline's seeds
        write_run(tmp_path, f"half-s{seed}", seed=seed, dev=0.5, test=full[seed][1] + 0.10, variant="half")
    write_run(tmp_path, "other-s7", seed=7, dev=0.9, test=0.9, variant="other")  # no seed in common
    table = aggregate(rows_of(tmp_path), ["head", "variant"], baseline={"variant": "full"})
    nox, half, other = group(table, variant="no-x"), group(table, variant="half"), group(table, variant="other")
    assert group(table, variant="full").is_baseline and group(table, variant="full").paired is None
    assert nox.paired.seeds == [0, 1, 2] and nox.paired.test_diff == pytest.approx(0.02)
    assert nox.paired.test_wins == 2 and nox.paired.dev_diff == pytest.approx(-0.02) and nox.paired.dev_wins == 0
    assert half.paired.seeds == [0, 2] and half.paired.test_diff == pytest.approx(0.10) and half.paired.test_wins == 2
    assert other.paired.seeds == []
    md = markdown(table)
    assert "| baseline | baseline |" in md and "| -0.0200 | +0.0200 (wins 2/3) |" in md
    assert "+0.1000 (wins 2/2)" in md and "| no common seeds | no common seeds |" in md
    rows = {r["variant"]: r for r in csv_rows(table)}
    assert rows["full"]["baseline"] == "true" and rows["no-x"]["baseline"] == "false"
    assert float(rows["no-x"]["test_diff"]) == pytest.approx(0.02) and rows["no-x"]["test_wins"] == "2"
    assert rows["no-x"]["paired_seeds"] == "0 1 2" and rows["other"]["paired_seeds"] == ""


def test_baseline_within_each_selection_group(tmp_path):
    for head in ("mlp", "gru"):
        for variant, dev in (("full", 0.6), ("small", 0.5)):
            write_run(tmp_path, f"{head}-{variant}", head=head, seed=0, dev=dev, test=dev, variant=variant)
    write_run(tmp_path, "tf-small", head="tf", seed=0, dev=0.4, test=0.4, variant="small")
    table = aggregate(rows_of(tmp_path), ["head", "variant"], baseline={"variant": "full"})
    for head in ("mlp", "gru"):
        assert group(table, head=head, variant="small").paired.test_diff == pytest.approx(-0.1)
    assert group(table, head="tf", variant="small").paired is None
    assert any("no baseline row (variant=full) among head=tf" in n for n in table.notes)
    # a baseline that names a selection key is one row over the whole table
    across = aggregate(rows_of(tmp_path), ["head", "variant"], baseline={"head": "mlp", "variant": "full"})
    assert group(across, head="tf", variant="small").paired.test_diff == pytest.approx(-0.2)


def test_incomplete_runs_are_counted_in_a_note(tmp_path):
    write_run(tmp_path, "sweep/ok-s0", seed=0, dev=0.5, test=0.5)
    write_run(tmp_path, "sweep/int-s1", seed=1, dev=0, test=0, status="interrupted")
    write_run(tmp_path, "sweep/int-s2", seed=2, dev=0, test=0, status="interrupted")
    write_run(tmp_path, "sweep/fail-s3", seed=3, dev=0, test=0, status="failed")
    found = collect(tmp_path)
    assert [r.keys["run"] for r in found.rows] == ["sweep/ok-s0"]
    (note,) = found.notes()
    assert note.startswith("3 runs not complete: 2 interrupted, 1 failed — rerun the sweep to finish them")
    table, _ = report(tmp_path, "head")
    assert "- note: 3 runs not complete: 2 interrupted, 1 failed" in markdown(table)


def test_keys_from_sweep_json_and_config(tmp_path):
    write_run(tmp_path, "r1", seed=0, dev=0.5, test=0.5, variant="wide", config={"optim.lr": 3e-4},
              features={"t": "minilm", "a": "egemaps"})
    write_run(tmp_path, "r2", seed=0, dev=0.6, test=0.6, config={"optim.lr": 1e-3})  # no sweep.json
    rows = rows_of(tmp_path)
    r1, r2 = rows
    assert (r1.key("variant"), r1.key("sweep"), r2.key("variant"), r2.key("sweep")) == ("wide", "abl", "-", "-")
    assert r1.key("features") == "t=minilm,a=egemaps" and r1.key("seed") == 0 and r1.key("preset") == "none"
    assert r1.key("optim.lr") == 3e-4 and r1.key("head.hidden") == 32 and r1.key("data.tasks") == ["emotion"]
    table = aggregate(rows, ["optim.lr"])
    assert [g.keys["optim.lr"] for g in table.groups] == ["0.0003", "0.001"]  # ordered by value
    compared = aggregate(rows, ["optim.lr"], baseline={"optim.lr": "1e-3"})  # a number as typed names its row
    assert compared.groups[0].paired.test_diff == pytest.approx(-0.1) and compared.groups[1].is_baseline
    with pytest.raises(HeadsError, match=r"no run has the key 'optim.lrr'.*did you mean optim.lr\?.*head.hidden"):
        aggregate(rows, ["head", "optim.lrr"])


def test_rows_must_not_mix_datasets_or_tasks(tmp_path):
    write_run(tmp_path, "m", seed=0, dev=0.5, test=0.5, dataset="meld")
    write_run(tmp_path, "i", seed=0, dev=0.5, test=0.5, dataset="iemocap")
    rows = rows_of(tmp_path)
    with pytest.raises(HeadsError, match="pools runs of datasets iemocap, meld.*add dataset to --by"):
        aggregate(rows, ["head"])
    table = aggregate(rows, ["dataset", "head"])
    assert len(table.groups) == 2 and all(g.selected for g in table.groups)  # best per dataset
    with pytest.raises(HeadsError, match="different datasets"):
        aggregate(rows, ["head", "dataset"])  # the default --select (head) would compare meld with iemocap


def test_extra_metrics_per_class_and_names(tmp_path):
    for seed, (acc_d, acc_t) in enumerate(((0.70, 0.60), (0.72, 0.66))):
        write_run(tmp_path, f"r{seed}", seed=seed, dev=0.5, test=0.5, extra={"accuracy": (acc_d, acc_t)},
                  per_class={"neutral": (0.8, 0.7), "joy": (0.3, 0.2 + seed / 10), "anger": (0.1, 0.0)})
    table = aggregate(rows_of(tmp_path), ["head"], extra=["accuracy"], per_class=True)
    g = table.groups[0]
    assert g.stat("accuracy", "test").mean == pytest.approx(0.63)
    assert g.stat("accuracy", "test").std == pytest.approx(0.06 / math.sqrt(2))  # n = 2: |a - b| / sqrt(2)
    assert g.stat("class:joy", "test").mean == pytest.approx(0.25) and table.classes == CLASSES
    md = markdown(table)
    assert "| head | n | seeds | dev weighted F1 | test weighted F1 | dev accuracy | test accuracy | best on dev |" in md
    assert "#### emotion: F1 per class (test, mean ± std over seeds)" in md and "| head | neutral | joy | anger |" in md
    assert "| mlp | 0.7000 ± 0.0000 | 0.2500 ± 0.0707 | 0.0000 ± 0.0000 |" in md
    row = csv_rows(table)[0]
    assert float(row["accuracy_test_mean"]) == pytest.approx(0.63) and float(row["f1[joy]_dev_mean"]) == pytest.approx(0.3)
    with pytest.raises(HeadsError, match="has no metric 'mae'.*use one of: weighted_f1, accuracy"):
        aggregate(rows_of(tmp_path), ["head"], extra=["mae"])
    names = {"weighted_f1": "weighted F1", "acc2_has0": "Acc2 (Has0)", "acc2_non0": "Acc2 (Non0)",
             "f1_has0": "F1 (Has0)", "acc7": "Acc7", "mae": "MAE", "pearson": "Pearson r", "macro_f1": "macro F1",
             "balanced_accuracy": "balanced accuracy (UA)", "avg_weighted_f1": "mean weighted F1 over emotions"}
    assert {k: metric_name(k) for k in names} == names


def test_monitor_loss_reports_the_task_kinds_metric(tmp_path):
    d = write_run(tmp_path, "r", seed=0, dev=0.5, test=0.4)
    m = json.loads((d / "metrics.json").read_text())
    m["monitor"] = "loss"
    (d / "metrics.json").write_text(json.dumps(m))
    table = aggregate(rows_of(tmp_path), ["head"])
    assert table.groups[0].metric == "weighted_f1"
    assert markdown(table).startswith("### emotion: weighted F1 (checkpoint selected on dev loss)")


def test_cli_writes_files_and_fails_with_messages(tmp_path):
    for seed in (0, 1):
        write_run(tmp_path / "runs", f"a-s{seed}", seed=seed, dev=0.5 + seed / 10, test=0.4, variant="a")
        write_run(tmp_path / "runs", f"b-s{seed}", seed=seed, dev=0.4, test=0.6, variant="b")
    res = runner.invoke(app, ["report", str(tmp_path / "runs"), "--by", "head,variant", "--baseline", "variant=a",
                              "--out", str(tmp_path / "out" / "table")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "table.md").read_text() in res.output
    assert "| mlp | a | 2 | 0,1 | 0.5500 ± 0.0707 | 0.4000 ± 0.0000 | ✓ | baseline | baseline |" in res.output
    assert "| mlp | b | 2 | 0,1 | 0.4000 ± 0.0000 | 0.6000 ± 0.0000 |  | -0.1500 | +0.2000 (wins 2/2) |" in res.output
    assert (tmp_path / "out" / "table.csv").read_text().startswith("head,variant,dataset,task,metric,n,seeds,dev_mean")
    (tmp_path / "empty").mkdir()
    for args, text in (([str(tmp_path / "empty")], "no run directories under"),
                       ([str(tmp_path / "nowhere")], "does not exist"),
                       ([str(tmp_path / "runs"), "--by", "head,variantt"], "did you mean variant?"),
                       ([str(tmp_path / "runs"), "--baseline", "variant=zz", "--by", "variant"], "matches no row"),
                       ([str(tmp_path / "runs"), "--select", "seed"], "--select key(s) seed are not --by keys")):
        res = runner.invoke(app, ["report", *args])
        assert res.exit_code == 2 and "error:" in res.output and text in res.output, res.output


# ---------------------------------------------------------------------------------------------------


def test_report_of_real_runs(tmp_path):
    """Real tiny runs (mlp, 2 hidden sizes x 2 seeds): the report's figures are the metrics.json values."""
    from merc.heads.runs import RunRequest, train_run

    store = tmp_path / "store.zarr"
    names = build_store(store, SynthSpec(splits={"train": 16, "dev": 6, "test": 6}, dims={"t": 16}, seed=7))
    recorded = {}
    for hidden in (8, 16):
        for seed in (0, 1):
            req = RunRequest(head="mlp", store=str(store), dataset="synth", features=features_arg(names, "t"),
                             overrides={"head.hidden": str(hidden)}, seed=seed, epochs=2, batch_size=8,
                             out=str(tmp_path / "runs"), name=f"mlp-h{hidden}-s{seed}")
            run_dir = train_run(req).run_dir
            on_disk = json.loads((run_dir / "metrics.json").read_text())
            assert on_disk["monitor"] == "weighted_f1" and on_disk["primary_task"] == "emotion"
            recorded[(hidden, seed)] = {s: on_disk["splits"][s]["emotion"] for s in ("dev", "test")}
    out = tmp_path / "table"
    res = runner.invoke(app, ["report", str(tmp_path / "runs"), "--by", "head,head.hidden", "--baseline",
                              "head.hidden=8", "--metric", "accuracy", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "### emotion: weighted F1 (dev-selected checkpoint)" in res.output
    rows = {r["head.hidden"]: r for r in csv.DictReader(open(f"{out}.csv"))}
    assert set(rows) == {"8", "16"}
    for hidden in (8, 16):
        row = rows[str(hidden)]
        assert row["n"] == "2" and row["seeds"] == "0 1"
        for split in ("dev", "test"):
            for metric, prefix in (("weighted_f1", ""), ("accuracy", "accuracy_")):
                a, b = (recorded[(hidden, s)][split][metric] for s in (0, 1))
                assert float(row[f"{prefix}{split}_mean"]) == pytest.approx((a + b) / 2, abs=1e-12)
                assert float(row[f"{prefix}{split}_std"]) == pytest.approx(abs(a - b) / math.sqrt(2), abs=1e-12)
    dev = {h: sum(recorded[(h, s)]["dev"]["weighted_f1"] for s in (0, 1)) / 2 for h in (8, 16)}
    best = max(dev, key=dev.get)  # a tie goes to the first row, as in the report
    assert [h for h in (8, 16) if rows[str(h)]["selected"] == "true"] == [best]
    diffs = [recorded[(16, s)]["test"]["weighted_f1"] - recorded[(8, s)]["test"]["weighted_f1"] for s in (0, 1)]
    assert float(rows["16"]["test_diff"]) == pytest.approx(sum(diffs) / 2, abs=1e-12)
    assert int(rows["16"]["test_wins"]) == sum(d > 0 for d in diffs)
