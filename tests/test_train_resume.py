"""Interrupted training resumes to the uninterrupted result: same final weights (bitwise, CPU fp32), same history.

(a) in process: a callback raises KeyboardInterrupt mid-epoch or at an epoch's end, `resume_run` continues;
    single-stage dialogue-gru and two-stage SUMMER (interrupted in the teacher stage and in the student stage);
(b) the real console script SIGKILLed after >= 2 logged epochs, then `merc-heads train --resume`;
(c) the real console script sent SIGINT: exit 130, status interrupted, the resume command printed, no traceback.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from heads_synth import SynthSpec, build_store, features_arg
from safetensors.torch import load_file
from typer.testing import CliRunner

from merc.heads import checkpoint as checkpoint_mod
from merc.heads import trainer as trainer_mod
from merc.heads.checkpoint import RESUME_FILE, load_state, read_status, sha256_file
from merc.heads.cli import app
from merc.heads.runs import RunInterrupted, RunRequest, resume_run, train_run
from merc.heads.trainer import Callback

torch.set_num_threads(1)
BIN = Path(sys.executable).parent / "merc-heads"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

GRU = {"hidden": "16", "dropout": "0.3", "patience": "100", "lr": "3e-3"}  # dropout: the torch RNG matters
SUMMER = {"d_model": "16", "heads": "2", "n_experts": "2", "global_experts": "2", "dropout": "0.2", "lr": "3e-3",
          "patience": "100"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "s.zarr"
    names = build_store(path, SynthSpec(splits={"train": 16, "dev": 6, "test": 6}, lengths=(3, 6),
                                        dims={"t": 8, "a": 8}, seed=11))
    return str(path), features_arg(names, "ta")


def request(store, out, name, head="dialogue-gru", epochs=5, overrides=GRU) -> RunRequest:
    path, features = store
    return RunRequest(head=head, store=path, dataset="synth", features=features, overrides=dict(overrides), seed=3,
                      precision="fp32", epochs=epochs, batch_size=4, out=str(out), device="cpu", name=name)


class StopAt(Callback):
    """Raise KeyboardInterrupt (as Ctrl-C does) in `stage` at `epoch` (0-based): mid-epoch at its second step, or
    at the epoch's end (after its checkpoint was written)."""

    def __init__(self, stage: str, epoch: int, where: str = "end"):
        self.stage, self.epoch, self.where = stage, epoch, where
        self.current, self.steps = None, 0

    def on_epoch_start(self, stage, epoch, n_batches):
        self.current, self.steps = (stage, epoch), 0

    def on_step(self, loss):
        self.steps += 1
        if self.where == "step" and self.current == (self.stage, self.epoch) and self.steps == 2:
            raise KeyboardInterrupt

    def on_epoch_end(self, record):
        if self.where == "end" and (record["stage"], record["epoch"]) == (self.stage, self.epoch):
            raise KeyboardInterrupt


