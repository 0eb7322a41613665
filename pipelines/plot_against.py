"""A metric against one swept option, mean ± std over seeds (`merc-heads plot runs/ --against head.rank`).

Every complete run under a folder (at any depth) is one point: the option's value comes from the run's
sweep.json when it has one ({"sweep", "variant", "values": {dotted key: value}, "seed", "run_id"}: the value as
the sweep file wrote it), else from its config.json tree (`head.rank` -> config["head"]["rank"]); the metric from
metrics.json, for the run's primary task (default: the metric the run monitored on dev). Runs are grouped by value,
each group drawn as mean ± sample std (ddof=1; none for one run) at its value, in value order, on a log axis when
the values are positive numbers spanning 100x or more. The numbers drawn are written next to the PNG as a CSV.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from merc.heads.checkpoint import atomic_path, read_status
from merc.heads.data import HeadsError
from merc.heads.metrics import PRIMARY

from . import report
from .plots import PLOTS_DIR, pyplot, save

SWEEP_FILE = "sweep.json"
_NAMESPACES = ("head", "optim", "train", "data")
_MISSING = object()


@dataclass
class RunPoint:
    """One complete run: where it is, its option value and metric."""

    path: Path
    value: Any
    metric: float
    seed: Any


@dataclass
class Group:
    """The runs that share one value of the option."""

    value: Any
    label: str
    runs: list[RunPoint]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def mean(self) -> float:
        return report.Stat([r.metric for r in self.runs]).mean

    @property
    def std(self) -> float:
        """Sample standard deviation over the runs (ddof=1); NaN for a single run."""
        return report.Stat([r.metric for r in self.runs]).std


@dataclass
class AgainstResult:
    key: str
    metric: str
    split: str
    groups: list[Group]  # in value order, as drawn
    png: Path
    csv: Path
    log_x: bool
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # runs left out, and why


# ---------------------------------------------------------------------------------------------------
# collecting runs
# ---------------------------------------------------------------------------------------------------

def _read(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def run_dirs(root: Path) -> list[Path]:
    """Every folder under `root` (itself included) that holds a config.json, sorted."""
    return sorted({p.parent for p in root.rglob("config.json") if p.is_file()})


def lookup(tree: dict, key: str) -> Any:
    """tree["a"]["b"] for "a.b"; _MISSING when any step is absent."""
    return report.lookup(tree, key, _MISSING)


def option_value(run_dir: Path, config: dict, key: str) -> Any:
    """The run's value of a dotted option: its sweep.json's, else its config tree's; _MISSING when neither has it."""
    sweep = _read(run_dir / SWEEP_FILE) if (run_dir / SWEEP_FILE).exists() else None
    if sweep is not None and isinstance(sweep.get("values"), dict) and key in sweep["values"]:
        return sweep["values"][key]
    return lookup(config, key)


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def varied_keys(configs: list[dict]) -> list[str]:
    """Dotted keys of the config trees whose values differ between runs (the seed and the store path aside)."""
    flats = [_flat({ns: c.get(ns, {}) for ns in _NAMESPACES}) for c in configs]
    keys = sorted(set().union(*flats)) if flats else []
    canon = [{k: json.dumps(f.get(k), sort_keys=True, default=str) for k in keys} for f in flats]
    return [k for k in keys if k not in ("train.seed", "data.store") and len({c[k] for c in canon}) > 1]


def default_metric(config: dict, metrics: dict) -> str:
    """The metric the run monitored on dev (metrics.json "monitor", with or without a dev_ prefix), or the
    primary task kind's selection metric when that was the loss."""
    monitor = str(metrics.get("monitor", "")).removeprefix("dev_")
    task = metrics.get("primary_task")
    kinds = {t.get("name"): t.get("kind") for t in config.get("tasks", []) if isinstance(t, dict)}
    if monitor and monitor != "loss":
        return monitor
    return PRIMARY.get(kinds.get(task, "categorical"), PRIMARY["categorical"])[0]


def _metric_of(run_dir: Path, metrics: dict, metric: str, split: str) -> float:
    task = metrics.get("primary_task")
    splits = metrics.get("splits", {})
    if split not in splits:
        raise HeadsError(f"the run has no {split!r} split in metrics.json", file=str(run_dir),
                         fix=f"use --split {' or '.join(splits) or 'test'}")
    values = splits[split].get(task, {})
    value = values.get(metric)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        have = sorted(k for k, v in values.items() if isinstance(v, (int, float)) and k != "n")
        raise HeadsError(f"metrics.json has no metric {metric!r} for the primary task {task!r} ({split})",
                         file=str(run_dir), fix=f"use --metric one of {', '.join(have)}")
    return float(value)


# ---------------------------------------------------------------------------------------------------
# grouping and drawing
# ---------------------------------------------------------------------------------------------------

