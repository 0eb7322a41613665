"""`merc-heads report`: run directories -> one table of mean ± std over seeds, the best variant chosen on dev.

    merc-heads report runs/ --by head,features
    merc-heads report runs/ --by head,variant --baseline variant=full --metric accuracy --per-class --out tables/abl

What it reads (the producer contract of heads/runs.py): every directory under the root that holds run.json or
config.json is a run directory. A complete run (run.json status "complete", with metrics.json) becomes one row;
the others are counted by status in a note under the table, never dropped silently. A row's keys:

    head, dataset, features ("t=minilm,a=egemaps"), preset ("none" without one), seed (train.seed), task (the
    primary task), run (the directory, relative to the root), sweep and variant (from the sweep.json the sweep
    engine writes into each of its runs; "-" without one), and any dotted key of config.json's tree on demand:
    head.rank, optim.lr, train.epochs, data.tasks ... (a key some runs lack, such as one head's option, is "-").

The table (`aggregate`), one row per value of the `--by` keys:

- n and seeds: how many runs the row pools and their train.seed.
- dev and test: mean ± std over those runs of the metric at each run's dev-selected checkpoint. The std is the
  sample std (ddof=1); with n = 1 there is none: "–" in the markdown, an empty cell in the CSV. The metric
  defaults to what the runs selected their checkpoint with (metrics.json "monitor"; the task kind's primary
  metric of heads/metrics.py when that was the loss); `--metric` adds others, `--per-class` the per-class F1.
- best on dev (✓): within each selection group (`--select`; default every `--by` key but the last, so
  `--by head,variant` picks the best variant per head), the row with the best dev mean, higher or lower being
  better per heads/metrics.py HIGHER_IS_BETTER. Test values are never read to choose.
- Δ vs a baseline (`--baseline variant=full`): for every other row of the baseline's selection group (or of the
  whole table when the baseline names a selection key), over the seeds both rows have, the mean of
  row − baseline on dev and on test, and on how many of those seeds the row beats the baseline on test.

A row may not pool runs of different datasets or primary tasks unless `--by` holds dataset or task; rows are
compared (selection, baseline) only within one dataset, task and metric. Headers name metrics exactly
(METRIC_NAMES): "emotion: weighted F1 (dev-selected checkpoint)".
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
import os
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from merc.heads.metrics import HIGHER_IS_BETTER, PRIMARY

STATUSES = ("running", "complete", "interrupted", "failed")
BUILTIN_KEYS = ("head", "dataset", "features", "preset", "seed", "task", "run", "sweep", "variant")
NAMESPACES = ("head", "optim", "train", "data")
MISSING = "-"  # the value of a key a run does not have (no sweep.json, another head's option)
NO_STD = "–"  # markdown: no std for a single run
SPLITS = ("dev", "test")

# metrics.json names -> the names papers use (heads/metrics.py says what each computes)
METRIC_NAMES = {
    "accuracy": "accuracy", "weighted_f1": "weighted F1", "macro_f1": "macro F1",
    "balanced_accuracy": "balanced accuracy (UA)", "acc2_has0": "Acc2 (Has0)", "f1_has0": "F1 (Has0)",
    "acc2_non0": "Acc2 (Non0)", "f1_non0": "F1 (Non0)", "acc5": "Acc5", "acc7": "Acc7", "mae": "MAE",
    "pearson": "Pearson r", "avg_accuracy": "mean accuracy over emotions",
    "avg_weighted_f1": "mean weighted F1 over emotions", "loss": "loss",
}
CLASS_PREFIX = "class:"  # a per-class measure: "class:joy" = the F1 of joy
_COUNTS = ("n", "n_non0")  # numbers in metrics.json that are sizes, not metrics


def report_error(problem: str, fix: str, file: str | None = None) -> Exception:
    """A HeadsError, imported on demand (heads/data.py imports torch; a report does not need it)."""
    from merc.heads.data import HeadsError

    return HeadsError(problem, file=file, fix=fix)


def metric_name(metric: str, kind: str = "categorical") -> str:
    """The human name of a metric key; per-class keys say which class and which F1."""
    if metric.startswith(CLASS_PREFIX):
        cls = metric[len(CLASS_PREFIX):]
        return f"weighted F1 of {cls} (present/absent)" if kind == "multilabel" else f"F1 of {cls}"
    return METRIC_NAMES.get(metric, metric)


def higher_is_better(metric: str) -> bool:
    return True if metric.startswith(CLASS_PREFIX) else HIGHER_IS_BETTER.get(metric, True)


# ---------------------------------------------------------------------------------------------------
# collect: run directories -> rows
# ---------------------------------------------------------------------------------------------------

@dataclass
class RunRow:
    """One complete run: its grouping keys, its config tree and its recorded metrics."""

    path: Path
    keys: dict[str, Any]  # the built-in keys (BUILTIN_KEYS)
    config: dict  # config.json
    splits: dict[str, dict[str, dict]]  # metrics.json "splits": split -> task -> metrics
    monitor: str  # the dev metric that chose the checkpoint
    primary_task: str
    kinds: dict[str, str]  # task -> categorical | regression | multilabel

    def key(self, name: str) -> Any:
        """A built-in key, or a dotted key of the config tree; MISSING when this run has no such key."""
        if name in self.keys:
            return self.keys[name]
        return lookup(self.config, name)

    def value(self, split: str, task: str, metric: str) -> float:
        """A metric of one split and task (NaN when the run has no such split, e.g. no test split)."""
        m = self.splits.get(split, {}).get(task)
        if m is None:
            return math.nan
        if metric.startswith(CLASS_PREFIX):
            per = (m.get("per_class") or {}).get(metric[len(CLASS_PREFIX):])
            if per is None:
                return math.nan
            return float(per["weighted_f1"] if self.kinds.get(task) == "multilabel" else per["f1"])
        v = m.get(metric)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan

    def scalar_metrics(self, task: str) -> list[str]:
        """The metric names this run recorded for a task (what --metric may ask for)."""
        names: dict[str, None] = {}
        for split in self.splits.values():
            for k, v in (split.get(task) or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in _COUNTS:
                    names[k] = None
        return list(names)

    def classes(self, task: str) -> list[str]:
        for split in self.splits.values():
            per = (split.get(task) or {}).get("per_class")
            if per:
                return list(per)
        return []

    @property
    def seed(self) -> int:
        return self.keys["seed"]


@dataclass
class Collected:
    """Every run directory found: the complete ones as rows, the others counted by status."""

    root: Path
    rows: list[RunRow]
    skipped: dict[str, list[Path]] = field(default_factory=dict)  # reason -> run directories

    def notes(self) -> list[str]:
        """One note counting the runs left out by reason (most frequent first) and naming a few."""
        if not self.skipped:
            return []
        n = sum(len(v) for v in self.skipped.values())
        reasons = sorted(self.skipped.items(), key=lambda kv: -len(kv[1]))
        parts = ", ".join(f"{len(v)} {reason}" for reason, v in reasons)
        some = [p.relative_to(self.root).as_posix() for _, v in reasons for p in v]
        shown = ", ".join(some[:5]) + (f" and {len(some) - 5} more" if len(some) > 5 else "")
        return [f"{n} run{'s' * (n != 1)} not complete: {parts} — rerun the sweep to finish them "
                f"(or merc-heads train --resume <run>); not in the table: {shown}"]


def collect(root: str | Path) -> Collected:
    """Every run directory under `root` (recursively): complete runs as rows, the others counted."""
    root = Path(root)
    if not root.is_dir():
        raise report_error(f"{root} is not a folder" + (" (it does not exist)" if not root.exists() else ""),
                           fix="pass the folder that holds the run directories, e.g. merc-heads report runs/")
    found = run_dirs(root)
    if not found:
        raise report_error(f"no run directories under {root} (none holds run.json or config.json)",
                           fix="train runs first (merc-heads train --out DIR, merc-heads sweep) and pass that DIR")
    out = Collected(root, [])
    for d in found:
        reason = _incomplete_reason(d)
        if reason is None:
            out.rows.append(read_row(d, root))
        else:
            out.skipped.setdefault(reason, []).append(d)
    return out


def run_dirs(root: Path) -> list[Path]:
    """Directories holding run.json or config.json, sorted; a run directory is not searched further."""
    found = []
    for here, dirs, files in os.walk(root):
        if "run.json" in files or "config.json" in files:
            found.append(Path(here))
            dirs.clear()
        else:
            dirs.sort()
    return sorted(found)


def _incomplete_reason(run_dir: Path) -> str | None:
    """Why a run directory gives no row (its status, or what is missing); None for a complete run."""
    status_file = run_dir / "run.json"
    if not status_file.exists():
        return "without run.json (written before merc-heads recorded a status)"
    status = _read_json(status_file).get("status")
    if status not in STATUSES:
        raise report_error(f"run.json holds no valid status (one of {', '.join(STATUSES)})", file=str(status_file),
                           fix="restore the run directory from a copy, or delete it and rerun the sweep")
    if status != "complete":
        return status
    if not (run_dir / "config.json").exists():
        return "complete but without config.json (damaged)"
    if not (run_dir / "metrics.json").exists():
        return "complete but without metrics.json (damaged)"
    return None


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise report_error(f"{path.name} cannot be read ({e})", file=str(path),
                           fix="restore the run directory from a copy, or delete it and rerun the sweep") from None
    if not isinstance(obj, dict):
        raise report_error(f"{path.name} holds no JSON object", file=str(path),
                           fix="restore the run directory from a copy, or delete it and rerun the sweep")
    return obj


def read_row(run_dir: Path, root: Path) -> RunRow:
    """One complete run directory as a row (config.json, metrics.json and the optional sweep.json)."""
    config = _read_json(run_dir / "config.json")
    metrics = _read_json(run_dir / "metrics.json")
    sweep = _read_json(run_dir / "sweep.json") if (run_dir / "sweep.json").exists() else {}
    try:
        tasks = config.get("tasks") or []
        kinds = {t["name"]: t["kind"] for t in tasks}
        primary = metrics.get("primary_task") or tasks[0]["name"]
        keys = {
            "head": config["head"]["name"] if isinstance(config["head"], dict) else config["head"],
            "dataset": config["data"]["dataset"],
            "features": features_key(config.get("features") or config["data"]["features"]),
            "preset": config.get("preset") or "none",
            "seed": int(config["train"]["seed"]),
            "task": primary,
            "run": run_dir.relative_to(root).as_posix() if run_dir != root else run_dir.name,
            "sweep": sweep.get("sweep", MISSING),
            "variant": sweep.get("variant", MISSING),
        }
        splits = metrics["splits"]
        if not isinstance(splits, dict):
            raise TypeError("metrics.json 'splits' is not a mapping")
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise report_error(f"config.json or metrics.json is incomplete ({type(e).__name__}: {e})", file=str(run_dir),
                           fix="a run of an older merc-heads? retrain it, or move it out of the folder") from None
    return RunRow(run_dir, keys, config, splits, str(metrics.get("monitor") or ""), primary, kinds)


def lookup(tree: dict, key: str, missing: Any = MISSING) -> Any:
    """tree["a"]["b"] for the dotted key "a.b"; `missing` when any step is absent."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return missing
        node = node[part]
    return node


