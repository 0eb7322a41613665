"""Figures of one run, drawn from the files its training wrote: nothing is re-run (`merc-heads plot runs/<run>`).

    confusion_<split>_<task>.png   categorical tasks: rows gold, colour = the row's share (recall per class),
                                   counts annotated; regression and multi-label tasks have none
    learning_curves.png            train/dev loss and the dev monitor metric per epoch, stages named (SUMMER)
    per_class_f1_<task>.png        F1 per class (multi-label: weighted F1 per emotion), dev and test side by side
    gate_weights_<split>.png       MiSTER-E (its Fig. 5a): mean gate weight of each expert, per gold class
    disparity_ratios.png           Ada2I (its Fig. 5): mean disparity ratio of each modality per training epoch
    expert_usage_<split>.png       MMoLRE: share of utterances whose top-k picks each shared expert, per task,
                                   for every router (modality x UniTSE block)
    expert_activation.png          SUMMER: share of routing decisions that keep each SDMoE expert on, per epoch

The head figures read figures.json, which training fills from forward passes it ran anyway (heads/runs.py,
Head.figure_stats). Each function takes a run directory (or its loaded `RunFiles`) and an output folder and returns
the paths it wrote, none where it does not apply; `plot_run` writes every one that applies. A metric against a swept
option over many runs is pipelines/plot_against.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from merc.heads.checkpoint import atomic_path, read_status
from merc.heads.data import HeadsError
from merc.heads.runs import FIGURES_FILE, plot_learning_curve, resume_command

PLOTS_DIR = "plots"
MODALITY = {"t": "text", "a": "audio", "v": "video"}
_RUN_FIX = "pass a run directory written by merc-heads train, e.g. runs/<run>"


@dataclass
class RunFiles:
    """What a complete run directory says about itself (the JSON files; no weights, no store)."""

    path: Path
    config: dict
    metrics: dict
    history: list[dict]  # log.jsonl, one record per epoch
    figures: dict | None  # figures.json, for heads that record figure data

    @property
    def head(self) -> str:
        head = self.config.get("head")
        return str(head.get("name", "?") if isinstance(head, dict) else head)

    @property
    def tasks(self) -> dict[str, dict]:
        """task name -> {"name", "kind", "classes"} as config.json records them."""
        return {t["name"]: t for t in self.config.get("tasks", [])}

    def split_metrics(self, split: str) -> dict[str, dict]:
        splits = self.metrics.get("splits", {})
        if split not in splits:
            raise HeadsError(f"the run has no {split!r} split in metrics.json", file=str(self.path),
                             fix=f"use --split {' or '.join(splits) or 'test'}")
        return splits[split]


def load_run_files(run_dir: str | Path) -> RunFiles:
    """A complete run's config, metrics, log and figure data; a folder that is not one is a HeadsError saying why."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HeadsError(f"{run_dir} is not a run directory ({'it is a file' if run_dir.exists() else 'no such folder'})",
                         fix=_RUN_FIX)
    if not (run_dir / "config.json").exists():
        has_runs = any(p.is_file() for p in run_dir.glob("*/config.json"))
        raise HeadsError(f"{run_dir} is not a run directory (no config.json)",
                         fix="it holds runs: plot one of them (merc-heads plot <folder>/<run>), or plot a metric against "
                             "a swept option over all of them (--against head.rank)" if has_runs else _RUN_FIX)
    status = read_status(run_dir)  # None: a run from before run.json existed
    if status is not None and status["status"] != "complete":
        fix = ("wait for it to finish, or resume it if it was killed: " if status["status"] == "running" else
               "resume it: ") + resume_command(run_dir)
        raise HeadsError(f"the run is not complete (status {status['status']}, {status.get('epochs_done', 0)} epochs "
                         "done): it has no final metrics to plot", file=str(run_dir), fix=fix)
    return RunFiles(run_dir, _json(run_dir / "config.json"), _json(run_dir / "metrics.json"), _log(run_dir),
                    _json(run_dir / FIGURES_FILE) if (run_dir / FIGURES_FILE).exists() else None)


