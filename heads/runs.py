"""A run is a directory that says everything about one training: what went in, what came out.

    runs/<head>-<dataset>-<features>-s<seed>-<time>/
      config.json         everything resolved: head + config values, store, dataset, features and their
                          fingerprints, tasks, seed, precision, optimiser, versions
      head_config.json    what rebuilds the head without the store: name, config, input dims, tasks
      model.safetensors   the best-dev weights
      feature_stats.safetensors  per role, the train-split mean and std that standardised the features
      metrics.json        per split and task: overall metrics, per class, confusion matrix
      predictions.csv     utterance_id, split, task, gold, pred, probabilities (every utterance)
      log.jsonl           one line per epoch
      learning_curve.png  train/dev loss and the dev metric per epoch

`evaluate_run` reloads a run and recomputes a split's metrics; on the same machine it reproduces the
recorded ones exactly (same weights, same eval batches, same precision).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from merc.extract.store import StoreReader

from .data import HeadsData, HeadsError, resolve_roles
from .models.base import Head, TaskSpec
from .registry import available_heads, head_class, make_config
from .trainer import (
    OPTIM_KEYS,
    Callback,
    FitResult,
    TaskPredictions,
    TrainConfig,
    Trainer,
    predict,
    resolve_device,
    seed_everything,
)

RUN_FORMAT = 1
SPLITS = ("train", "dev", "test")
# --set keys for the trainer itself (besides the optimiser keys and the head's config fields).
TRAINER_KEYS = ("patience", "eval_batch_size", "monitor", "max_frames", "normalize")
# optional entries of head.optimizer_config() that set the trainer's defaults (a paper's batch size, epochs)
SCHEDULE_KEYS = ("epochs", "batch_size", "patience")


@dataclass
class RunRequest:
    """What `merc-heads train` was asked for (None = the head's or the trainer's default)."""

    head: str
    store: str
    dataset: str
    features: str | dict[str, str]
    tasks: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    precision: str = "auto"
    epochs: int | None = None
    batch_size: int | None = None
    out: str = "runs"
    device: str = "auto"
    name: str | None = None


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict  # split -> task -> metrics
    fit: FitResult


# ---------------------------------------------------------------------------------------------------
# resolving a request
# ---------------------------------------------------------------------------------------------------

def head_cls_or_error(name: str) -> type[Head]:
    try:
        return head_class(name)
    except KeyError:
        raise HeadsError(f"unknown head {name!r}", fix=f"use one of: {', '.join(available_heads())} "
                                                       "(merc-heads list shows their options)") from None
    except ImportError as e:
        raise HeadsError(f"head {name!r} cannot be imported ({e})",
                         fix="its module is missing or broken; pick another head (merc-heads list)") from None


def split_overrides(head: str, overrides: dict[str, Any]) -> tuple[dict, dict, dict]:
    """--set key=value -> (head config, optimiser, trainer) overrides. The head's own fields win."""
    cls = head_cls_or_error(head)
    fields = {f.name for f in dataclasses.fields(cls.config_cls)} if dataclasses.is_dataclass(cls.config_cls) else set()
    head_over, optim_over, trainer_over = {}, {}, {}
    for key, value in overrides.items():
        if key in fields:
            head_over[key] = value
        elif key in OPTIM_KEYS:
            optim_over[key] = _parse_value(value)
        elif key in TRAINER_KEYS:
            trainer_over[key] = _parse_value(value)
        else:
            raise HeadsError(
                f"head {head!r} has no option {key!r}",
                fix=f"head options: {', '.join(sorted(fields)) or 'none'}; optimiser: {', '.join(OPTIM_KEYS)}; "
                    f"trainer: {', '.join(TRAINER_KEYS)}")
    return head_over, optim_over, trainer_over


def _parse_value(raw: Any) -> Any:
    """A --set string as int, float, bool, None, a comma tuple of numbers, or the string itself."""
    if not isinstance(raw, str):
        return raw
    low = raw.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    if "," in raw:
        return tuple(_parse_value(p) for p in raw.split(",") if p)
    return raw