def features_key(features: Any) -> str:
    """{"t": "minilm", "a": "egemaps"} -> "t=minilm,a=egemaps" (roles in t, a, v order)."""
    if isinstance(features, dict):
        order = {r: i for i, r in enumerate("tav")}
        return ",".join(f"{r}={fs}" for r, fs in sorted(features.items(), key=lambda kv: order.get(kv[0], 9)))
    return str(features)


def show(value: Any) -> str:
    """A key's value as one table cell (also what rows are grouped on)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(show(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={show(v)}" for k, v in value.items())
    return str(value)


def available_keys(rows: list[RunRow]) -> list[str]:
    """The keys --by, --select and --baseline accept: the built-in ones and the config tree's."""
    tree: dict[str, None] = {}
    for row in rows:
        for ns in NAMESPACES:
            section = row.config.get(ns)
            if isinstance(section, dict):
                tree.update({f"{ns}.{k}": None for k in section})
    return list(BUILTIN_KEYS) + sorted(tree)


def check_keys(rows: list[RunRow], keys: list[str], option: str) -> None:
    """A key that no run has is an error naming it and the keys that exist."""
    for key in keys:
        if key not in BUILTIN_KEYS and all(row.key(key) == MISSING for row in rows):
            known = available_keys(rows)
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise report_error(f"{option}: no run has the key {key!r}", fix=f"{hint}keys: {', '.join(known)}")


