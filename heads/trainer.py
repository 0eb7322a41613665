"""One training loop for every head: stages, autocast, clipping, early stopping on dev, best-state restore.

A head only says how to compute outputs and losses (heads/models/base.py); everything a researcher
expects to be the same across heads lives here, so that comparing two heads compares the models and
not their loops: the optimiser built from the run's `optim.*` settings (the head class's declared defaults,
a preset, `--set optim.lr=...`: heads/config.py), batches in the head's unit (`train.batch_unit`), mixed
precision, gradient clipping, early stopping on the dev split's primary metric, exact CPU repeats
under a seed.

Every setting is checked before training starts (an invalid number is one error listing what is valid).
At the end of every epoch the trainer hands its callbacks a `TrainState` (weights, optimiser, scheduler,
stage, epoch, early-stopping counters, history, every random generator); `fit(resume=state)` continues from
it and ends with the weights the uninterrupted fit ends with (bitwise on the CPU). heads/runs.py saves it
(heads/checkpoint.py) together with the best-so-far weights at every dev improvement.

A head's figure_stats (its paper's figures: gate weights, disparity ratios, expert usage) are summed from the
outputs of the forward passes that run anyway: per training epoch into the epoch's record (`figures`, so the
history, the log and the resume state carry them) and, through `predict(figures=...)`, per evaluated split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from .checkpoint import TrainState, capture_rng, restore_rng
from .config import (
    OptimConfig,
    TrainSettings,
    check_settings,
    describe,
    head_defaults,
    parse_value,
    problems,
    type_hints,
)
from .data import HeadsData, HeadsError
from .metrics import PRIMARY, is_better, task_metrics
from .models.base import Batch, Head, HeadOutput, TaskSpec

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class TrainConfig(TrainSettings):
    """The `train.*` section of the config tree (heads/config.py: the fields and their defaults), plus the
    optimiser section as the trainer takes it."""

    optim: dict = field(default_factory=dict)  # optim.* values over the head class's defaults (OptimConfig fields)
    deterministic: bool = True


# ---------------------------------------------------------------------------------------------------
# device, precision, seeds
# ---------------------------------------------------------------------------------------------------

def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HeadsError(f"--device {device} asked for, but this torch build sees no CUDA device",
                         fix="use --device cpu (or auto), or install a CUDA build of torch on a GPU machine")
    return torch.device(device)


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16), read from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` -> bf16 where the hardware runs it natively (CPU bf16 instructions, CUDA bf16), else fp32."""
    if precision not in PRECISIONS:
        raise HeadsError(f"unknown --precision {precision!r}", fix=f"use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise HeadsError("--precision fp16 needs a CUDA device (CPU autocast has no fp16 training path)",
                         fix="use --precision bf16 or fp32 on the CPU (auto picks bf16 where the CPU supports it)")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; ask torch for deterministic kernels where it has them."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (read at CUDA init)
        _deterministic_algorithms()
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def _deterministic_algorithms() -> None:
    """`torch.use_deterministic_algorithms(True, warn_only=True)` without its import of torch._inductor (1.7 s of
    every run's start on this CPU: torch 2.13 imports the compiler only to set its `deterministic` flag, which
    matters only to torch.compile). Where the compiler is loaded already, or the private setter is gone, the
    public call does both."""
    import sys

    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        setter(True, warn_only=True)


# ---------------------------------------------------------------------------------------------------
# optimiser
# ---------------------------------------------------------------------------------------------------

def optimizer_settings(head: Head, overrides: dict | None = None, *, check: bool = True) -> dict:
    """The optimiser of a head: OptimConfig's defaults < the head class's declared defaults < `overrides`
    (OptimConfig field -> value, parsed by the config parser), checked. The result is what the trainer builds:
    scheduler None or "plateau", grad_clip None when off."""
    types = type_hints(OptimConfig)
    cfg = dataclasses.asdict(OptimConfig())
    declared = {k.split(".", 1)[1]: v for k, v in head_defaults(type(head)).items() if k.startswith("optim.")}
    bad = []
    for key, raw in {**declared, **(overrides or {})}.items():
        key = "name" if key == "optimizer" else key
        if key not in types:
            raise HeadsError(f"optim has no key {key!r}", fix=f"optim keys: {', '.join(types)}")
        try:
            cfg[key] = parse_value(raw, types[key])
        except ValueError:
            bad.append((f"--set optim.{key}={raw}", f"optim.{key} must be {describe(types[key])}"))
    found = bad + problems({f"optim.{k}": v for k, v in cfg.items()})
    if check:
        check_settings(found)
    elif bad:
        check_settings(bad)
    settings = dict(cfg)
    settings["scheduler"] = None if cfg["scheduler"] == "none" else cfg["scheduler"]
    clip = cfg["grad_clip"]
    settings["grad_clip"] = None if clip is None or (math.isfinite(clip) and clip <= 0) else clip
    return settings