def no_seconds(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def log_of(run_dir: Path):
    return no_seconds([json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()])


def assert_same_run(run_dir: Path, reference: Path):
    assert (run_dir / "model.safetensors").read_bytes() == (reference / "model.safetensors").read_bytes()
    assert log_of(run_dir) == log_of(reference)
    status = read_status(run_dir)
    assert status["status"] == "complete" and status["model_sha256"] == sha256_file(run_dir / "model.safetensors")
    assert not (run_dir / RESUME_FILE).exists()  # a complete run keeps no resume state
    assert json.loads((run_dir / "metrics.json").read_text())["splits"] == \
        json.loads((reference / "metrics.json").read_text())["splits"]
    # the heads' figure data (SUMMER: expert activation per epoch of both stages) ends whole, as uninterrupted
    assert (run_dir / "figures.json").exists() == (reference / "figures.json").exists()
    if (reference / "figures.json").exists():
        assert (run_dir / "figures.json").read_bytes() == (reference / "figures.json").read_bytes()


# -- (a) in process ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gru_reference(store, tmp_path_factory):
    res = train_run(request(store, tmp_path_factory.mktemp("ref"), "gru"))
    return res


@pytest.mark.parametrize("where, epoch", [("end", 1), ("step", 2)])
def test_single_stage_resume_is_bitwise_the_uninterrupted_run(store, gru_reference, tmp_path, where, epoch):
    with pytest.raises(RunInterrupted) as info:
        train_run(request(store, tmp_path, "cut"), callbacks=[StopAt("main", epoch, where)])
    run_dir = tmp_path / "cut"
    assert info.value.run_dir == run_dir and info.value.resume_command == f"merc-heads train --resume {run_dir}"
    status = read_status(run_dir)
    done = epoch + 1 if where == "end" else epoch  # a mid-epoch stop keeps the epochs completed before it
    assert status["status"] == "interrupted" and status["epochs_done"] == done
    assert status["model_sha256"] == sha256_file(run_dir / "model.safetensors")  # best-so-far, already on disk
    assert load_state(run_dir / RESUME_FILE).epoch == done - 1
    assert len(log_of(run_dir)) == done

    res = resume_run(run_dir)
    assert res.resumed_from == done
    assert_same_run(run_dir, gru_reference.run_dir)
    assert no_seconds(res.fit.history) == no_seconds(gru_reference.fit.history)
    assert res.fit.best == gru_reference.fit.best
    assert read_status(run_dir)["resumed"][0]["epochs_done"] == done


def test_resume_without_the_random_generators_differs(store, gru_reference, tmp_path, monkeypatch):
    """The control that shows the equality above means something: skip restoring the RNGs and the weights differ."""
    with pytest.raises(RunInterrupted):
        train_run(request(store, tmp_path, "cut"), callbacks=[StopAt("main", 1)])
    monkeypatch.setattr(trainer_mod, "restore_rng", lambda rng, shuffle, device: None)
    resume_run(tmp_path / "cut")
    assert (tmp_path / "cut/model.safetensors").read_bytes() != \
        (gru_reference.run_dir / "model.safetensors").read_bytes()


def test_resume_takes_the_stages_best_weights_from_the_checkpoint_file(store, tmp_path):
    """The resume state does not repeat the best weights that model.safetensors holds: a resumed run whose best
    epoch lies behind it must end with those weights, not the current ones."""
    over = {**GRU, "lr": "1e-7", "monitor": "accuracy"}  # weights move a little, predictions do not: best = epoch 1
    ref = train_run(request(store, tmp_path / "ref", "r", overrides=over, epochs=4))
    assert ref.fit.best["main"]["epoch"] == 0
    with pytest.raises(RunInterrupted):
        train_run(request(store, tmp_path, "cut", overrides=over, epochs=4), callbacks=[StopAt("main", 2)])
    state = load_state(tmp_path / "cut" / RESUME_FILE)
    assert state.best_model_file == "model.safetensors" and state.best_model is None and state.best_epoch == 0
    resume_run(tmp_path / "cut")
    assert_same_run(tmp_path / "cut", ref.run_dir)


@pytest.fixture(scope="module")
def summer_reference(store, tmp_path_factory):
    return train_run(request(store, tmp_path_factory.mktemp("ref"), "summer", head="summer", epochs=3,
                             overrides=SUMMER))


@pytest.mark.parametrize("stage, epoch, where, stages_set", [
    ("teacher", 1, "step", ["teacher", "student"]),  # mid-epoch in the teacher stage
    ("teacher", 2, "end", ["teacher", "student"]),  # the teacher stage's last epoch: resume starts the student
    ("student", 1, "end", ["student"]),  # in the student stage: the teacher's best weights come from the state
])
def test_two_stage_summer_resumes_into_the_right_stage(store, summer_reference, tmp_path, monkeypatch, stage, epoch,
                                                       where, stages_set):
    from merc.heads.models.summer import Summer

    with pytest.raises(RunInterrupted):
        train_run(request(store, tmp_path, "cut", head="summer", epochs=3, overrides=SUMMER),
                  callbacks=[StopAt(stage, epoch, where)])
    state = load_state(tmp_path / "cut" / RESUME_FILE)
    assert state.stage == (stage if where == "end" or epoch > 0 else "teacher")

    calls = []
    original = Summer.set_stage
    monkeypatch.setattr(Summer, "set_stage", lambda self, s: (calls.append(s), original(self, s))[1])
    res = resume_run(tmp_path / "cut")
    assert calls == stages_set  # set_stage for the stage resumed into (and the ones after it), not the ones done
    assert [r["stage"] for r in res.fit.history] == ["teacher"] * 3 + ["student"] * 3
    assert_same_run(tmp_path / "cut", summer_reference.run_dir)
    assert res.fit.best == summer_reference.fit.best


def test_resume_state_is_one_safetensors_file_without_pickle(store, tmp_path):
    with pytest.raises(RunInterrupted):
        train_run(request(store, tmp_path, "cut", epochs=3, overrides={**GRU, "scheduler": "plateau"}),
                  callbacks=[StopAt("main", 1)])
    path = tmp_path / "cut" / RESUME_FILE
    tensors = load_file(str(path))  # plain safetensors: tensors by name, JSON metadata
    assert any(k.startswith("model/") for k in tensors) and any(k.startswith("optim/") for k in tensors)
    assert "rng/torch_cpu" in tensors
    state = load_state(path)
    assert state.scheduler is not None and state.optimizer["param_groups"][0]["lr"] == 3e-3
    assert set(state.rng) >= {"torch_cpu", "shuffle", "numpy_global", "python"}
    assert [r["epoch"] for r in state.history] == [0, 1] and state.bad_epochs >= 0
    assert not list((tmp_path / "cut").glob(f"{checkpoint_mod.TMP_PREFIX}*"))  # no temporary files left


def test_resume_cli_messages(store, gru_reference, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--resume", str(gru_reference.run_dir)])
    assert res.exit_code == 0 and "is complete; nothing to resume" in res.output, res.output
    res = runner.invoke(app, ["train", "--resume", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "is not a run directory" in res.output and "Traceback" not in res.output
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["train", "--resume", str(tmp_path / "empty")])
    assert res.exit_code == 2 and "is not a run directory" in res.output
    res = runner.invoke(app, ["train", "--resume", str(gru_reference.run_dir), "--epochs", "3"])
    assert res.exit_code == 2 and "--epochs cannot be changed" in res.output
    res = runner.invoke(app, ["train", "--head", "mlp"])
    assert res.exit_code == 2 and "missing options --store, --dataset, --features" in res.output


# -- (b), (c) the real console script ------------------------------------------------------------------

def cli_args(store, out: Path, name: str) -> list[str]:
    path, features = store
    return ["train", "--head", "dialogue-gru", "--store", path, "--dataset", "synth", "--features", features,
            "--epochs", "40", "--batch-size", "4", "--seed", "3", "--precision", "fp32", "--device", "cpu",
            "--out", str(out), "--name", name] + [x for k, v in GRU.items() for x in ("--set", f"{k}={v}")]


def logged(run_dir: Path) -> int:
    try:
        return len((run_dir / "log.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def start_and_signal(args: list[str], run_dir: Path, sig: int, after: int = 2) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([str(BIN), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if logged(run_dir) >= after:
            proc.send_signal(sig)
            break
        time.sleep(0.005)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def cli_reference(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-ref")
    res = subprocess.run([str(BIN), *cli_args(store, out, "ref")], capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr
    return out / "ref"


def test_sigkilled_run_resumes_to_the_same_weights(store, cli_reference, tmp_path):
    run_dir = tmp_path / "killed"
    killed = start_and_signal(cli_args(store, tmp_path, "killed"), run_dir, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert read_status(run_dir)["status"] == "running"  # nothing could mark it: the process just vanished
    assert 2 <= logged(run_dir) < 40
    res = subprocess.run([str(BIN), "train", "--resume", str(run_dir)], capture_output=True, text=True, env=ENV,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resuming" in res.stdout and "test emotion: weighted_f1" in res.stdout
    assert_same_run(run_dir, cli_reference)


def test_sigint_stops_cleanly_and_prints_the_resume_command(store, cli_reference, tmp_path):
    run_dir = tmp_path / "stopped"
    stopped = start_and_signal(cli_args(store, tmp_path, "stopped"), run_dir, signal.SIGINT)
    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    assert "Traceback" not in stopped.stderr and "Traceback" not in stopped.stdout
    assert f"merc-heads train --resume {run_dir}" in stopped.stdout
    status = read_status(run_dir)
    assert status["status"] == "interrupted" and 2 <= status["epochs_done"] < 40
    res = CliRunner().invoke(app, ["eval", str(run_dir)])
    assert res.exit_code == 2 and "interrupted" in res.output and f"merc-heads train --resume {run_dir}" in res.output

    res = CliRunner().invoke(app, ["train", "--resume", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert_same_run(run_dir, cli_reference)


def test_a_run_being_trained_cannot_be_resumed_twice(store, tmp_path):
    from merc.heads.checkpoint import run_lock

    with pytest.raises(RunInterrupted):
        train_run(request(store, tmp_path, "cut", epochs=3), callbacks=[StopAt("main", 0)])
    with run_lock(tmp_path / "cut"):  # as a live `merc-heads train --resume` holds it
        res = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "cut")])
        assert res.exit_code == 2 and "another merc-heads process is training" in res.output, res.output
    res = CliRunner().invoke(app, ["train", "--resume", str(tmp_path / "cut")])
    assert res.exit_code == 0 and read_status(tmp_path / "cut")["status"] == "complete", res.output


def test_per_epoch_writes_are_atomic_but_flushed_only_when_the_run_ends(store, tmp_path, monkeypatch):
    """Every epoch rewrites the resume state, run.json and (at an improvement) the weights, by atomic rename
    but without fsync: two runs side by side otherwise wait on each other's flushes. What a run writes when it
    ends is flushed, so the number of fsyncs does not grow with the epochs."""
    flushed: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(checkpoint_mod.os, "fsync", lambda fd: (flushed.append(fd), real_fsync(fd))[1])
    counts = {}
    for epochs in (2, 8):
        flushed.clear()
        result = train_run(request(store, tmp_path, f"e{epochs}", epochs=epochs))
        assert len(result.fit.history) == epochs
        counts[epochs] = len(flushed)
        assert read_status(result.run_dir)["status"] == "complete"
        assert read_status(result.run_dir)["model_sha256"] == sha256_file(result.run_dir / "model.safetensors")
    assert counts[8] == counts[2] > 0