# ---------------------------------------------------------------------------------------------------
# aggregate: rows -> a table of groups
# ---------------------------------------------------------------------------------------------------

@dataclass
class Stat:
    """Mean and sample std (ddof=1) of one measure over a group's runs; std NaN for a single run."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        if len(self.values) < 2 or any(math.isnan(v) for v in self.values):
            return math.nan
        return statistics.stdev(self.values)


@dataclass
class Paired:
    """A row against the baseline over the seeds both have: mean differences (row − baseline) and wins."""

    seeds: list[int]
    dev_diff: float
    test_diff: float
    dev_wins: int
    test_wins: int


@dataclass
class Group:
    """One row of the table: the runs sharing the values of the --by keys."""

    keys: dict[str, str]  # --by key -> value as shown
    runs: list[RunRow]
    task: str
    metric: str  # the main metric (selection and baseline use it)
    stats: dict[tuple[str, str], Stat] = field(default_factory=dict)  # (measure, split) -> Stat
    selected: bool = False
    is_baseline: bool = False
    paired: Paired | None = None

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list[int]:
        return sorted(r.seed for r in self.runs)

    @property
    def dataset(self) -> str:
        return self.runs[0].keys["dataset"]

    @property
    def kind(self) -> str:
        return self.runs[0].kinds.get(self.task, "categorical")

    def stat(self, measure: str, split: str) -> Stat:
        return self.stats[(measure, split)]

    def per_seed(self, split: str) -> dict[int, float]:
        """The main metric per seed (the mean where runs share a seed)."""
        by_seed: dict[int, list[float]] = {}
        for run in self.runs:
            by_seed.setdefault(run.seed, []).append(run.value(split, self.task, self.metric))
        return {s: statistics.fmean(v) for s, v in by_seed.items()}


@dataclass
class Table:
    """What the report prints: the groups, how they were selected and compared, and notes."""

    by: list[str]
    groups: list[Group]
    extra: list[str]  # metrics asked for besides the main one
    classes: list[str]  # per-class measures (--per-class), in label-space order
    select: list[str] | None  # None: no selection
    baseline: dict[str, str] | None
    notes: list[str]

    @property
    def uniform(self) -> bool:
        """Whether every row reports the same task and metric (then the headers name them)."""
        return len({(g.task, g.metric) for g in self.groups}) == 1

    def title(self) -> str:
        if not self.uniform:
            return "per-row metrics (see the metric column), dev-selected checkpoints"
        g = self.groups[0]
        monitors = {r.monitor for grp in self.groups for r in grp.runs}
        primaries = {r.primary_task for grp in self.groups for r in grp.runs}
        how = "dev-selected checkpoint"
        if len(monitors) == 1 and primaries == {g.task}:
            (monitor,) = monitors
            if monitor != g.metric:
                how = f"checkpoint selected on dev {metric_name(monitor)}"
        elif len(monitors) == 1:
            how = f"checkpoint selected on dev {metric_name(next(iter(monitors)))} of {', '.join(sorted(primaries))}"
        return f"{g.task}: {metric_name(g.metric, g.kind)} ({how})"


def aggregate(rows: list[RunRow], by: list[str], metric: str | None = None, task: str | None = None, *,
              extra: list[str] | None = None, per_class: bool = False, select: list[str] | None | str = "default",
              baseline: dict[str, str] | None = None, notes: list[str] | None = None) -> Table:
    """Group rows by the `by` keys: n, seeds, dev/test mean ± std of the metric (default: the runs' selection
    metric), extra metrics and per-class F1 on request; mark the best dev row per selection group (`select`:
    "default" = every by key but the last, None = no marks, [] = one group over the whole table) and compare
    every row with the baseline row (KEY=VALUE pairs) over shared seeds."""
    if not rows:
        raise report_error("no complete runs to report", fix="train runs first (merc-heads train, merc-heads sweep)")
    by = _check_by(rows, by)
    groups = [_group(dict(zip(by, values, strict=True)), runs, metric, task)
              for values, runs in _partition(rows, by).items()]
    extra = [m for m in dict.fromkeys(extra or []) if not all(g.metric == m for g in groups)]
    for g in groups:
        _check_group(g, by)
        _check_metrics(g, extra)
    classes = _classes(groups) if per_class else []
    for g in groups:
        for measure in [g.metric, *extra, *(CLASS_PREFIX + c for c in classes)]:
            for split in SPLITS:
                g.stats[(measure, split)] = Stat([r.value(split, g.task, measure) for r in g.runs])
    select_keys = by[:-1] if select == "default" else select
    if select_keys is not None:
        check_keys(rows, list(select_keys), "--select")
        _select_on_dev(groups, by, list(select_keys))
    out_notes = list(notes or []) + _shared_seed_notes(groups)
    if baseline:
        out_notes += _compare(groups, by, list(select_keys or []), baseline)
    return Table(by, groups, extra, classes, None if select_keys is None else list(select_keys), baseline, out_notes)


def _check_by(rows: list[RunRow], by: list[str]) -> list[str]:
    by = [k.strip() for k in by if k.strip()]
    if not by:
        raise report_error("--by names no key", fix=f"e.g. --by head,features; keys: {', '.join(available_keys(rows))}")
    check_keys(rows, by, "--by")
    return list(dict.fromkeys(by))


def _partition(rows: list[RunRow], keys: list[str]) -> dict[tuple[str, ...], list[RunRow]]:
    """Rows grouped on the shown values of `keys`, groups in natural order (numbers by value)."""
    parts: dict[tuple[str, ...], list[RunRow]] = {}
    for row in rows:
        parts.setdefault(tuple(show(row.key(k)) for k in keys), []).append(row)
    return {k: parts[k] for k in sorted(parts, key=lambda vals: [_natural(v) for v in vals])}


def _natural(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def _group(keys: dict[str, str], runs: list[RunRow], metric: str | None, task: str | None) -> Group:
    """A row of the table; a mixed task or metric is kept joined by "," for _check_group to refuse."""
    tasks = {task or r.primary_task for r in runs}
    t = next(iter(tasks))
    metrics = {metric or default_metric(r, t) for r in runs}
    return Group(keys, runs, t if len(tasks) == 1 else ",".join(sorted(tasks)),
                 next(iter(metrics)) if len(metrics) == 1 else ",".join(sorted(metrics)))


def default_metric(row: RunRow, task: str) -> str:
    """What the run selected its checkpoint with, for its primary task; else the task kind's primary metric."""
    if task == row.primary_task and row.monitor and row.monitor != "loss":
        return row.monitor
    return PRIMARY[row.kinds.get(task, "categorical")][0]