def optimizer_problems(settings: dict) -> list[tuple[str, str]]:
    """(what was given, what is valid) for every optimiser value out of range (settings as optimizer_settings
    returns them)."""
    values = {**settings, "scheduler": settings.get("scheduler") or "none"}
    return problems({f"optim.{k}": v for k, v in values.items()})


def train_config_problems(cfg: TrainConfig) -> list[tuple[str, str]]:
    """(what was given, what is valid) for every out-of-range number of a TrainConfig."""
    return problems({f"train.{f.name}": getattr(cfg, f.name) for f in dataclasses.fields(TrainSettings)})


def build_optimizer(head: Head, settings: dict) -> torch.optim.Optimizer:
    params = [p for p in head.parameters() if p.requires_grad]
    if not params:
        raise HeadsError(f"head {head.name!r} has no trainable parameters in this stage",
                         fix="check the head's set_stage(), or its configuration")
    kwargs = {"lr": float(settings["lr"]), "weight_decay": float(settings["weight_decay"]),
              "betas": tuple(float(b) for b in settings["betas"]), "eps": float(settings["eps"])}
    # the fused kernel updates every parameter in one pass: the per-tensor loop cost a quarter of a
    # MiSTER-E step on the CPU (58 M parameters, memory-bound elementwise ops)
    kwargs["fused"] = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if settings["name"] == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    if settings["name"] == "adam":
        return torch.optim.Adam(params, **kwargs)
    raise HeadsError(f"unknown optimizer {settings['name']!r}", fix="use --set optim.name=adamw or optim.name=adam")


def build_scheduler(opt: torch.optim.Optimizer, settings: dict):
    if settings["scheduler"] is None:
        return None
    if settings["scheduler"] == "plateau":  # stepped on the dev loss, as Ada2I does
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=float(settings["plateau_factor"]),
                                                          patience=int(settings["plateau_patience"]))
    raise HeadsError(f"unknown scheduler {settings['scheduler']!r}",
                     fix="use --set optim.scheduler=plateau or optim.scheduler=none")


# ---------------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------------

@dataclass
class TaskPredictions:
    """Outputs for the labelled-or-not utterances of a split, rows in manifest order.

    pred: categorical [n] class index, multilabel [n, C] bool, regression [n] float
    scores: categorical softmax [n, C], multilabel sigmoid [n, C], regression None
    """

    task: TaskSpec
    rows: np.ndarray  # [n] utterance rows of HeadsData
    gold: np.ndarray
    pred: np.ndarray
    scores: np.ndarray | None

    def labelled(self) -> np.ndarray:
        if self.task.kind == "categorical":
            return self.gold >= 0
        if self.task.kind == "regression":
            return ~np.isnan(self.gold)
        return (self.gold >= 0).any(axis=1)

    def metrics(self) -> dict:
        keep = self.labelled()
        return task_metrics(self.task.kind, self.gold[keep], self.pred[keep], self.task.classes)