def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _label(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def group_runs(points: list[RunPoint]) -> list[Group]:
    """Runs grouped by equal option values; numbers in numeric order first, then the rest by their label."""
    groups: dict[str, Group] = {}
    for p in points:
        canon = repr(float(p.value)) if _is_number(p.value) else json.dumps(p.value, sort_keys=True, default=str)
        groups.setdefault(canon, Group(p.value, _label(p.value), [])).runs.append(p)
    return sorted(groups.values(), key=lambda g: (0, g.value, "") if _is_number(g.value) else (1, 0, g.label))


def use_log_axis(values: list[Any]) -> bool:
    """A log x axis when every value is a positive number and they span at least 100x (learning rates, ranks
    1..128); otherwise linear."""
    if not values or not all(_is_number(v) and v > 0 for v in values):
        return False
    return max(values) / min(values) >= 100


def metric_against(root: str | Path, key: str, metric: str | None = None, split: str = "test",
                   out_dir: str | Path | None = None) -> AgainstResult:
    """Plot `metric` (default: the runs' monitor metric) of `split` against option `key`, mean ± std over the
    runs sharing each value, over every complete run under `root`; writes <metric>_vs_<key>_<split>.png and .csv
    into `out_dir` (default <root>/plots)."""
    root = Path(root)
    if not root.is_dir():
        raise HeadsError(f"{root} is not a folder ({'it is a file' if root.exists() else 'no such folder'})",
                         fix="pass the folder that holds the runs, e.g. merc-heads plot runs/ --against head.rank")
    skipped: list[tuple[Path, str]] = []
    complete: list[tuple[Path, dict, dict]] = []
    for d in run_dirs(root):
        try:
            status = read_status(d)
        except HeadsError as e:
            skipped.append((d, str(e)))
            continue
        if status is not None and status["status"] != "complete":
            skipped.append((d, f"status {status['status']}"))
            continue
        config, metrics = _read(d / "config.json"), _read(d / "metrics.json")
        if config is None or metrics is None:
            skipped.append((d, "config.json or metrics.json is missing or damaged"))
            continue
        complete.append((d, config, metrics))
    if not complete:
        why = f" ({len(skipped)} incomplete or damaged)" if skipped else ""
        raise HeadsError(f"no complete run under {root}{why}",
                         fix="pass the folder that holds finished runs (each with run.json status complete and "
                             "metrics.json); merc-heads train or merc-heads sweep writes them")

    with_value = [(d, c, m, option_value(d, c, key)) for d, c, m in complete]
    if all(v is _MISSING for *_, v in with_value):
        varied = varied_keys([c for _, c, _ in complete])
        hint = (f"options that vary between these runs: {', '.join(varied[:12])}" if varied else
                "these runs do not vary any option of the config tree except the seed")
        raise HeadsError(f"no complete run under {root} has the option {key!r} (in sweep.json or config.json)",
                         fix=f"pass a dotted key of the config tree (head.*, optim.*, train.*, data.*); {hint}")
    metrics_wanted = {d: metric or default_metric(c, m) for d, c, m, v in with_value if v is not _MISSING}
    names = sorted(set(metrics_wanted.values()))
    if len(names) > 1:
        raise HeadsError(f"the runs under {root} monitored different metrics ({', '.join(names)})",
                         fix=f"choose one with --metric, e.g. --metric {names[0]}")
    chosen = names[0]
    points = []
    for d, c, m, v in with_value:
        if v is _MISSING:
            skipped.append((d, f"has no option {key}"))
            continue
        points.append(RunPoint(d, v, _metric_of(d, m, chosen, split), lookup(c, "train.seed")))
    groups = group_runs(points)
    out = Path(out_dir) if out_dir is not None else root / PLOTS_DIR
    stem = f"{chosen}_vs_{key}_{split}".replace("/", "_")
    log_x = use_log_axis([g.value for g in groups])
    png = _draw(groups, key, chosen, split, log_x, out / f"{stem}.png")
    table = _write_csv(groups, key, chosen, split, out / f"{stem}.csv")
    return AgainstResult(key, chosen, split, groups, png, table, log_x, skipped)


def _draw(groups: list[Group], key: str, metric: str, split: str, log_x: bool, path: Path) -> Path:
    plt = pyplot()
    numeric = all(_is_number(g.value) for g in groups)
    x = [g.value for g in groups] if numeric else list(range(len(groups)))
    means = [g.mean for g in groups]
    errors = [0.0 if math.isnan(g.std) else g.std for g in groups]
    fig, ax = plt.subplots(figsize=(max(4.8, 1.2 + 0.9 * len(groups)), 3.6))
    ax.errorbar(x, means, yerr=errors, fmt="o-", capsize=4)
    for xi, g in zip(x, groups, strict=True):
        ax.annotate(f"n={g.n}", (xi, g.mean), textcoords="offset points", xytext=(5, 5), fontsize=7)
    if log_x:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(x, [g.label for g in groups], rotation=30 if len(groups) > 4 else 0, ha="right")
    elif not log_x:
        ax.set_xticks(x, [g.label for g in groups])
    ax.set_xlabel(key)
    ax.set_ylabel(f"{report.metric_name(metric)} ({split})")
    n_runs = sum(g.n for g in groups)
    ax.set_title(f"{report.metric_name(metric)} ({split}) against {key}\nmean ± std over the runs of each value (seeds), {n_runs} runs",
                 fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def _write_csv(groups: list[Group], key: str, metric: str, split: str, path: Path) -> Path:
    """The numbers the figure draws, one row per value: value, n, mean, std, seeds, runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, fsync=False) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["option", "value", "metric", "split", "n", "mean", "std", "seeds", "runs"])
        for g in groups:
            w.writerow([key, g.label, metric, split, g.n, repr(g.mean), repr(g.std),
                        ";".join(str(r.seed) for r in g.runs), ";".join(r.path.name for r in g.runs)])
    return path