def _check_group(g: Group, by: list[str]) -> None:
    """A row pools runs of one dataset, one task and one metric (unless grouped by them)."""
    where = _where(g)
    datasets = sorted({r.keys["dataset"] for r in g.runs})
    if len(datasets) > 1:
        raise report_error(f"the row {where} pools runs of datasets {', '.join(datasets)}",
                           fix="add dataset to --by (--by dataset," + ",".join(by) + ")")
    if "," in g.task:
        raise report_error(f"the row {where} pools runs whose primary tasks differ ({g.task})",
                           fix="add task to --by, or pass --task to report one task of every run")
    if "," in g.metric:
        raise report_error(f"the row {where} pools runs that selected their checkpoints on different dev metrics "
                           f"({g.metric})", fix="pass --primary-metric to report one metric, or add train.monitor "
                                                 "to --by")
    for run in g.runs:
        if not any(g.task in s for s in run.splits.values()):
            have = sorted({t for s in run.splits.values() for t in s})
            raise report_error(f"run {run.keys['run']} has no task {g.task!r} (it has {', '.join(have)})",
                               file=str(run.path), fix=f"pass --task with one of {', '.join(have)}, or report "
                                                       "runs of one task")


def _check_metrics(g: Group, extra: list[str]) -> None:
    for run in g.runs:
        have = run.scalar_metrics(g.task)
        for m in [g.metric, *extra]:
            if m not in have:
                raise report_error(f"run {run.keys['run']} has no metric {m!r} for task {g.task!r}",
                                   file=str(run.path), fix=f"use one of: {', '.join(have)}")