def decode(task: TaskSpec, logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits [n, C] -> (prediction, scores) in numpy, float32 whatever the autocast dtype."""
    z = logits.float()
    if task.kind == "categorical":
        probs = torch.softmax(z, dim=-1)
        return probs.argmax(-1).cpu().numpy(), probs.cpu().numpy()
    if task.kind == "multilabel":
        probs = torch.sigmoid(z)
        return (probs > 0.5).cpu().numpy(), probs.cpu().numpy()
    return z.reshape(z.shape[0], -1)[:, 0].cpu().numpy(), None


@torch.no_grad()
def predict(head: Head, data: HeadsData, split: str, *, batch_size: int, device: torch.device,
            precision: str, with_loss: bool = False, epoch: int = 0,
            figures: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, TaskPredictions], float]:
    """Run the head over a split in eval mode: per-task predictions (and the mean loss when asked).
    `figures`: a dict that receives the split's sums of the head's figure_stats (from the same forward passes)."""
    head.eval()
    outs: dict[str, list[torch.Tensor]] = {t.name: [] for t in data.tasks}
    losses = []
    pin = device.type == "cuda"
    for batch in data.batches(split, batch_size, pin_memory=pin):
        batch = batch.to(device, non_blocking=pin)
        with autocast(device, precision):
            out = head(batch)
            if with_loss:
                losses.append(float(head.loss(batch, out, epoch)[0]))
        if figures is not None:
            add_figure_stats(figures, head, batch, out)
        for t in data.tasks:
            outs[t.name].append(out.logits[t.name][batch.mask].float().cpu())
    rows = data.split_rows(split)
    preds = {}
    for t in data.tasks:
        logits = torch.cat(outs[t.name]) if outs[t.name] else torch.zeros(0, t.out_dim)
        pred, scores = decode(t, logits)
        preds[t.name] = TaskPredictions(t, rows, data.labels[t.name][rows], pred, scores)
    return preds, (float(np.mean(losses)) if losses else float("nan"))


def add_figure_stats(acc: dict[str, torch.Tensor], head: Head, batch: Batch, out: HeadOutput) -> None:
    """Add one batch's figure_stats (heads/models/base.py) to `acc`, in float64 on the batch's device: no
    host sync per step, and sums that do not drift over a long epoch."""
    with torch.no_grad():
        for k, v in head.figure_stats(batch, out).items():
            v = v.detach().to(torch.float64)
            acc[k] = acc[k] + v if k in acc else v


def figure_values(acc: dict[str, torch.Tensor]) -> dict[str, float | list]:
    """Accumulated figure sums as JSON numbers and nested lists (for log.jsonl and figures.json)."""
    return {k: v.cpu().tolist() for k, v in acc.items()}


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The single-number entries of one task's metrics (for logs and progress lines)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "n"}


# ---------------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------------

class Callback:
    """Hooks for progress display, run logging and checkpoints; all optional.

    Per epoch, in this order: `on_best` (only when the dev metric improved: the head holds the new best
    weights), `on_checkpoint` (everything a resumed run needs; its tensors are live, save them before returning),
    then `on_epoch_end`.
    """

    def on_stage_start(self, stage: str, epochs: int) -> None: ...
    def on_epoch_start(self, stage: str, epoch: int, n_batches: int) -> None: ...
    def on_step(self, loss: float) -> None: ...
    def on_best(self, head: Head, stage: str, epoch: int) -> None: ...
    def on_checkpoint(self, state: TrainState) -> None: ...
    def on_epoch_end(self, record: dict) -> None: ...


@dataclass
class FitResult:
    history: list[dict]  # one record per epoch (what log.jsonl holds)
    best: dict[str, dict]  # stage -> {"epoch", "value"} of the restored checkpoint
    monitor: str
    precision: str
    device: str
    optim: dict
    seconds: float


def batch_unit_kwargs(data: HeadsData, unit: str) -> dict[str, str]:
    """`unit=` for HeadsData.batches / n_batches (a HeadsData without units serves dialogues only)."""
    import inspect

    if "unit" in inspect.signature(data.batches).parameters:
        return {"unit": unit}
    if unit != "dialogue":
        raise HeadsError(f"this HeadsData serves dialogue batches only, not train.batch_unit={unit}",
                         fix="use --set train.batch_unit=dialogue")
    return {}


class Trainer:
    """Trains one head on one HeadsData. `fit()` leaves the head holding the best dev checkpoint.

    Every setting is checked here, before any training (and before a run directory exists): an invalid
    number is a HeadsError that lists what is valid.
    """

    def __init__(self, head: Head, data: HeadsData, cfg: TrainConfig, callbacks: list[Callback] | None = None):
        self.head, self.data, self.cfg = head, data, cfg
        self.callbacks = callbacks or []
        self.settings = optimizer_settings(head, cfg.optim, check=False)
        check_settings(train_config_problems(cfg) + optimizer_problems(self.settings))
        self.device = resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        primary = data.tasks[0]
        self.monitor = cfg.monitor or PRIMARY[primary.kind][0]
        self._check_monitor()

    def _check_monitor(self) -> None:
        """The monitor must be a dev metric of the primary task (or "loss"): checked on the dev labels."""
        task = self.data.tasks[0]
        if self.monitor == "loss" or len(self.data.split_dialogues("dev")) == 0:
            return
        rows = self.data.split_rows("dev")
        gold = self.data.labels[task.name][rows]
        pred = gold > 0 if task.kind == "multilabel" else gold
        scores = None if task.kind == "regression" else np.zeros((len(rows), task.out_dim), np.float32)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                names = set(scalar_metrics(TaskPredictions(task, rows, gold, pred, scores).metrics()))
        except Exception:  # no labelled dev rows, say: the first dev evaluation checks it instead
            return
        if self.monitor not in names:
            raise HeadsError(f"monitor metric {self.monitor!r} is not a metric of the {task.kind} task {task.name!r}",
                             fix=f"use --set train.monitor= one of {', '.join(sorted(names | {'loss'}))}")

    def _emit(self, name: str, *args) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if fn is not None:
                fn(*args)

    def record_settings(self) -> dict:
        """What a resumed run must train with to continue this one exactly (kept in the resume state)."""
        cfg = self.cfg
        return {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "batch_unit": cfg.batch_unit,
                "eval_batch_size": cfg.eval_batch_size,
                "patience": cfg.patience, "seed": cfg.seed, "precision": self.precision, "device": self.device.type,
                "monitor": self.monitor, "stages": list(self.head.stages()),
                "optim": {k: list(v) if isinstance(v, tuple) else v for k, v in self.settings.items()}}

    def fit(self, resume: TrainState | None = None) -> FitResult:
        """Train every stage; with `resume` (a state an earlier fit handed to `on_checkpoint`), continue after
        its epoch with everything restored, ending with the weights the uninterrupted fit ends with."""
        cfg, head, data, device = self.cfg, self.head, self.data, self.device
        seed_everything(cfg.seed, cfg.deterministic)
        shuffle_rng = np.random.default_rng(cfg.seed)
        head.to(device)
        scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        pin = device.type == "cuda"
        stages = list(head.stages())
        history: list[dict] = []
        best: dict[str, dict] = {}
        first_stage = 0
        settings = self.record_settings()
        if resume is not None:
            self._check_resume(resume, settings)
            history, best, first_stage = list(resume.history), dict(resume.best), resume.stage_index
        t_start = time.perf_counter() - (resume.seconds if resume is not None else 0.0)
        if len(data.split_dialogues("train")) == 0:
            raise HeadsError(f"dataset {data.dataset!r} has no train dialogues", fix="check the manifest's splits")
        has_dev = len(data.split_dialogues("dev")) > 0
        unit = batch_unit_kwargs(data, cfg.batch_unit)

        for stage_index, stage in enumerate(stages):
            if stage_index < first_stage:
                continue
            head.set_stage(stage)
            opt = build_optimizer(head, self.settings)
            sched = build_scheduler(opt, self.settings)
            params = [p for p in head.parameters() if p.requires_grad]
            best_value, best_epoch, best_state, bad = None, -1, None, 0
            epoch = 0
            if resume is not None and stage_index == resume.stage_index:
                best_value, best_epoch, best_state, bad = self._restore(resume, opt, sched, scaler, shuffle_rng)
                epoch = resume.epoch + 1
                resume = None
            self._emit("on_stage_start", stage, cfg.epochs)
            while epoch < cfg.epochs and bad < cfg.patience:
                t0 = time.perf_counter()
                head.train()
                self._emit("on_epoch_start", stage, epoch, data.n_batches("train", cfg.batch_size, **unit))
                sums: dict[str, float] = {}
                figures: dict[str, torch.Tensor] = {}
                n_steps = 0
                for batch in data.batches("train", cfg.batch_size, shuffle=True, generator=shuffle_rng, pin_memory=pin,
                                          **unit):
                    batch = batch.to(device, non_blocking=pin)
                    loss_value, terms = self.train_step(batch, epoch, opt, scaler, params, stage=stage,
                                                        figures=figures)
                    n_steps += 1
                    for k, v in {"loss": loss_value, **terms}.items():
                        sums[k] = sums.get(k, 0.0) + v
                    self._emit("on_step", loss_value)
                record = {"stage": stage, "epoch": epoch, **{f"train_{k}": v / max(n_steps, 1) for k, v in sums.items()},
                          "lr": opt.param_groups[0]["lr"]}
                if figures:  # the head's figure sums over this epoch's training batches (heads/runs.py: figures.json)
                    record["figures"] = figure_values(figures)
                if has_dev:
                    preds, dev_loss = predict(head, data, "dev", batch_size=cfg.eval_batch_size, device=device,
                                              precision=self.precision, with_loss=True, epoch=epoch)
                    dev = scalar_metrics(preds[data.tasks[0].name].metrics())
                    if self.monitor not in dev and self.monitor != "loss":
                        raise HeadsError(f"monitor metric {self.monitor!r} is not a metric of the "
                                         f"{data.tasks[0].kind} task {data.tasks[0].name!r}",
                                         fix=f"use --set train.monitor= one of {', '.join(dev)}")
                    dev["loss"] = dev_loss
                    value = dev[self.monitor]
                    record.update({f"dev_{k}": v for k, v in dev.items()})
                    if sched is not None and not math.isnan(dev_loss):
                        sched.step(dev_loss)
                else:  # no dev split: keep the last epoch
                    value = float(epoch)
                improved = is_better(self.monitor, value, best_value) if has_dev else True
                if improved:
                    best_value, best_epoch, bad = value, epoch, 0
                    best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
                    self._emit("on_best", head, stage, epoch)
                else:
                    bad += 1
                record.update({"best": improved, "seconds": time.perf_counter() - t0})
                history.append(record)
                self._emit("on_checkpoint", TrainState(
                    stages=stages, stage_index=stage_index, epoch=epoch, model=head.state_dict(),
                    best_model=None if improved else best_state, optimizer=opt.state_dict(),
                    scheduler=sched.state_dict() if sched is not None else None,
                    scaler=scaler.state_dict() if scaler is not None else None, best_value=best_value,
                    best_epoch=best_epoch, bad_epochs=bad, best=best, history=history,
                    rng=capture_rng(shuffle_rng, device), seconds=time.perf_counter() - t_start, settings=settings))
                self._emit("on_epoch_end", record)
                epoch += 1
            if best_state is not None:
                head.load_state_dict(best_state)
            best[stage] = {"epoch": best_epoch, "value": best_value if has_dev else None}
        return FitResult(history, best, self.monitor, self.precision, str(device), self.settings,
                         time.perf_counter() - t_start)

    def _check_resume(self, state: TrainState, settings: dict) -> None:
        if state.stages != settings["stages"] or not 0 <= state.stage_index < len(state.stages):
            raise HeadsError(f"the resume state has stages {state.stages}, the head has {settings['stages']}",
                             fix="the run cannot be resumed with this version of the head; train it again")
        recorded = json.loads(json.dumps(state.settings, default=list))
        now = json.loads(json.dumps(settings, default=list))
        differ = sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))
        if differ:
            detail = ", ".join(f"{k} {recorded.get(k)!r} -> {now.get(k)!r}" for k in differ)
            raise HeadsError(f"the run would continue with other settings than it started with ({detail})",
                             fix="resume on the same kind of device with the same merc version, or train a new run")

    def _restore(self, state: TrainState, opt, sched, scaler, shuffle_rng) -> tuple:
        """Load a resume state into the head, optimiser, scheduler and generators (after set_stage)."""
        head = self.head
        try:
            head.load_state_dict(state.model)
            opt.load_state_dict(state.optimizer)
        except (RuntimeError, ValueError, KeyError) as e:
            raise HeadsError(f"the resume state does not fit the {head.name} head ({e})",
                             fix="the run cannot be resumed with this version of the head; train it again") from None
        if sched is not None and state.scheduler is not None:
            sched.load_state_dict(state.scheduler)
        if scaler is not None and state.scaler is not None:
            scaler.load_state_dict(state.scaler)
        if state.best_model is not None:
            best_state = {k: v.to(self.device) for k, v in state.best_model.items()}
        else:
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        restore_rng(state.rng, shuffle_rng, self.device)
        return state.best_value, state.best_epoch, best_state, state.bad_epochs

    def train_step(self, batch: Batch, epoch: int, opt: torch.optim.Optimizer, scaler, params: list,
                   stage: str = "main", figures: dict[str, torch.Tensor] | None = None) -> tuple[float, dict]:
        """One optimiser step: forward + loss under autocast, backward, clip, head hook, step. `figures`: a dict
        that receives the head's figure_stats of this batch (read from the outputs, before anything changes)."""
        head = self.head
        head.zero_grad(set_to_none=True)  # all parameters: a frozen one must not keep a stale grad from a past stage
        with autocast(self.device, self.precision):
            out = head(batch)
            loss, terms = head.loss(batch, out, epoch)
        if figures is not None:
            add_figure_stats(figures, head, batch, out)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value) and scaler is None:
            where = f"epoch {epoch + 1}" + (f" of stage {stage}" if stage != "main" else "")
            lower = f"lower the learning rate (--set optim.lr=..., it is {self.settings['lr']} now)"
            fix = lower + (", or train with --precision fp32" if self.precision != "fp32" else
                           ", or clip gradients (--set optim.grad_clip=1.0)")
            raise HeadsError(f"the {head.name} loss became {loss_value} in {where}; training stopped", fix=fix)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
        else:
            loss.backward()
        if self.settings["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(params, float(self.settings["grad_clip"]))
        head.after_backward(batch, out, epoch)  # after clipping, as Ada2I modulates clipped gradients
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        return loss_value, terms

    def evaluate(self, split: str, figures: dict[str, torch.Tensor] | None = None) -> dict[str, TaskPredictions]:
        preds, _ = predict(self.head, self.data, split, batch_size=self.cfg.eval_batch_size, device=self.device,
                           precision=self.precision, figures=figures)
        return preds
