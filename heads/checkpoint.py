"""Crash-safe files of a run: atomic writes, checksums, run.json (status) and the resumable training state.

Every file a run writes goes to a temporary file in the run directory first and is then renamed over the
old one (`os.replace`), so a Ctrl-C, a SIGKILL or a full disk leaves either the old file or the new one,
never half of one. Two files make an interrupted run resumable:

    run.json             status (running | complete | interrupted | failed), epoch reached, the error of a
                         failed run, timestamps, and the SHA-256 of model.safetensors recorded at every save
    resume.safetensors   everything the rest of the training depends on, written at the end of every epoch:
                         current weights, the stage's best weights (when they are not the current ones),
                         optimiser, scheduler and grad-scaler state, stage, epoch, early-stopping counters,
                         the history, and every random generator. Tensors are safetensors tensors; the rest
                         is JSON in the file's metadata: one file, one atomic rename, no pickle.

resume.safetensors is deleted once the run is complete: it holds the optimiser's moments (twice the model)
and a copy of the weights, which a finished run never needs again.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from merc.extract.store.files import sha256_file

from .data import HeadsError

MODEL_FILE = "model.safetensors"
RESUME_FILE = "resume.safetensors"
STATUS_FILE = "run.json"
LOCK_FILE = ".lock"
TMP_PREFIX = ".tmp-"
STATUSES = ("running", "complete", "interrupted", "failed")
RESUME_FORMAT = 1
_META_KEY = "merc_resume"
_UMASK = os.umask(0o022)
os.umask(_UMASK)


# ---------------------------------------------------------------------------------------------------
# atomic files and checksums
# ---------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `path`; when the block succeeds it is fsynced and renamed over `path`.

    `fsync=False` keeps the rename (a killed process leaves the old file or the new one, never half of one)
    but not the flushes to disk (the file's and the directory's), for what a run writes every epoch: flushing
    the resume state's ~3 model copies cost ~0.3-0.5 s per epoch for MiSTER-E here, and two runs side by side
    that flush ~5 times an epoch each wait on each other's journal commits (a 2-worker sweep of short runs ran
    16 % slower per run on disk than on tmpfs). After a power cut an unreadable file is a clear error; what a
    run writes when it ends is flushed."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # safetensors creates 0600 files; a run directory is for sharing
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    if fsync:
        _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> None:
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str, *, fsync: bool = True) -> None:
    atomic_write_bytes(path, text.encode(), fsync=fsync)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(run_dir: Path) -> None:
    """Temporary files a killed process left behind (the files they were replacing are intact)."""
    for p in run_dir.glob(f"{TMP_PREFIX}*"):
        with contextlib.suppress(OSError):
            p.unlink()



def save_model_atomic(head: torch.nn.Module, path: str | Path, *, fsync: bool = True) -> str:
    """Write a module's weights as safetensors (tied weights handled, no pickle) atomically; return the SHA-256.
    `fsync=False` for the best-so-far weights during training (atomic_path); the final ones are flushed."""
    from safetensors.torch import save_model

    with atomic_path(path, fsync=fsync) as tmp:
        save_model(head, str(tmp))
        digest = sha256_file(tmp)
    return digest


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


# ---------------------------------------------------------------------------------------------------
# run.json
# ---------------------------------------------------------------------------------------------------

def read_status(run_dir: str | Path) -> dict | None:
    """run.json of a run directory; None when the run predates it. A damaged run.json is an error."""
    path = Path(run_dir) / STATUS_FILE
    if not path.exists():
        return None
    try:
        status = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HeadsError(f"{STATUS_FILE} cannot be read ({e})", file=str(path),
                         fix="restore it from a copy of the run directory, or retrain") from None
    if not isinstance(status, dict) or status.get("status") not in STATUSES:
        raise HeadsError(f"{STATUS_FILE} holds no valid status (one of {', '.join(STATUSES)})", file=str(path),
                         fix="restore it from a copy of the run directory, or retrain")
    return status


class RunRecord:
    """run.json of one run, kept in memory and rewritten atomically on every change."""

    def __init__(self, run_dir: Path, data: dict):
        self.run_dir, self.data = run_dir, data

    @classmethod
    def create(cls, run_dir: Path, resume_command: str, stages: list[str], max_epochs: int) -> RunRecord:
        t = now()
        rec = cls(run_dir, {"status": "running", "created": t, "started": t, "updated": t, "finished": None,
                            "stages": stages, "stage": stages[0], "stage_epoch": 0, "epochs_done": 0,
                            "max_epochs_per_stage": max_epochs, "best": None, "model_sha256": None,
                            "model_saved": None, "error": None, "resume_command": resume_command,
                            "resumed": [], "host": socket.gethostname(), "pid": os.getpid()})
        rec.write()
        return rec

    @classmethod
    def open(cls, run_dir: Path) -> RunRecord:
        data = read_status(run_dir)
        if data is None:
            raise HeadsError(f"{STATUS_FILE} is missing", file=str(run_dir),
                             fix="this run was written before merc-heads recorded run status; train it again")
        return cls(run_dir, data)

    def update(self, durable: bool = True, **changes: Any) -> None:
        """`durable=False` for the per-epoch progress (atomic, not flushed: see atomic_path)."""
        self.data.update(changes, updated=now())
        self.write(durable)

    def write(self, durable: bool = True) -> None:
        atomic_write_text(self.run_dir / STATUS_FILE, json.dumps(self.data, indent=2, allow_nan=True) + "\n",
                          fsync=durable)

    @property
    def status(self) -> str:
        return self.data["status"]


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on a run directory while training writes into it (released by the kernel even
    when the process is SIGKILLed), so that two `merc-heads train --resume` cannot write into one run."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    f = open(run_dir / LOCK_FILE, "a")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise HeadsError("another merc-heads process is training in this run directory", file=str(run_dir),
                             fix="wait for it to finish (or stop it), then resume") from None
        yield
    finally:
        f.close()


def lock_is_held(run_dir: Path) -> bool:
    """Whether a live process holds the run's training lock (False when it was killed: the kernel released it)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return False
    if not (run_dir / LOCK_FILE).exists():
        return False
    with open(run_dir / LOCK_FILE, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return False


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C back until the block is done (a checkpoint and its checksum are written together), then
    deliver it. Only the main thread receives signals; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda sig, frame: pending.append(sig))
    except ValueError:  # pragma: no cover - not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending and previous is not signal.SIG_IGN:
            if callable(previous):
                previous(signal.SIGINT, None)  # the default handler raises KeyboardInterrupt
            else:
                raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------------