def _classes(groups: list[Group]) -> list[str]:
    """The classes of the one task every row reports (per-class F1 needs a shared label space)."""
    tasks = {(g.dataset, g.task) for g in groups}
    if len(tasks) > 1:
        raise report_error("--per-class needs every row on one dataset and task (rows have "
                           f"{', '.join(f'{d}/{t}' for d, t in sorted(tasks))})",
                           fix="report one dataset at a time (a folder of its runs), or pass --task")
    kind = groups[0].kind
    if kind == "regression":
        raise report_error(f"task {groups[0].task!r} is a regression: it has no classes",
                           fix=f"report a derived classification task, e.g. --task {groups[0].task}7 or "
                               f"--task {groups[0].task}_has0, if the runs trained it")
    classes: dict[str, None] = {}
    for g in groups:
        for r in g.runs:
            classes.update(dict.fromkeys(r.classes(g.task)))
    return list(classes)


def _where(g: Group) -> str:
    return ", ".join(f"{k}={v}" for k, v in g.keys.items())


def _comparable(groups: list[Group], what: str, fix: str) -> None:
    """Rows compared with each other (selection, baseline) share a dataset, task and metric."""
    kinds = sorted({f"{g.dataset}/{g.task}/{g.metric}" for g in groups})
    if len(kinds) > 1:
        raise report_error(f"{what} compares rows of different datasets, tasks or metrics ({', '.join(kinds)})",
                           fix=fix)


