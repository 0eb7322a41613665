"""A run is a directory that says everything about one training: what went in, what came out.

    runs/<head>-<dataset>-<features>-s<seed>-<time>/
      run.json            status: running | complete | interrupted | failed, epoch reached, the error of a
                          failed run, timestamps, the SHA-256 of model.safetensors recorded at every save
      config.json         the resolved config tree (head, optim, train, data: heads/config.py), which
                          `merc-heads train --config` repeats and `--resume` continues; the preset applied
                          (name@version) and where every non-default value came from; what it resolved to:
                          features, the encoders they came from, fingerprints, tasks, precision, versions
      head_config.json    what rebuilds the head without the store: name, config, input dims, tasks
      model.safetensors   the best-dev weights, rewritten at every dev improvement while training
      resume.safetensors  while training: the state after the last completed epoch (heads/checkpoint.py)
      feature_stats.safetensors  per role, the train-split mean and std that standardised the features
      metrics.json        per split and task: overall metrics, per class, confusion matrix
      predictions.csv     utterance_id, split, task, gold, pred, probabilities (every utterance)
      log.jsonl           one line per epoch; for a head with figure data (Head.figure_stats) the line's
                          `figures` holds that epoch's sums over the training batches
      figures.json        only for such heads (MiSTER-E, Ada2I, MMoLRE, SUMMER): what their papers' figures
                          need, recorded from forward passes that ran anyway (merc-heads plot reads it and never
                          re-runs the model): {"format", "head", "axes": names along the arrays' axes,
                          "epochs": [{"stage", "epoch", sums...}] (= log.jsonl's `figures`, so a resumed run has
                          them all), "splits": {split: sums over the final evaluation with the best weights}}
      learning_curve.png  train/dev loss and the dev metric per epoch

Every file is written atomically (a temporary file, then a rename). A Ctrl-C marks the run interrupted and
`merc-heads train --resume <run>` continues it from the last completed epoch, ending with the weights the
uninterrupted run would have. `evaluate_run` reloads a complete run (its weights checked against the recorded
SHA-256) and recomputes a split's metrics; on the same machine it reproduces the recorded ones exactly (same
weights, same eval batches, same precision).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from merc.extract.store import FRAMES, normalize_levels

from . import feature_cache, presets
from .checkpoint import (
    MODEL_FILE,
    RESUME_FILE,
    STATUS_FILE,
    RunRecord,
    TrainState,
    atomic_path,
    atomic_write_text,
    load_state,
    lock_is_held,
    now,
    read_status,
    remove_stale_temps,
    run_lock,
    save_model_atomic,
    save_state,
    sha256_file,
    sigint_deferred,
)
from .config import (
    FLAGS,
    LEGACY_HEAD_FIELDS,
    NAMESPACES,
    RunConfig,
    Setting,
    default_settings,
    resolve,
    show,
    tree_settings,
)
from .data import HeadsData, HeadsError, resolve_roles
from .models.base import Head, TaskSpec
from .registry import available_heads, head_class, make_config
from .trainer import (
    Callback,
    FitResult,
    TaskPredictions,
    TrainConfig,
    Trainer,
    figure_values,
    predict,
    resolve_device,
    seed_everything,
)

RUN_FORMAT = 3  # 3: config.json holds the config tree (head/optim/train/data); 2: the request and flat keys
SPLITS = ("train", "dev", "test")
FIGURES_FILE = "figures.json"
FIGURES_FORMAT = 1


@dataclass
class RunRequest:
    """What `merc-heads train` was asked for. None = not given: the value then comes from the `--config` file,
    the preset, the head class's defaults or the config dataclasses, in that order (heads/config.py)."""

    head: str | None = None
    store: str | None = None
    dataset: str | None = None
    features: str | dict[str, str] | None = None
    tasks: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # --set key=value, in order
    seed: int | None = None
    precision: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    device: str | None = None
    preset: str | None = None  # a preset name, "none", or None: the head's preset for the dataset, if any
    config: str | Path | dict | None = None  # --config: a config.json (or YAML) tree, or the tree itself
    out: str = "runs"
    name: str | None = None

    def explicit(self) -> list[Setting]:
        """The command-line options given, as settings of the tree (they win over the file and the preset)."""
        out = []
        for key, value in (("data.store", self.store), ("data.dataset", self.dataset),
                           ("data.features", self.features), ("data.tasks", self.tasks), ("train.seed", self.seed),
                           ("train.precision", self.precision), ("train.epochs", self.epochs),
                           ("train.batch_size", self.batch_size), ("train.device", self.device)):
            if value is not None:
                if key == "data.store":
                    value = str(Path(value).resolve())  # a repeat or resume may start in another directory
                out.append(Setting(key, value, f"{FLAGS[key]} {show(value)}"))
        return out

    def sets(self) -> list[Setting]:
        return [Setting(k, v, f"--set {k}={show(v)}") for k, v in self.overrides.items()]


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict  # split -> task -> metrics
    fit: FitResult
    resumed_from: int | None = None  # epochs already done when a resumed run continued
    config: RunConfig | None = None  # the resolved tree the run trained with
    encoders: dict[str, str] = field(default_factory=dict)  # role -> encoder the cached features came from


class RunInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C (SIGINT): the run is marked interrupted and can be resumed."""

    def __init__(self, run_dir: Path, status: dict):
        super().__init__(str(run_dir))
        self.run_dir, self.status = run_dir, status

    @property
    def resume_command(self) -> str:
        return resume_command(self.run_dir)


def resume_command(run_dir: str | Path) -> str:
    return f"merc-heads train --resume {shlex.quote(str(run_dir))}"


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


def resolve_request(req: RunRequest) -> RunConfig:
    """The config tree of a request: dataclass defaults < head class defaults < preset < --config file <
    explicit options < --set (heads/config.py). Every value is parsed and checked here, before anything loads."""
    file_head, file_settings, file_preset = None, [], _NO_PRESET_KEY
    if req.config is not None:
        tree, where = _config_tree(req.config)
        file_head, file_settings = tree_settings(tree, where)
        file_preset = tree.get("preset", _NO_PRESET_KEY)
    head = req.head or file_head
    explicit, sets = req.explicit(), req.sets()
    given = {s.key for s in explicit + sets + file_settings} | {"data." + s.key for s in sets if "." not in s.key}
    missing = [flag for key, flag in (("data.store", "--store"), ("data.dataset", "--dataset"),
                                      ("data.features", "--features")) if key not in given]
    if head is None or missing:
        missing = ["--head"] * (head is None) + missing
        raise HeadsError(f"missing option{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
                         fix="pass --head, --store, --dataset and --features (merc-heads train --help), "
                             "--config runs/<run>/config.json to repeat a run, or --resume runs/<run> to continue one")
    if req.head and file_head and req.head != file_head:
        raise HeadsError(f"--head {req.head} differs from the head of the --config file ({file_head})",
                         fix="drop --head to repeat the file's run, or write a config for the other head")
    cls = head_cls_or_error(head)
    dataset = next((str(s.value) for s in reversed(file_settings + explicit + sets)
                    if s.key in ("data.dataset", "dataset")), "")
    wanted = req.preset
    if wanted is None and file_preset is not _NO_PRESET_KEY:  # the file's preset, below the file's own values
        wanted = str(file_preset).split("@")[0] if file_preset else presets.NONE
    preset = presets.choose(head, dataset, wanted)
    preset_settings = [Setting(k, v, f"preset {preset.ref}: {k}={show(v)}") for k, v in preset.values.items()] \
        if preset is not None else []
    layers = default_settings(cls) + preset_settings + file_settings + explicit + sets
    return resolve(head, cls.config_cls, layers, preset=preset.ref if preset is not None else None)


_NO_PRESET_KEY = object()


def _config_tree(source: str | Path | dict) -> tuple[dict, str]:
    """A --config file (JSON, or YAML for .yaml/.yml) or an already read tree, and how messages name it."""
    if isinstance(source, dict):
        return source, "--config"
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
    where = f"--config {path}"
    if not path.is_file():
        raise HeadsError(f"{where}: no such file", fix="pass a config.json of a run (runs/<run>/config.json) or a "
                                                       "YAML file with head/optim/train/data sections")
    try:
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            tree = yaml.safe_load(text)
        else:
            tree = json.loads(text)
    except Exception as e:  # OSError, JSON and YAML errors alike: the file is not a tree
        raise HeadsError(f"{where} cannot be read ({type(e).__name__}: {e})",
                         fix="pass a config.json written by merc-heads train, or valid YAML") from None
    if not isinstance(tree, dict):
        raise HeadsError(f"{where} holds no mapping", fix="write head/optim/train/data sections")
    return tree, where


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


def _new_run_dir(out: str, name: str | None, cfg: RunConfig, roles: dict[str, str]) -> Path:
    base = name or (f"{cfg.head_name}-{cfg.data.dataset}-{'+'.join(roles.values())}-s{cfg.train.seed}-"
                    f"{time.strftime('%Y%m%d-%H%M%S')}")
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

@dataclass
class _Prepared:
    """A config tree resolved into data, a head and a trainer: everything before the run directory exists."""

    config: RunConfig
    cls: type[Head]
    data: HeadsData
    head: Head
    trainer: Trainer
    encoders: dict[str, str]  # role -> the encoder its features came from (the store's feature-set record)


def task_names(cls: type[Head], config: RunConfig) -> list[str] | None:
    """The tasks a run asks for: the tree's, else the head's default (a multi-task head such as MMoLRE asks for
    sentiment + emotions), else None (the dataset's first label space)."""
    if config.data.tasks is not None:
        return list(config.data.tasks)
    default_tasks = getattr(cls, "default_tasks", None)
    return default_tasks(config.head) if default_tasks else None


def _prepare(config: RunConfig, callbacks: list[Callback] | None, *, fingerprints: dict | None = None,
             stats: dict | None = None) -> _Prepared:
    cls = head_cls_or_error(config.head_name)
    d = config.data
    reader = feature_cache.reader(d.store)
    roles = resolve_roles(reader, d.dataset, d.features)
    check_roles(cls, roles)  # before any heavy read
    data = HeadsData.load(d.store, d.dataset, roles, tasks=task_names(cls, config), frames=FRAMES in cls.levels,
                          max_frames=dict(d.max_frames), normalize=d.normalize, fingerprints=fingerprints,
                          stats=stats)
    # the tree records what the request resolved to, so that `--config` repeats exactly this run
    d.store, d.features, d.tasks = str(Path(d.store).resolve()), dict(data.roles), tuple(t.name for t in data.tasks)
    encoders = {role: str(reader.info(d.dataset, fs).get("encoder", "?")) for role, fs in data.roles.items()}
    seed_everything(config.train.seed)  # the head's initial weights come from the seeded generator too
    try:
        head = cls(config.head, data.dims, data.tasks)
    except ValueError as e:  # heads refuse tasks or option combinations they cannot serve, saying why
        name = config.head_name
        raise HeadsError(str(e) if name in str(e) else f"head {name!r}: {e}") from None
    tcfg = TrainConfig(**dataclasses.asdict(config.train), optim=config.optim_settings())
    trainer = Trainer(head, data, tcfg, list(callbacks or []))  # checks every setting: before any run directory
    return _Prepared(config, cls, data, head, trainer, encoders)


def train_run(req: RunRequest, callbacks: list[Callback] | None = None, config: RunConfig | None = None) -> RunResult:
    """Load the features, build and train the head, evaluate every split, write the run directory.
    `config`: the request's tree when the caller resolved it already (resolve_request).

    Raises RunInterrupted (a KeyboardInterrupt) on Ctrl-C, with the run marked interrupted and resumable; any
    other error marks the run failed (run.json holds the message) and propagates.
    """
    p = _prepare(config if config is not None else resolve_request(req), callbacks)
    run_dir = _new_run_dir(req.out, req.name, p.config, p.data.roles)
    with run_lock(run_dir):
        record = RunRecord.create(run_dir, resume_command(run_dir), list(p.head.stages()), p.trainer.cfg.epochs)

        def setup() -> None:
            cfg, data, trainer = p.config, p.data, p.trainer
            tasks = [_task_dict(t) for t in data.tasks]
            config_json = {
                "merc_run_format": RUN_FORMAT,
                "created": record.data["created"],
                "command": sys.argv,
                **cfg.to_dict(),  # the tree: `merc-heads train --config <this file>` repeats the run
                "preset": cfg.preset,
                "sources": cfg.sources,  # where each value that is not a dataclass default came from
                # what the tree resolved to (recorded, not read back by --config)
                "features": data.roles,
                "encoders": p.encoders,
                "fingerprints": data.fingerprints,
                "feature_dims": data.dims,
                "levels": list(p.cls.levels),
                "tasks": tasks,
                "monitor": trainer.monitor,
                "precision": trainer.precision,
                "device": str(trainer.device),
                "optimizer": trainer.settings,
                "versions": versions(),
            }
            _write_json(run_dir / "config.json", config_json)
            head_values = {k: v for k, v in cfg.to_dict()["head"].items() if k != "name"}
            _write_json(run_dir / "head_config.json", {"head": cfg.head_name, "config": head_values,
                                                       "dims": data.dims, "tasks": tasks})
            save_feature_stats(data.stats, run_dir / "feature_stats.safetensors")

        return _execute(p, run_dir, record, None, setup)


def resumable_status(run_dir: str | Path) -> dict | None:
    """run.json of a run that `resume_run` can continue; None when the run is already complete.
    Anything that is not a resumable run directory is a HeadsError saying why."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HeadsError(f"{run_dir} is not a run directory (it does not exist)" if not run_dir.exists() else
                         f"{run_dir} is not a run directory (it is a file)",
                         fix="pass a directory written by merc-heads train, e.g. --resume runs/<run>")
    status = read_status(run_dir)
    if status is None:
        if (run_dir / "config.json").exists():
            raise HeadsError(f"{STATUS_FILE} is missing: the run was written before merc-heads made runs "
                             "resumable", file=str(run_dir),
                             fix="train it again with merc-heads train (merc-heads eval still reads it)")
        raise HeadsError(f"{run_dir} is not a run directory (it has no {STATUS_FILE} or config.json)",
                         fix="pass a directory written by merc-heads train, e.g. --resume runs/<run>")
    if status["status"] == "complete":
        return None
    if lock_is_held(run_dir):
        raise HeadsError("another merc-heads process is training in this run directory right now", file=str(run_dir),
                         fix="wait for it to finish (or stop it with Ctrl-C), then resume")
    return status


def resume_run(run_dir: str | Path, callbacks: list[Callback] | None = None) -> RunResult:
    """Continue an interrupted (or killed, or failed) run from its last completed epoch, with the config tree
    recorded in its config.json; it ends with the weights the uninterrupted run ends with (bitwise on the CPU)."""
    run_dir = Path(run_dir)
    if resumable_status(run_dir) is None:
        raise HeadsError("the run is complete; there is nothing to resume", file=str(run_dir),
                         fix=f"evaluate it: merc-heads eval {shlex.quote(str(run_dir))}")
    config = _read_json(run_dir / "config.json")
    if not isinstance(config.get("optim"), dict):
        raise HeadsError("config.json records no config tree to resume (a run from an older merc-heads)",
                         file=str(run_dir), fix="resume it with the merc version that started it, or train it again")
    try:
        head, settings = tree_settings(config, f"{run_dir / 'config.json'}")
        cls = head_cls_or_error(str(head))
        tree = resolve(str(head), cls.config_cls, default_settings(cls) + settings, preset=config.get("preset"))
        tree.sources = dict(config.get("sources") or {})
        fingerprints = dict(config["fingerprints"])
    except (KeyError, TypeError) as e:
        raise HeadsError(f"config.json is incomplete ({e})", file=str(run_dir),
                         fix="restore it from a copy of the run directory, or train the run again") from None
    recorded = {ns: config[ns] for ns in NAMESPACES}
    stats_file = run_dir / "feature_stats.safetensors"
    stats = load_feature_stats(stats_file) if stats_file.exists() else None
    with run_lock(run_dir):
        remove_stale_temps(run_dir)
        p = _prepare(tree, callbacks, fingerprints=fingerprints, stats=stats)
        if json.loads(json.dumps(p.config.to_dict(), default=_json_default)) != recorded:
            raise HeadsError("the run's configuration now resolves differently from the one it recorded",
                             file=str(run_dir / "config.json"),
                             fix="resume with the merc version that started the run, or train a new run")
        resume_file = run_dir / RESUME_FILE
        state = load_state(resume_file) if resume_file.exists() else None  # none: stopped before epoch 1 ended
        record = RunRecord.open(run_dir)
        if state is not None and state.best_model_file:
            state.best_model = _best_weights(p.head, run_dir / state.best_model_file, record.data.get("model_sha256"))
        done = len(state.history) if state is not None else 0
        record.update(status="running", started=now(), finished=None, error=None, pid=os.getpid(),
                      resumed=[*record.data.get("resumed", []), {"at": now(), "epochs_done": done}],
                      resume_command=resume_command(run_dir))
        # the log holds exactly the epochs the state holds (a kill may have come between the two writes)
        atomic_write_text(run_dir / "log.jsonl", "".join(json.dumps(r) + "\n" for r in (state.history if state else [])))
        return _execute(p, run_dir, record, state, None, resumed_from=done)


def _best_weights(head: Head, path: Path, sha: str | None) -> dict[str, torch.Tensor]:
    """The stage's best weights from the run's checkpoint file (checked against run.json), as a state dict.

    A kill between the best checkpoint and the epoch's state leaves a newer best than the state knows; the
    resumed run recomputes that epoch exactly, improves again and so replaces it with the same weights."""
    from safetensors.torch import load_model

    if not path.exists() or (sha is not None and sha256_file(path) != sha):
        raise HeadsError(f"{path.name} is {'missing' if not path.exists() else 'damaged'}: the resumed run needs "
                         "the best weights it holds", file=str(path.parent),
                         fix="restore the run directory from a copy, or train the run again")
    load_model(head, str(path), strict=True)
    return {k: v.detach().clone() for k, v in head.state_dict().items()}


def _execute(p: _Prepared, run_dir: Path, record: RunRecord, state: TrainState | None, setup,
             resumed_from: int | None = None) -> RunResult:
    """Train (from `state` when resuming), then evaluate and write the results; keep run.json's status true."""
    trainer, head, data = p.trainer, p.head, p.data
    # checkpoint and log first: a display callback that raises (Ctrl-C lands anywhere) comes after the saves
    trainer.callbacks[:0] = [_RunCheckpoint(run_dir, record), _RunLog(run_dir / "log.jsonl")]
    try:
        if setup is not None:
            setup()
        fit = trainer.fit(resume=state)
        with sigint_deferred():
            sha = save_model_atomic(head, run_dir / MODEL_FILE)
            record.update(model_sha256=sha, model_saved=now())
        all_preds, split_figures = {}, {}
        for s in SPLITS:
            if len(data.split_dialogues(s)):
                acc: dict[str, torch.Tensor] = {}
                all_preds[s] = trainer.evaluate(s, figures=acc)
                if acc:
                    split_figures[s] = figure_values(acc)
        metrics = {s: {t: pr.metrics() for t, pr in preds.items()} for s, preds in all_preds.items()}
        _write_json(run_dir / "metrics.json", {"monitor": fit.monitor, "primary_task": data.tasks[0].name,
                                               "best": fit.best, "precision": fit.precision, "device": fit.device,
                                               "train_seconds": round(fit.seconds, 3), "splits": metrics})
        write_predictions(run_dir / "predictions.csv", data, all_preds)
        write_figures(run_dir / FIGURES_FILE, head, fit.history, split_figures)
        plot_learning_curve(fit.history, fit.monitor, run_dir / "learning_curve.png")
        with sigint_deferred():
            record.update(status="complete", finished=now(), error=None)
    except KeyboardInterrupt:
        with contextlib.suppress(KeyboardInterrupt), sigint_deferred():
            record.update(status="interrupted", interrupted=now())
        raise RunInterrupted(run_dir, dict(record.data)) from None
    except BaseException as e:
        with contextlib.suppress(KeyboardInterrupt), sigint_deferred():
            record.update(status="failed", error=str(e) or type(e).__name__, failed=now())
        raise
    # the resume state holds the optimiser's moments and a copy of the weights: a complete run needs neither
    with contextlib.suppress(OSError):
        (run_dir / RESUME_FILE).unlink()
    return RunResult(run_dir, metrics, fit, resumed_from, p.config, p.encoders)


class _RunCheckpoint(Callback):
    """Writes the best-so-far weights at every dev improvement and the resume state at every epoch's end,
    atomically, each with its run.json update (a Ctrl-C waits until both are written)."""

    def __init__(self, run_dir: Path, record: RunRecord):
        self.run_dir, self.record = run_dir, record

    def on_best(self, head: Head, stage: str, epoch: int) -> None:
        with sigint_deferred():
            sha = save_model_atomic(head, self.run_dir / MODEL_FILE, fsync=False)  # flushed when the run ends
            self.record.update(durable=False, model_sha256=sha, model_saved=now(),
                               best={"stage": stage, "epoch": epoch + 1})

    def on_checkpoint(self, state: TrainState) -> None:
        with sigint_deferred():
            save_state(state, self.run_dir / RESUME_FILE, best_model_file=MODEL_FILE)
            self.record.update(durable=False, stage=state.stage, stage_epoch=state.epoch + 1,
                               epochs_done=len(state.history))


def _make_config(head: str, values: dict[str, Any]):
    """The head's config dataclass from recorded values (head_config.json), through the one parser."""
    return make_config(head, {k: v for k, v in values.items() if k not in LEGACY_HEAD_FIELDS})


def _task_dict(t: TaskSpec) -> dict:
    return {"name": t.name, "kind": t.kind, "classes": list(t.classes)}


class _RunLog(Callback):
    def __init__(self, path: Path):
        self.path = path

    def on_epoch_end(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def write_figures(path: Path, head: Head, history: list[dict], splits: dict[str, dict]) -> None:
    """figures.json (the run layout above): the head's figure data per training epoch, taken from the history
    (which a resumed run restores whole), and per split of the final evaluation. Nothing for a head without."""
    epochs = [{"stage": r["stage"], "epoch": r["epoch"], **r["figures"]} for r in history if "figures" in r]
    if not epochs and not splits:
        return
    obj = {"format": FIGURES_FORMAT, "head": head.name, "axes": head.figure_axes(), "epochs": epochs, "splits": splits}
    atomic_write_text(path, json.dumps(obj, default=_json_default, allow_nan=True) + "\n")  # arrays: compact


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default, allow_nan=True) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, (tuple, set)):
        return list(o)
    return str(o)