# the resumable training state
# ---------------------------------------------------------------------------------------------------

@dataclass
class TrainState:
    """Everything the rest of a training depends on, as of the end of one epoch."""

    stages: list[str]
    stage_index: int
    epoch: int  # the last completed epoch of this stage, 0-based
    model: dict[str, torch.Tensor]  # current weights
    best_model: dict[str, torch.Tensor] | None  # the stage's best weights; None = the current ones
    optimizer: dict  # optimizer.state_dict()
    scheduler: dict | None
    scaler: dict | None
    best_value: float | None
    best_epoch: int
    bad_epochs: int
    best: dict[str, dict]  # finished stages -> {"epoch", "value"}
    history: list[dict]
    rng: dict
    seconds: float  # training time so far
    settings: dict = field(default_factory=dict)  # what the run trained with (checked when resuming)
    best_model_file: str | None = None  # the best weights are in this file of the run (not in the state)

    @property
    def stage(self) -> str:
        return self.stages[self.stage_index]


def save_state(state: TrainState, path: str | Path, *, best_model_file: str | None = None) -> None:
    """One safetensors file: tensors flattened by name, the rest JSON in its metadata; replaced atomically.

    `best_model_file`: the run keeps the stage's best weights in that file (written at every improvement), so
    the state does not store them again: a quarter less to write every epoch (a copy of the model).
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()

    def put(name: str, t: torch.Tensor) -> None:
        t = t.detach()
        ptr = t.untyped_storage().data_ptr() if t.device.type != "meta" else id(t)
        if ptr in seen or not t.is_contiguous():  # tied weights / views: safetensors refuses shared memory
            t = t.clone(memory_format=torch.contiguous_format)
        seen.add(t.untyped_storage().data_ptr())
        tensors[name] = t.cpu() if t.device.type != "cpu" else t

    for k, v in state.model.items():
        put(f"model/{k}", v)
    best_elsewhere = best_model_file is not None and state.best_model is not None
    for k, v in ({} if best_elsewhere else state.best_model or {}).items():
        put(f"best/{k}", v)
    optim_meta: dict[str, Any] = {"state": {}, "param_groups": state.optimizer["param_groups"]}
    for idx, pstate in state.optimizer["state"].items():
        plain = {}
        for k, v in pstate.items():
            if isinstance(v, torch.Tensor):
                put(f"optim/{idx}/{k}", v)
            else:
                plain[k] = v
        optim_meta["state"][str(idx)] = plain
    rng = dict(state.rng)
    put("rng/torch_cpu", rng.pop("torch_cpu"))
    cuda = rng.pop("cuda", [])
    for i, t in enumerate(cuda):
        put(f"rng/cuda/{i}", t)
    meta = {"format": RESUME_FORMAT, "stages": state.stages, "stage_index": state.stage_index,
            "epoch": state.epoch, "has_best_model": state.best_model is not None and not best_elsewhere,
            "best_model_file": best_model_file if best_elsewhere else None, "optimizer": optim_meta,
            "scheduler": state.scheduler, "scaler": state.scaler, "best_value": state.best_value,
            "best_epoch": state.best_epoch, "bad_epochs": state.bad_epochs, "best": state.best,
            "history": state.history, "rng": {**rng, "cuda_devices": len(cuda)}, "seconds": state.seconds,
            "settings": state.settings}
    with atomic_path(path, fsync=False) as tmp:  # written straight to the file: no second copy of the weights
        save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(meta, allow_nan=True, default=_json_default)})


def load_state(path: str | Path) -> TrainState:
    """Read resume.safetensors back; a damaged file is an error naming it."""
    from safetensors.torch import load

    path = Path(path)
    try:
        data = path.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        meta = json.loads(header["__metadata__"][_META_KEY])
        flat = load(data)
        if meta.get("format") != RESUME_FORMAT:
            raise ValueError(f"resume format {meta.get('format')!r}, this merc reads {RESUME_FORMAT}")
    except Exception as e:  # struct, JSON, safetensors and key errors alike: the file is not what we wrote
        raise HeadsError(f"{path.name} cannot be read ({type(e).__name__}: {e})", file=str(path.parent),
                         fix="the resumable state is damaged; train the run again (a new merc-heads train)") from None

    def group(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix)}

    optim_state: dict[int, dict] = {}
    for idx, plain in meta["optimizer"]["state"].items():
        optim_state[int(idx)] = {**plain, **group(f"optim/{idx}/")}
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
              for g in meta["optimizer"]["param_groups"]]
    rng = dict(meta["rng"])
    rng["torch_cpu"] = flat["rng/torch_cpu"]
    rng["cuda"] = [flat[f"rng/cuda/{i}"] for i in range(rng.pop("cuda_devices", 0))]
    return TrainState(stages=list(meta["stages"]), stage_index=int(meta["stage_index"]), epoch=int(meta["epoch"]),
                      model=group("model/"), best_model=group("best/") if meta["has_best_model"] else None,
                      optimizer={"state": optim_state, "param_groups": groups}, scheduler=meta["scheduler"],
                      scaler=meta["scaler"], best_value=meta["best_value"], best_epoch=int(meta["best_epoch"]),
                      bad_epochs=int(meta["bad_epochs"]), best=meta["best"], history=meta["history"], rng=rng,
                      seconds=float(meta["seconds"]), settings=meta.get("settings", {}),
                      best_model_file=meta.get("best_model_file"))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor) and o.numel() == 1:
        return o.item()
    if isinstance(o, (tuple, set)):
        return list(o)
    raise TypeError(f"cannot record {type(o).__name__} in the resume state")


# ---------------------------------------------------------------------------------------------------
# random generators
# ---------------------------------------------------------------------------------------------------

def capture_rng(shuffle: np.random.Generator, device: torch.device) -> dict:
    """Every generator the rest of a training draws from: torch (CPU, CUDA), the trainer's shuffle Generator,
    python `random` and numpy's global one (heads or losses may use either)."""
    np_global = np.random.get_state(legacy=False)
    np_global = {**np_global, "state": {**np_global["state"], "key": np_global["state"]["key"].tolist()}}
    version, internal, gauss = random.getstate()
    rng = {"torch_cpu": torch.get_rng_state(), "shuffle": shuffle.bit_generator.state, "numpy_global": np_global,
           "python": [version, list(internal), gauss]}
    if device.type == "cuda" and torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict, shuffle: np.random.Generator, device: torch.device) -> None:
    torch.set_rng_state(rng["torch_cpu"])
    if rng.get("cuda"):
        if device.type != "cuda" or torch.cuda.device_count() < len(rng["cuda"]):
            raise HeadsError("the run was trained on CUDA and cannot be resumed bit-exactly here",
                             fix="resume it on a machine with the same CUDA devices")
        torch.cuda.set_rng_state_all(rng["cuda"])
    shuffle.bit_generator.state = rng["shuffle"]
    g = rng["numpy_global"]
    np.random.set_state({**g, "state": {**g["state"], "key": np.asarray(g["state"]["key"], dtype=np.uint32)}})
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