def _scopes(groups: list[Group], keys: list[str]) -> dict[tuple[str, ...], list[Group]]:
    """Rows partitioned on the values of `keys` ([] = one scope over the whole table)."""
    scopes: dict[tuple[str, ...], list[Group]] = {}
    for g in groups:
        scopes.setdefault(tuple(g.keys[k] for k in keys), []).append(g)
    return scopes


def _select_on_dev(groups: list[Group], by: list[str], keys: list[str]) -> None:
    """Mark the row with the best dev mean in each selection group. Only dev values are read."""
    outside = [k for k in keys if k not in by]
    if outside:
        raise report_error(f"--select key(s) {', '.join(outside)} are not --by keys",
                           fix=f"select within the table's keys ({', '.join(by)}), e.g. --select {by[0]}")
    for scope in _scopes(groups, keys).values():
        _comparable(scope, "--select", "add dataset (or task) to --by and to --select")
        best = best_on_dev(scope)
        if best is not None:
            best.selected = True


def best_on_dev(groups: list[Group]) -> Group | None:
    """The group with the best dev mean of its metric (first wins a tie; NaN never wins). Test is not read."""
    best, best_value = None, math.nan
    for g in groups:
        value = Stat([r.value("dev", g.task, g.metric) for r in g.runs]).mean
        if math.isnan(value):
            continue
        if best is None or (value > best_value if higher_is_better(g.metric) else value < best_value):
            best, best_value = g, value
    return best


def _shared_seed_notes(groups: list[Group]) -> list[str]:
    notes = []
    for g in groups:
        twice = sorted(s for s, c in Counter(g.seeds).items() if c > 1)
        if twice:
            notes.append(f"row {_where(g)} pools several runs of seed(s) {', '.join(map(str, twice))}: it mixes "
                         "configurations or repeated runs; add the key that differs to --by")
    return notes


def parse_baseline(items: list[str]) -> dict[str, str]:
    """`--baseline variant=full` (repeatable) -> {"variant": "full"}; a value may hold "=" and ","."""
    out = {}
    for item in items:
        if "=" not in item:
            raise report_error(f"--baseline {item!r} is not KEY=VALUE", fix="e.g. --baseline variant=full")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _compare(groups: list[Group], by: list[str], select: list[str], baseline: dict[str, str]) -> list[str]:
    """Pair every row with its scope's baseline row; the scope is a selection group, or the whole table when
    the baseline names a selection key. Returns notes (scopes without a baseline row)."""
    outside = [k for k in baseline if k not in by]
    if outside:
        raise report_error(f"--baseline key(s) {', '.join(outside)} are not --by keys: a baseline names a row",
                           fix=f"use --by keys ({', '.join(by)}), e.g. --baseline {by[-1]}=<value>")
    keys = [] if any(k in select for k in baseline) else select
    wanted = ", ".join(f"{k}={v}" for k, v in baseline.items())
    notes, found = [], 0
    for scope_key, scope in _scopes(groups, keys).items():
        matches = [g for g in scope if all(same_value(g.keys[k], v) for k, v in baseline.items())]
        if len(matches) > 1:
            raise report_error(f"--baseline {wanted} matches {len(matches)} rows: "
                               + "; ".join(_where(g) for g in matches),
                               fix="add --baseline KEY=VALUE for the other --by keys until it names one row")
        if not matches:
            notes.append(f"no baseline row ({wanted}) among "
                         + (", ".join(f"{k}={v}" for k, v in zip(keys, scope_key, strict=True)) or "the rows"))
            continue
        found += 1
        _comparable(scope, "--baseline", "add dataset (or task) to --by and --select, or report one at a time")
        base = matches[0]
        base.is_baseline = True
        for g in scope:
            if g is not base:
                g.paired = paired(g, base)
    if not found:
        values = sorted({g.keys[k] for g in groups for k in baseline})
        raise report_error(f"--baseline {wanted} matches no row", fix=f"values in the table: {', '.join(values)}")
    return notes