# ---------------------------------------------------------------------------------------------------
# checkpoint
# ---------------------------------------------------------------------------------------------------

def save_weights(head: Head, path: Path) -> str:
    """Write the head's weights as safetensors (tied weights handled, no pickle), atomically; returns the SHA-256."""
    return save_model_atomic(head, path)


def save_feature_stats(stats: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file({f"{role}.{k}": np.ascontiguousarray(a) for role, (mean, std) in stats.items()
                   for k, a in (("mean", mean), ("std", std))}, str(tmp))


_RESTORE = "restore it from an intact copy of the run directory, or retrain the run (merc-heads train)"


def load_feature_stats(path: Path, roles: list[str] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from safetensors.numpy import load_file

    if not path.exists():
        raise HeadsError(f"{path.name} is missing", file=str(path.parent),
                         fix="the run was trained with feature standardisation; " + _RESTORE)
    try:
        flat = load_file(str(path))
        stats = {role: (flat[f"{role}.mean"], flat[f"{role}.std"]) for role in {k.split(".")[0] for k in flat}}
    except Exception as e:  # safetensors header/format errors, a missing mean or std
        raise HeadsError(f"{path.name} cannot be read ({type(e).__name__}: {e}); the file is damaged",
                         file=str(path.parent), fix=_RESTORE) from None
    missing = [r for r in roles or [] if r not in stats]
    if missing:
        raise HeadsError(f"{path.name} has no statistics for role(s) {', '.join(missing)}", file=str(path.parent),
                         fix=_RESTORE)
    return stats


def load_head(run_dir: str | Path, device: torch.device | str = "cpu") -> Head:
    """Rebuild a run's head from head_config.json and load its safetensors weights (no pickle involved)."""
    from safetensors.torch import load_model

    run_dir = Path(run_dir)
    hc = _read_json(run_dir / "head_config.json")
    try:
        cls = head_cls_or_error(hc["head"])
        cfg = _make_config(hc["head"], dict(hc["config"]))
        tasks = [TaskSpec(t["name"], t["kind"], tuple(t["classes"])) for t in hc["tasks"]]
        dims = {str(k): int(v) for k, v in hc["dims"].items()}
        head = cls(cfg, dims, tasks)
    except HeadsError as e:
        raise HeadsError(f"head_config.json: {e}", file=str(run_dir), fix=_RESTORE) from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise HeadsError(f"head_config.json is incomplete or invalid ({type(e).__name__}: {e})", file=str(run_dir),
                         fix=_RESTORE) from None
    weights = run_dir / MODEL_FILE
    if not weights.exists():
        raise HeadsError(f"{MODEL_FILE} is missing", file=str(run_dir), fix=_RESTORE)
    try:
        load_model(head, str(weights), strict=True, device=str(device))
    except Exception as e:  # a truncated or overwritten header, missing tensors, other shapes
        raise HeadsError(f"{MODEL_FILE} cannot be loaded into the {hc['head']} head ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); the file is damaged or belongs to another run",
                         file=str(run_dir), fix=_RESTORE) from None
    return head.to(device)


def _read_json(path: Path) -> dict:
    if not path.exists():
        fix = ("pass a run directory written by merc-heads train (it holds config.json)" if path.name == "config.json"
               and not path.parent.exists() else _RESTORE)
        raise HeadsError(f"{path.name} is missing", file=str(path.parent), fix=fix)
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HeadsError(f"{path.name} is not valid JSON ({e}); the file is damaged", file=str(path.parent),
                         fix=_RESTORE) from None
    if not isinstance(obj, dict):
        raise HeadsError(f"{path.name} holds no JSON object; the file is damaged", file=str(path.parent), fix=_RESTORE)
    return obj


def verify_run(run_dir: str | Path) -> list[str]:
    """Check that a run can be evaluated: complete (per run.json) and model.safetensors matching the SHA-256 recorded
    when it was saved. Returns notes for the user (a run from before run.json cannot be checked)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HeadsError(f"{run_dir} is not a run directory" + (" (it does not exist)" if not run_dir.exists() else ""),
                         fix="pass a directory written by merc-heads train, e.g. runs/<run>")
    status = read_status(run_dir)
    if status is None:
        if not any((run_dir / f).exists() for f in ("config.json", "head_config.json", MODEL_FILE)):
            raise HeadsError(f"{run_dir} is not a run directory (no {STATUS_FILE}, config.json or {MODEL_FILE})",
                             fix="pass a directory written by merc-heads train, e.g. runs/<run>")
        return [f"this run has no {STATUS_FILE} (it predates merc-heads recording one): the checksum of "
                f"{MODEL_FILE} cannot be checked"]
    if status["status"] != "complete":
        problem, fix = _incomplete(run_dir, status)
        raise HeadsError(problem, file=str(run_dir), fix=fix)
    weights = run_dir / MODEL_FILE
    if not weights.exists():
        raise HeadsError(f"{MODEL_FILE} is missing", file=str(run_dir), fix=_RESTORE)
    expected = status.get("model_sha256")
    if not expected:
        return [f"{STATUS_FILE} records no checksum of {MODEL_FILE}: it cannot be checked"]
    if sha256_file(weights) != expected:
        raise HeadsError(f"{MODEL_FILE} does not match the checksum recorded at save time; the file is damaged "
                         "(a partial copy, a disk or transfer error, or an edit)", file=str(run_dir),
                         fix="retrain or restore it: copy the run directory again from an intact copy, or train the "
                             "run again (merc-heads train)")
    return []


def _incomplete(run_dir: Path, status: dict) -> tuple[str, str]:
    """The message and fix for a run that is not complete: its status, the epoch it reached, how to resume."""
    stages = status.get("stages") or ["main"]
    stage, n = status.get("stage", stages[0]), status.get("stage_epoch", 0)
    where = (f"epoch {n}" if len(stages) == 1 else f"epoch {n} of stage {stage} ({status.get('epochs_done', n)} "
             f"epochs in all)") if n else "before its first epoch ended"
    resume = resume_command(run_dir)
    kind = status["status"]
    if kind == "interrupted":
        return (f"the run is interrupted: it stopped after {where} and has no final weights or metrics",
                f"resume it: {resume}")
    if kind == "failed":
        return (f"the run failed after {where}: {status.get('error') or 'no message recorded'}",
                f"fix the cause, then resume it ({resume}) or train a new run")
    if lock_is_held(run_dir):
        return (f"the run is still training (status running, reached {where})",
                "wait for it to finish")
    return (f"the run did not finish: its process stopped (killed?) after {where}; status running, last update "
            f"{status.get('updated', '?')}", f"resume it: {resume}")


def load_run(run_dir: str | Path, store: str | None = None, device: str = "auto",
             verify: bool = True) -> tuple[Head, HeadsData, dict, torch.device, str]:
    """A run's head (best weights), its data (fingerprints checked), config, device and eval precision.
    `verify`: check the run's status and its weights' checksum first (verify_run)."""
    run_dir = Path(run_dir)
    if verify:
        verify_run(run_dir)
    config = _read_json(run_dir / "config.json")
    try:
        # format 3 keeps the data settings in the tree; runs of format 2 kept them at the top level
        data_cfg = config["data"] if isinstance(config.get("data"), dict) else config
        normalize = data_cfg.get("normalize", "none")
        roles = dict(config["features"])
        stats = (load_feature_stats(run_dir / "feature_stats.safetensors", list(roles))
                 if normalize == "zscore" else None)
        load_args = dict(store=store or data_cfg["store"], dataset=data_cfg["dataset"], features=roles,
                         tasks=[t["name"] for t in config["tasks"]], frames=FRAMES in normalize_levels(config["levels"]),
                         max_frames=data_cfg.get("max_frames"), fingerprints=config["fingerprints"])
        precision = config["precision"] if "precision" in config else config["train"]["precision"]
        int(config["train"]["eval_batch_size"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise HeadsError(f"config.json is incomplete or invalid ({type(e).__name__}: {e})", file=str(run_dir),
                         fix=_RESTORE) from None
    dev = resolve_device(device)
    head = load_head(run_dir, dev)  # before the (slower) store read: a damaged run fails fast
    data = HeadsData.load(load_args.pop("store"), load_args.pop("dataset"), load_args.pop("features"),
                          normalize=normalize, stats=stats, **load_args)
    if precision == "fp16" and dev.type != "cuda":
        precision = "fp32"  # fp16 autocast exists on CUDA only; the numbers will differ slightly
    return head, data, config, dev, precision


def evaluate_run(run_dir: str | Path, split: str = "test", store: str | None = None,
                 device: str = "auto", verify: bool = True) -> tuple[dict, dict | None]:
    """(metrics recomputed from the checkpoint, metrics recorded at training time) for one split."""
    head, data, config, dev, precision = load_run(run_dir, store, device, verify)
    _check_split(data, split)
    recorded_file = Path(run_dir) / "metrics.json"
    recorded = None
    if recorded_file.exists():
        splits = _read_json(recorded_file).get("splits")
        if not isinstance(splits, dict):
            raise HeadsError("metrics.json holds no per-split metrics; the file is damaged", file=str(run_dir),
                             fix=_RESTORE)
        recorded = splits.get(split)
    preds, _ = predict(head, data, split, batch_size=config["train"]["eval_batch_size"], device=dev,
                       precision=precision)
    metrics = {t: p.metrics() for t, p in preds.items()}
    return metrics, recorded


def predict_run(run_dir: str | Path, out: str | Path, split: str = "all", store: str | None = None,
                device: str = "auto", verify: bool = True) -> int:
    """Write predictions of a split (or every split) to a CSV; returns the number of rows."""
    head, data, config, dev, precision = load_run(run_dir, store, device, verify)
    splits = [s for s in SPLITS if len(data.split_dialogues(s))] if split == "all" else [split]
    for s in splits:
        _check_split(data, s)
    all_preds = {s: predict(head, data, s, batch_size=config["train"]["eval_batch_size"], device=dev,
                            precision=precision)[0] for s in splits}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
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
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
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
    """Train/dev loss and the dev monitor metric over epochs (counted from 1 across stages). Stages (SUMMER:
    teacher, then student) are separated by dotted lines and named; a star marks the epoch whose weights each stage
    kept (its last dev improvement)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    monitor = monitor.removeprefix("dev_")
    x = np.arange(1, len(history) + 1)
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax_loss.plot(x, [r.get("train_loss", np.nan) for r in history], marker=".", label="train loss")
    ax_loss.plot(x, [r.get("dev_loss", np.nan) for r in history], marker=".", label="dev loss")
    metric = [r.get(f"dev_{monitor}", np.nan) for r in history]
    ax_metric.plot(x, metric, color="C2", marker=".", label=f"dev {monitor}")
    starts = [i for i in range(len(history)) if i == 0 or history[i]["stage"] != history[i - 1]["stage"]]
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(history)
        kept = [i for i in range(start, end) if history[i].get("best")]
        if kept:
            ax_metric.plot(x[kept[-1]], metric[kept[-1]], marker="*", markersize=12, color="C3", linestyle="none",
                           label="kept" if k == 0 else None)
        if start > 0:
            for ax in (ax_loss, ax_metric):
                ax.axvline(start + 0.5, color="grey", linestyle=":")
        if len(starts) > 1 or history[start]["stage"] != "main":
            for ax in (ax_loss, ax_metric):
                ax.text(start + 1, 1.0, f" {history[start]['stage']}", transform=ax.get_xaxis_transform(),
                        va="bottom", fontsize=8, color="grey")
    for ax in (ax_loss, ax_metric):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