def _json(path: Path) -> dict:
    if not path.exists():
        raise HeadsError(f"{path.name} is missing", file=str(path.parent),
                         fix="the run directory is incomplete; restore it from a copy or train the run again")
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HeadsError(f"{path.name} is not valid JSON ({e})", file=str(path.parent),
                         fix="restore it from a copy of the run directory, or train the run again") from None
    if not isinstance(obj, dict):
        raise HeadsError(f"{path.name} holds no JSON object", file=str(path.parent),
                         fix="restore it from a copy of the run directory, or train the run again")
    return obj


def _log(run_dir: Path) -> list[dict]:
    path = run_dir / "log.jsonl"
    if not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise HeadsError(f"log.jsonl has a damaged line ({e})", file=str(run_dir),
                         fix="restore it from a copy of the run directory, or train the run again") from None


def as_run(run: str | Path | RunFiles) -> RunFiles:
    return run if isinstance(run, RunFiles) else load_run_files(run)


# ---------------------------------------------------------------------------------------------------
# drawing helpers
# ---------------------------------------------------------------------------------------------------

def pyplot():
    """matplotlib.pyplot on the Agg backend: files only, never a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path) -> Path:
    """Write a figure as PNG atomically (a killed plot leaves no half file) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, fsync=False) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    pyplot().close(fig)
    return path


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0 (nothing to average: drawn as a gap, not as 0)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=np.broadcast_to(den, out.shape) > 0)
    return out