def same_value(shown: str, wanted: str) -> bool:
    """A cell equals a --baseline value as typed: "3e-4" names the row shown as 0.0003."""
    if shown == wanted:
        return True
    try:
        return float(shown) == float(wanted)
    except ValueError:
        return False


def paired(row: Group, base: Group) -> Paired:
    """row − baseline over the seeds both have: mean differences on dev and test, seeds won on each."""
    higher = higher_is_better(row.metric)
    diffs = {}
    for split in SPLITS:
        a, b = row.per_seed(split), base.per_seed(split)
        common = sorted(set(a) & set(b))
        d = [a[s] - b[s] for s in common]
        diffs[split] = (common, statistics.fmean(d) if d else math.nan,
                        sum(1 for x in d if (x > 0 if higher else x < 0)))
    return Paired(diffs["dev"][0], diffs["dev"][1], diffs["test"][1], diffs["dev"][2], diffs["test"][2])


# ---------------------------------------------------------------------------------------------------
# output: markdown and CSV
# ---------------------------------------------------------------------------------------------------

def _num(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.4f}"


def mean_std(stat: Stat) -> str:
    if all(math.isnan(v) for v in stat.values):  # e.g. runs without a test split
        return NO_STD
    return f"{_num(stat.mean)} ± {NO_STD if math.isnan(stat.std) else _num(stat.std)}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(table: Table) -> str:
    """The table as GitHub markdown (what BENCHMARKS.md holds), the legend above it, notes below."""
    lines = [f"### {table.title()}", "", _legend(table), ""]
    lines += _md_rows(_headers(table), [_md_cells(table, g) for g in table.groups])
    if table.classes:
        g = table.groups[0]
        lines += ["", f"#### {g.task}: {'weighted F1' if g.kind == 'multilabel' else 'F1'} per class "
                      "(test, mean ± std over seeds)", ""]
        lines += _md_rows(table.by + table.classes,
                          [[*g.keys.values(), *(mean_std(g.stat(CLASS_PREFIX + c, "test")) for c in table.classes)]
                           for g in table.groups])
    if table.notes:
        lines += ["", *(f"- note: {n}" for n in table.notes)]
    return "\n".join(lines) + "\n"