def check_roles(cls: type[Head], roles: dict[str, str]) -> None:
    """A head that needs roles the features don't provide (or can't use a provided one) fails here."""
    missing = [r for r in cls.required_roles if r not in roles]
    allowed = set(cls.required_roles) | set(cls.optional_roles)
    extra = [r for r in roles if r not in allowed]
    words = {"t": "text", "a": "audio", "v": "video"}
    if missing:
        have = ", ".join(f"{r}={fs}" for r, fs in roles.items()) or "nothing"
        need = ",".join(f"{r}=<{words[r]} feature set>" for r in cls.required_roles)
        raise HeadsError(f"head {cls.name!r} needs modality roles {', '.join(cls.required_roles)} "
                         f"but --features gives {have}",
                         fix=f"pass --features {need} (merc-heads list shows what each head needs)")
    if extra:
        raise HeadsError(f"head {cls.name!r} cannot use role(s) {', '.join(extra)} "
                         f"({', '.join(roles[r] for r in extra)})",
                         fix=f"drop them from --features; it uses {', '.join(sorted(allowed, key='tav'.index))}")


def _new_run_dir(out: str, req: RunRequest, roles: dict[str, str]) -> Path:
    base = req.name or f"{req.head}-{req.dataset}-{'+'.join(roles.values())}-s{req.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = Path(out) / base
    k = 1
    while path.exists():
        k += 1
        path = Path(out) / f"{base}-{k}"
    path.mkdir(parents=True)
    return path


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("merc", "torch", "numpy", "zarr", "safetensors"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "?"
    return out


# ---------------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------------

def train_run(req: RunRequest, callbacks: list[Callback] | None = None) -> RunResult:
    """Load the features, build and train the head, evaluate every split, write the run directory."""
    cls = head_cls_or_error(req.head)
    head_over, optim_over, trainer_over = split_overrides(req.head, req.overrides)
    cfg = _make_config(req.head, head_over)
    max_frames = int(trainer_over.get("max_frames", 64) or 0) or None
    normalize = str(trainer_over.get("normalize", "zscore") or "none")  # --set normalize=none parses to None
    check_roles(cls, resolve_roles(StoreReader(req.store), req.dataset, req.features))  # before any heavy read
    # a multi-task head (MMoLRE: sentiment + emotions) may ask for every label space by default
    default_tasks = getattr(cls, "default_tasks", None)
    tasks = req.tasks if req.tasks is not None else (default_tasks(cfg) if default_tasks else None)
    data = HeadsData.load(req.store, req.dataset, req.features, tasks=tasks,
                          frames="frames" in cls.levels, max_frames=max_frames, normalize=normalize)
    seed_everything(req.seed)  # the head's initial weights come from the seeded generator too
    try:
        head = cls(cfg, data.dims, data.tasks)
    except ValueError as e:  # heads refuse tasks or option combinations they cannot serve, saying why
        raise HeadsError(str(e) if req.head in str(e) else f"head {req.head!r}: {e}") from None

    schedule = {k: v for k, v in head.optimizer_config().items() if k in SCHEDULE_KEYS}
    tcfg = TrainConfig(
        epochs=req.epochs or int(schedule.get("epochs", TrainConfig.epochs)),
        batch_size=req.batch_size or int(schedule.get("batch_size", TrainConfig.batch_size)),
        patience=int(trainer_over.get("patience", schedule.get("patience", TrainConfig.patience))),
        eval_batch_size=int(trainer_over.get("eval_batch_size", TrainConfig.eval_batch_size)),
        monitor=trainer_over.get("monitor"), seed=req.seed, precision=req.precision, device=req.device,
        optim=optim_over)
    trainer = Trainer(head, data, tcfg, callbacks)
    run_dir = _new_run_dir(req.out, req, data.roles)
    logger = _RunLog(run_dir / "log.jsonl")
    trainer.callbacks.append(logger)

    config = {
        "merc_run_format": RUN_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": sys.argv,
        "head": req.head,
        "head_config": dataclasses.asdict(cfg),
        "overrides": {k: str(v) for k, v in req.overrides.items()},
        "store": str(Path(req.store).resolve()),
        "dataset": req.dataset,
        "features": data.roles,
        "fingerprints": data.fingerprints,
        "feature_dims": data.dims,
        "levels": list(cls.levels),
        "max_frames": max_frames,
        "normalize": normalize,
        "tasks": [_task_dict(t) for t in data.tasks],
        "monitor": trainer.monitor,
        "train": {**dataclasses.asdict(tcfg), "precision_requested": req.precision, "precision": trainer.precision,
                  "device": str(trainer.device)},
        "optimizer": trainer.settings,
        "versions": versions(),
    }
    _write_json(run_dir / "config.json", config)
    _write_json(run_dir / "head_config.json", {"head": req.head, "config": dataclasses.asdict(cfg),
                                               "dims": data.dims, "tasks": [_task_dict(t) for t in data.tasks]})

    save_feature_stats(data.stats, run_dir / "feature_stats.safetensors")
    fit = trainer.fit()
    save_weights(head, run_dir / "model.safetensors")
    all_preds = {s: trainer.evaluate(s) for s in SPLITS if len(data.split_dialogues(s))}
    metrics = {s: {t: p.metrics() for t, p in preds.items()} for s, preds in all_preds.items()}
    _write_json(run_dir / "metrics.json", {"monitor": fit.monitor, "primary_task": data.tasks[0].name,
                                           "best": fit.best, "precision": fit.precision, "device": fit.device,
                                           "train_seconds": round(fit.seconds, 3), "splits": metrics})
    write_predictions(run_dir / "predictions.csv", data, all_preds)
    plot_learning_curve(fit.history, fit.monitor, run_dir / "learning_curve.png")
    return RunResult(run_dir, metrics, fit)


def _make_config(head: str, overrides: dict[str, Any]):
    try:
        return make_config(head, overrides)
    except (KeyError, ValueError) as e:
        raise HeadsError(f"bad option for head {head!r}: {e.args[0] if e.args else e}",
                         fix="check --set key=value against `merc-heads list`") from None


def _task_dict(t: TaskSpec) -> dict:
    return {"name": t.name, "kind": t.kind, "classes": list(t.classes)}


class _RunLog(Callback):
    def __init__(self, path: Path):
        self.path = path

    def on_epoch_end(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, (tuple, set)):
        return list(o)
    return str(o)


# ---------------------------------------------------------------------------------------------------
# checkpoint
# ---------------------------------------------------------------------------------------------------

def save_weights(head: Head, path: Path) -> None:
    from safetensors.torch import save_model

    save_model(head, str(path))  # handles tied weights; tensors only, no pickle


def save_feature_stats(stats: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({f"{role}.{k}": np.ascontiguousarray(a) for role, (mean, std) in stats.items()
               for k, a in (("mean", mean), ("std", std))}, str(path))


def load_feature_stats(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from safetensors.numpy import load_file

    if not path.exists():
        raise HeadsError(f"{path.name} is missing", file=str(path.parent),
                         fix="the run was trained with feature standardisation; retrain it, or copy the whole run "
                             "directory")
    flat = load_file(str(path))
    return {role: (flat[f"{role}.mean"], flat[f"{role}.std"]) for role in {k.split(".")[0] for k in flat}}


def load_head(run_dir: str | Path, device: torch.device | str = "cpu") -> Head:
    """Rebuild a run's head from head_config.json and load its safetensors weights (no pickle involved)."""
    from safetensors.torch import load_model

    run_dir = Path(run_dir)
    hc = _read_json(run_dir / "head_config.json")
    cls = head_cls_or_error(hc["head"])
    defaults = cls.config_cls()
    values = {k: tuple(v) if isinstance(getattr(defaults, k, None), tuple) and isinstance(v, list) else v
              for k, v in hc["config"].items()}
    cfg = _make_config(hc["head"], values)
    tasks = [TaskSpec(t["name"], t["kind"], tuple(t["classes"])) for t in hc["tasks"]]
    head = cls(cfg, hc["dims"], tasks)
    load_model(head, str(run_dir / "model.safetensors"), strict=True, device=str(device))
    return head.to(device)


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise HeadsError(f"{path.name} is missing", file=str(path.parent),
                         fix="pass a run directory written by merc-heads train (it holds config.json)")
    return json.loads(path.read_text())


def load_run(run_dir: str | Path, store: str | None = None, device: str = "auto") -> tuple[Head, HeadsData, dict, torch.device, str]:
    """A run's head (best weights), its data (fingerprints checked), config, device and eval precision."""
    run_dir = Path(run_dir)
    config = _read_json(run_dir / "config.json")
    dev = resolve_device(device)
    normalize = config.get("normalize", "none")
    stats = load_feature_stats(run_dir / "feature_stats.safetensors") if normalize == "zscore" else None
    data = HeadsData.load(store or config["store"], config["dataset"], config["features"],
                          tasks=[t["name"] for t in config["tasks"]], frames="frames" in config["levels"],
                          max_frames=config.get("max_frames"), fingerprints=config["fingerprints"],
                          normalize=normalize, stats=stats)
    head = load_head(run_dir, dev)
    precision = config["train"]["precision"]
    if precision == "fp16" and dev.type != "cuda":
        precision = "fp32"  # fp16 autocast exists on CUDA only; the numbers will differ slightly
    return head, data, config, dev, precision


def evaluate_run(run_dir: str | Path, split: str = "test", store: str | None = None,
                 device: str = "auto") -> tuple[dict, dict | None]:
    """(metrics recomputed from the checkpoint, metrics recorded at training time) for one split."""
    head, data, config, dev, precision = load_run(run_dir, store, device)
    _check_split(data, split)
    preds, _ = predict(head, data, split, batch_size=config["train"]["eval_batch_size"], device=dev,
                       precision=precision)
    metrics = {t: p.metrics() for t, p in preds.items()}
    recorded_file = Path(run_dir) / "metrics.json"
    recorded = json.loads(recorded_file.read_text())["splits"].get(split) if recorded_file.exists() else None
    return metrics, recorded


def predict_run(run_dir: str | Path, out: str | Path, split: str = "all", store: str | None = None,
                device: str = "auto") -> int:
    """Write predictions of a split (or every split) to a CSV; returns the number of rows."""
    head, data, config, dev, precision = load_run(run_dir, store, device)
    splits = [s for s in SPLITS if len(data.split_dialogues(s))] if split == "all" else [split]
    for s in splits:
        _check_split(data, s)
    all_preds = {s: predict(head, data, s, batch_size=config["train"]["eval_batch_size"], device=dev,
                            precision=precision)[0] for s in splits}
    return write_predictions(Path(out), data, all_preds)


def _check_split(data: HeadsData, split: str) -> None:
    if len(data.split_dialogues(split)) == 0:
        have = sorted(set(data.dialogue_splits.tolist()))
        raise HeadsError(f"dataset {data.dataset!r} has no {split!r} split", fix=f"use --split {' or '.join(have)}")


# ---------------------------------------------------------------------------------------------------
# predictions and plots
# ---------------------------------------------------------------------------------------------------

def write_predictions(path: Path, data: HeadsData, all_preds: dict[str, dict[str, TaskPredictions]]) -> int:
    """One row per (utterance, task): gold and predicted labels by name (multilabel: JSON lists), probabilities as a
    JSON object {class: p} (regression: the predicted value in `pred`, no probabilities); gold "" = unlabelled."""
    n = 0
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["utterance_id", "split", "task", "gold", "pred", "probabilities"])
        for split, preds in all_preds.items():
            for name, p in preds.items():
                t = p.task
                for i, row in enumerate(p.rows):
                    gold, pred, probs = _format_prediction(t, p.gold[i], p.pred[i], None if p.scores is None else p.scores[i])
                    w.writerow([data.utterance_ids[row], split, name, gold, pred, probs])
                    n += 1
    return n


def _format_prediction(t: TaskSpec, gold, pred, scores) -> tuple[str, str, str]:
    if t.kind == "categorical":
        g = t.classes[int(gold)] if gold >= 0 else ""
        probs = {c: round(float(s), 6) for c, s in zip(t.classes, scores, strict=True)}
        return g, t.classes[int(pred)], json.dumps(probs)
    if t.kind == "multilabel":  # JSON lists: [] = labelled with nothing present, "" = unlabelled
        g = "" if (gold < 0).all() else json.dumps([c for c, v in zip(t.classes, gold, strict=True) if v > 0])
        p = json.dumps([c for c, v in zip(t.classes, pred, strict=True) if v])
        probs = {c: round(float(s), 6) for c, s in zip(t.classes, scores, strict=True)}
        return g, p, json.dumps(probs)
    return ("" if np.isnan(gold) else f"{float(gold):.6g}"), f"{float(pred):.6g}", ""


def plot_learning_curve(history: list[dict], monitor: str, path: Path) -> None:
    """Train/dev loss and the dev monitor metric over epochs, stages separated by dotted lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(history))
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(x, [r.get("train_loss", np.nan) for r in history], label="train loss")
    ax_loss.plot(x, [r.get("dev_loss", np.nan) for r in history], label="dev loss")
    ax_metric.plot(x, [r.get(f"dev_{monitor}", np.nan) for r in history], color="C2", label=f"dev {monitor}")
    for i in range(1, len(history)):
        if history[i]["stage"] != history[i - 1]["stage"]:
            for ax in (ax_loss, ax_metric):
                ax.axvline(i - 0.5, color="grey", linestyle=":")
    for ax in (ax_loss, ax_metric):
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