def _integer_epochs(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _stage_lines(axes, records: list[dict]) -> None:
    """Dotted lines between training stages, each stage named at the top (for two-stage heads)."""
    starts = [i for i in range(len(records)) if i == 0 or records[i]["stage"] != records[i - 1]["stage"]]
    if len(starts) == 1 and records and records[0]["stage"] == "main":
        return
    for ax in axes:
        for s in starts:
            if s > 0:
                ax.axvline(s + 0.5, color="grey", linestyle=":")
            ax.text(s + 0.6, 0.02, records[s]["stage"], transform=ax.get_xaxis_transform(), va="bottom",
                    fontsize=8, color="grey")


# ---------------------------------------------------------------------------------------------------
# every run
# ---------------------------------------------------------------------------------------------------

def confusion_matrix(run: str | Path | RunFiles, out_dir: Path, split: str = "test") -> list[Path]:
    """One confusion matrix per categorical task of the split: rows gold, colour = share of the gold row
    (so the diagonal is each class's recall whatever the class sizes), the counts written in each cell."""
    run = as_run(run)
    plt = pyplot()
    paths = []
    for task, m in run.split_metrics(split).items():
        if "confusion_matrix" not in m:  # regression and multi-label tasks
            continue
        cm = np.asarray(m["confusion_matrix"], dtype=float)
        classes = run.tasks.get(task, {}).get("classes") or list(m.get("per_class", {})) or \
            [str(i) for i in range(len(cm))]
        share = _ratio(cm, cm.sum(axis=1, keepdims=True))
        C = len(cm)
        fig, ax = plt.subplots(figsize=(2.2 + 0.75 * C, 1.6 + 0.65 * C))
        im = ax.imshow(np.nan_to_num(share), cmap="Blues", vmin=0, vmax=1)
        for i in range(C):
            for j in range(C):
                s = share[i, j]
                text = f"{int(cm[i, j])}" + (f"\n{s:.0%}" if np.isfinite(s) else "")
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if np.isfinite(s) and s > 0.5 else "black")
        ax.set_xticks(range(C), classes, rotation=45, ha="right")
        ax.set_yticks(range(C), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_title(f"{run.head}: {task} ({split}, n {int(cm.sum())})\naccuracy {m.get('accuracy', np.nan):.3f}, "
                     f"weighted F1 {m.get('weighted_f1', np.nan):.3f}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the gold row")
        fig.tight_layout()
        paths.append(save(fig, out_dir / f"confusion_{split}_{_slug(task)}.png"))
    return paths


def learning_curves(run: str | Path | RunFiles, out_dir: Path, split: str = "test") -> list[Path]:
    """Train/dev loss and the dev monitor metric per epoch, from log.jsonl (the figure training draws as
    learning_curve.png, drawn by the same function)."""
    run = as_run(run)
    if not run.history:
        return []
    path = out_dir / "learning_curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_learning_curve(run.history, str(run.metrics.get("monitor", "loss")), path)
    return [path]


def per_class_f1(run: str | Path | RunFiles, out_dir: Path, split: str = "test") -> list[Path]:
    """Per task, a bar per class and split (dev and test, and `split` if it is another): F1 for a categorical task,
    the present/absent weighted F1 of each emotion for a multi-label one. Regression tasks have no classes."""
    run = as_run(run)
    plt = pyplot()
    splits_all = run.metrics.get("splits", {})
    sides = [s for s in dict.fromkeys(("dev", "test", split)) if s in splits_all]
    tasks = dict.fromkeys(t for s in sides for t, m in splits_all[s].items() if "per_class" in m)
    paths = []
    for task in tasks:
        per = {s: splits_all[s][task]["per_class"] for s in sides if "per_class" in splits_all[s].get(task, {})}
        classes = list(next(iter(per.values())))
        key = "f1" if "f1" in next(iter(per.values()))[classes[0]] else "weighted_f1"
        width = 0.8 / len(per)
        fig, ax = plt.subplots(figsize=(2.0 + 0.55 * len(classes) * len(per), 3.6))
        x = np.arange(len(classes))
        for k, (s, pc) in enumerate(per.items()):
            values = [pc[c].get(key, np.nan) for c in classes]
            bars = ax.bar(x + (k - (len(per) - 1) / 2) * width, values, width, label=s)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks(x, classes, rotation=30, ha="right")
        ax.set_ylim(0, 1.1)
        what = "F1" if key == "f1" else "weighted F1 (present/absent)"
        ax.set_ylabel(what)
        ax.set_title(f"{run.head}: {task}, {what} per class", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(save(fig, out_dir / f"per_class_f1_{_slug(task)}.png"))
    return paths


# ---------------------------------------------------------------------------------------------------
# the heads' own figures (figures.json)
# ---------------------------------------------------------------------------------------------------

def _figure_split(run: RunFiles, split: str) -> dict | None:
    return (run.figures or {}).get("splits", {}).get(split)


def gate_weights(run: str | Path | RunFiles, out_dir: Path, split: str = "test") -> list[Path]:
    """MiSTER-E, its Fig. 5a: the mean gate weight of each expert (speech, text, fusion) over the utterances of
    each gold class of the split, with the best weights; the last group is every utterance of the split."""
    run = as_run(run)
    data = _figure_split(run, split)
    if data is None or "gate_sum" not in data:
        return []
    axes = run.figures["axes"]
    experts, classes = axes["experts"], axes["classes"]
    total, count = np.asarray(data["gate_sum"], dtype=float), np.asarray(data["gate_count"], dtype=float)
    mean = np.vstack([_ratio(total, count[:, None]), _ratio(total.sum(0), count.sum())])
    labels = [f"{c}\n(n {int(n)})" for c, n in zip(classes, count, strict=True)] + [f"all\n(n {int(count.sum())})"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2.0 + 0.5 * len(labels) * len(experts), 3.6))
    x = np.arange(len(labels))
    width = 0.8 / len(experts)
    for e, name in enumerate(experts):
        ax.bar(x + (e - (len(experts) - 1) / 2) * width, mean[:, e], width, label=name)
    ax.axhline(1 / len(experts), color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean gate weight")
    gating = run.config.get("head", {}).get("gating", "soft")
    ax.set_title(f"MiSTER-E gate weight per expert and gold class ({split}, {gating} gating)", fontsize=9)
    ax.legend(fontsize=8, title="expert", title_fontsize=8)
    fig.tight_layout()
    return [save(fig, out_dir / f"gate_weights_{split}.png")]


def disparity_ratios(run: str | Path | RunFiles, out_dir: Path, split: str = "test") -> list[Path]:
    """Ada2I, its Fig. 5: per training epoch, the mean over batches of each modality's disparity ratio
    rho_m = s_m / min s (1 = the weakest modality; Ada2I's modules should bring them toward 1)."""
    run = as_run(run)
    epochs = [r for r in (run.figures or {}).get("epochs", []) if "ratio_sum" in r]
    if not epochs:
        return []
    roles = run.figures["axes"]["modalities"]
    rho = np.array([_ratio(r["ratio_sum"], r["ratio_batches"]) for r in epochs])
    x = np.arange(1, len(epochs) + 1)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for m, role in enumerate(roles):
        ax.plot(x, rho[:, m], marker="o", label=MODALITY.get(role, role))
    ax.axhline(1, color="grey", linestyle=":", linewidth=1)
    head = run.config.get("head", {})
    if head.get("modulation", True):
        start = int(head.get("start_mod", 1))
        if 1 < start <= len(epochs):
            ax.axvline(start - 0.5, color="C3", linestyle="--", linewidth=1, label="modulation starts")
        what = f"gradient modulation from epoch {start}"
    else:
        what = "no gradient modulation"
    ax.set_xlim(0.5, len(epochs) + 0.5)
    _integer_epochs(ax)
    ax.set_xlabel("epoch")
    ax.set_ylabel("disparity ratio (mean over batches)")
    ax.set_title(f"Ada2I modality disparity ratios per epoch ({what})", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return [save(fig, out_dir / "disparity_ratios.png")]


def expert_usage(run: str | Path | RunFiles, out_dir: Path, split: str = "test") -> list[Path]:
    """MMoLRE: for every router (modality x UniTSE block), the share of the split's utterances whose top-k
    selection includes each shared expert, one row per task (a row sums to top_k), with the best weights."""
    run = as_run(run)
    data = _figure_split(run, split)
    if data is None or "usage" not in data:
        return []
    axes = run.figures["axes"]
    share = _ratio(data["usage"], data["utterances"])  # [roles, blocks, tasks, experts]
    roles, blocks, tasks, experts = axes["roles"], axes["blocks"], axes["tasks"], axes["experts"]
    routers = [(r, b) for r in range(len(roles)) for b in range(len(blocks))]
    plt = pyplot()
    fig, grid = plt.subplots(len(routers), 1, squeeze=False, layout="constrained",
                             figsize=(3.2 + 0.45 * len(experts), 0.9 + (0.45 + 0.35 * len(tasks)) * len(routers)))
    im = None
    for k, (r, b) in enumerate(routers):
        ax = grid[k][0]
        im = ax.imshow(share[r, b], cmap="viridis", vmin=0, vmax=1, aspect="auto")
        if len(experts) <= 24:
            for t in range(len(tasks)):
                for e in range(len(experts)):
                    v = share[r, b, t, e]
                    ax.text(e, t, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if v > 0.5 else "white")
        ax.set_xticks(range(len(experts)), experts if k == len(routers) - 1 else [], fontsize=7)
        ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
        ax.set_title(f"{MODALITY.get(roles[r], roles[r])}, UniTSE block {blocks[b]}", fontsize=8)
    grid[-1][0].set_xlabel("shared expert", fontsize=8)
    top_k = run.config.get("head", {}).get("top_k", "?")
    fig.suptitle(f"MMoLRE expert usage per task\n({split}, n {int(data['utterances'])}, top-{top_k} of "
                 f"{len(experts)})", fontsize=9)
    fig.colorbar(im, ax=grid.ravel().tolist(), label="share selecting it")
    return [save(fig, out_dir / f"expert_usage_{split}.png")]


def expert_activation(run: str | Path | RunFiles, out_dir: Path, split: str = "test") -> list[Path]:
    """SUMMER: per training epoch, the share of routing decisions (real utterances) at which each SDMoE expert
    was left on by the 2-sigma threshold, one panel per module (teacher, then the student's per modality)."""
    run = as_run(run)
    epochs = [r for r in (run.figures or {}).get("epochs", []) if "active" in r]
    if not epochs:
        return []
    axes = run.figures["axes"]
    share = np.array([_ratio(r["active"], np.asarray(r["routed"], dtype=float)[:, None]) for r in epochs])  # [ep, M, E]
    modules = [m for m in range(share.shape[1]) if np.isfinite(share[:, m]).any()]
    x = np.arange(1, len(epochs) + 1)
    plt = pyplot()
    fig, grid = plt.subplots(1, len(modules), squeeze=False, sharey=True, figsize=(1.5 + 3.2 * len(modules), 3.4))
    for k, m in enumerate(modules):
        ax = grid[0][k]
        for e, name in enumerate(axes["experts"]):
            ax.plot(x, share[:, m, e], marker="o", markersize=3, label=f"expert {name}")
        ax.set_title(axes["modules"][m], fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, len(epochs) + 0.5)
        _integer_epochs(ax)
    _stage_lines(grid[0], epochs)
    grid[0][0].set_ylim(0, 1.05)
    grid[0][0].set_ylabel("share of routing decisions active")
    grid[0][-1].legend(fontsize=7)
    sdmoe = run.config.get("head", {}).get("sdmoe", True)
    fig.suptitle(f"SUMMER SDMoE expert activation per epoch ({'2-sigma threshold' if sdmoe else 'plain MoE'})",
                 fontsize=9)
    fig.tight_layout()
    return [save(fig, out_dir / "expert_activation.png")]


HEAD_FIGURES: dict[str, Callable[..., list[Path]]] = {
    "mister-e": gate_weights,
    "ada2i": disparity_ratios,
    "mmolre": expert_usage,
    "summer": expert_activation,
}
RUN_FIGURES: tuple[Callable[..., list[Path]], ...] = (confusion_matrix, learning_curves, per_class_f1)


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None, split: str = "test",
             notes: list[str] | None = None) -> list[Path]:
    """Every figure that applies to one complete run, into `<run>/plots/` unless `out_dir` says otherwise: the
    confusion matrices and head figures of `split`, learning curves, per-class F1. Returns the paths written;
    `notes` receives why a paper head's own figure could not be drawn."""
    run = load_run_files(run_dir)
    run.split_metrics(split)  # a split the run does not have is an error before anything is drawn
    out = Path(out_dir) if out_dir is not None else run.path / PLOTS_DIR
    paths: list[Path] = []
    for draw in RUN_FIGURES:
        paths += draw(run, out, split)
    if run.head in HEAD_FIGURES:
        drawn = HEAD_FIGURES[run.head](run, out, split)
        paths += drawn
        if not drawn and notes is not None:
            why = (f"the run has no {FIGURES_FILE} (trained before merc recorded figure data, or a variant "
                   "without the part the figure shows)" if run.figures is None else
                   f"{FIGURES_FILE} holds no data for this figure here (a variant without the part it shows?)")
            notes.append(f"no {HEAD_FIGURES[run.head].__name__.replace('_', ' ')} figure for this {run.head} "
                         f"run: {why}")
    return paths


def figure_arrays(run: RunFiles, split: str | None = None) -> dict[str, Any]:
    """The head's recorded figure data as numpy arrays: one split's (final evaluation), or with split None the
    per-epoch records stacked along a first axis (for checks and notebooks)."""
    if run.figures is None:
        return {}
    if split is not None:
        return {k: np.asarray(v, dtype=float) for k, v in run.figures["splits"].get(split, {}).items()}
    records = run.figures["epochs"]
    keys = [k for k in (records[0] if records else {}) if k not in ("stage", "epoch")]
    return {k: np.array([r[k] for r in records], dtype=float) for k in keys}