def _md_rows(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    return out + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def _legend(table: Table) -> str:
    g = table.groups[0]
    parts = ["Mean ± std over seeds (sample std, ddof=1; – when n = 1) of each run's dev-selected checkpoint."]
    if table.uniform:
        parts.append(f"{metric_name(g.metric, g.kind)}: {'higher' if higher_is_better(g.metric) else 'lower'} "
                     "is better.")
    if table.select is not None:
        scope = f"per {', '.join(table.select)}" if table.select else "over the whole table"
        parts.append(f"✓ = best dev mean {scope} (chosen on dev only; test is never used to choose).")
    if table.baseline:
        wanted = ", ".join(f"{k}={v}" for k, v in table.baseline.items())
        parts.append(f"Δ = mean over the seeds both rows have of row − baseline ({wanted}); wins k/n = seeds where "
                     "the row beats the baseline on test.")
    return " ".join(parts)


def _headers(table: Table) -> list[str]:
    g = table.groups[0]
    name = f" {metric_name(g.metric, g.kind)}" if table.uniform else ""
    out = [*table.by] + ([] if table.uniform else ["metric"]) + ["n", "seeds", f"dev{name}", f"test{name}"]
    for m in table.extra:
        out += [f"dev {metric_name(m, g.kind)}", f"test {metric_name(m, g.kind)}"]
    if table.select is not None:
        out.append("best on dev")
    if table.baseline:
        out += ["Δ dev", "Δ test"]
    return out


def _md_cells(table: Table, g: Group) -> list[str]:
    cells = [*g.keys.values()] + ([] if table.uniform else [f"{g.task}: {metric_name(g.metric, g.kind)}"])
    cells += [str(g.n), ",".join(map(str, g.seeds))]
    for m in [g.metric, *table.extra]:
        cells += [mean_std(g.stat(m, "dev")), mean_std(g.stat(m, "test"))]
    if table.select is not None:
        cells.append("✓" if g.selected else "")
    if table.baseline:
        cells += _md_paired(g)
    return cells


def _md_paired(g: Group) -> list[str]:
    if g.is_baseline:
        return ["baseline", "baseline"]
    p = g.paired
    if p is None:
        return ["", ""]
    if not p.seeds:
        return ["no common seeds", "no common seeds"]
    n = len(p.seeds)
    return [f"{p.dev_diff:+.4f}", f"{p.test_diff:+.4f} (wins {p.test_wins}/{n})"]


def csv_text(table: Table) -> str:
    """One CSV row per group; numbers unformatted (full precision), an empty cell where there is none."""
    measures = [("", None), *((f"{m}_", m) for m in table.extra),
                *((f"f1[{c}]_", CLASS_PREFIX + c) for c in table.classes)]
    header = [*table.by, "dataset", "task", "metric", "n", "seeds"]
    header += [f"{prefix}{split}_{s}" for prefix, _ in measures for split in SPLITS for s in ("mean", "std")]
    if table.select is not None:
        header.append("selected")
    if table.baseline:
        header += ["baseline", "paired_seeds", "dev_diff", "test_diff", "dev_wins", "test_wins"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for g in table.groups:
        row: list[Any] = [*g.keys.values(), g.dataset, g.task, g.metric, g.n, " ".join(map(str, g.seeds))]
        for _, m in measures:
            for split in SPLITS:
                st = g.stat(m or g.metric, split)
                row += [_raw(st.mean), _raw(st.std)]
        if table.select is not None:
            row.append(str(g.selected).lower())
        if table.baseline:
            row += _csv_paired(g)
        w.writerow(row)
    return buf.getvalue()


def _raw(x: float) -> str:
    return "" if math.isnan(x) else repr(float(x))


def _csv_paired(g: Group) -> list[Any]:
    if g.is_baseline:
        return ["true", "", "", "", "", ""]
    p = g.paired
    if p is None:
        return ["false", "", "", "", "", ""]
    return ["false", " ".join(map(str, p.seeds)), _raw(p.dev_diff), _raw(p.test_diff),
            p.dev_wins if p.seeds else "", p.test_wins if p.seeds else ""]


def write(table: Table, prefix: str | Path) -> tuple[Path, Path]:
    """PREFIX.md and PREFIX.csv (the folder is made)."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    md, csv_path = prefix.with_name(prefix.name + ".md"), prefix.with_name(prefix.name + ".csv")
    md.write_text(markdown(table))
    csv_path.write_text(csv_text(table))
    return md, csv_path


# ---------------------------------------------------------------------------------------------------
# the command's body
# ---------------------------------------------------------------------------------------------------

def split_keys(text: str | None) -> list[str]:
    return [k.strip() for k in (text or "").split(",") if k.strip()]


def report(root: str | Path, by: str = "head,features", *, metrics: list[str] | None = None,
           primary_metric: str | None = None, task: str | None = None, select: str | None = None,
           baseline: list[str] | None = None, per_class: bool = False,
           out: str | Path | None = None) -> tuple[Table, list[Path]]:
    """`merc-heads report`: collect, aggregate, and write PREFIX.md/.csv when `out` is given.
    `select`: KEY[,KEY], "none" (no marks), "all" (best over the whole table); None = every --by key but the last."""
    found = collect(root)
    if not found.rows:
        raise report_error(f"no complete runs under {root}: {'; '.join(found.notes())}",
                           fix="finish the runs (rerun the sweep, or merc-heads train --resume <run>)")
    sel: list[str] | None | str = "default"
    if select is not None:
        sel = None if select.strip() == "none" else [] if select.strip() == "all" else split_keys(select)
    table = aggregate(found.rows, split_keys(by), primary_metric, task, extra=metrics, per_class=per_class,
                      select=sel, baseline=parse_baseline(baseline) if baseline else None, notes=found.notes())
    written = list(write(table, out)) if out is not None else []
    return table, written
