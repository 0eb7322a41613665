"""Faults in and around a run directory: each is one clear message naming the file and the fix, exit 2, no traceback.

Damaged weights (same length, bytes overwritten), runs that did not finish, invalid numbers (refused before a run
directory exists), a NaN loss (the run is marked failed), missing or corrupt run files.
"""

import json
import re
import shutil

import pytest
import torch
from heads_synth import SynthSpec, build_store, features_arg
from typer.testing import CliRunner

from merc.heads.checkpoint import read_status
from merc.heads.cli import app
from merc.heads.registry import head_class

torch.set_num_threads(1)
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "s.zarr"
    names = build_store(path, SynthSpec(splits={"train": 12, "dev": 4, "test": 4}, lengths=(3, 5),
                                        dims={"t": 8, "a": 8}, seed=7))
    return str(path), features_arg(names, "ta")


def train_args(store, out, name="run", *extra):
    path, features = store
    return ["train", "--head", "mlp", "--store", path, "--dataset", "synth", "--features", features, "--epochs", "2",
            "--batch-size", "4", "--precision", "fp32", "--device", "cpu", "--set", "hidden=8", "--out", out,
            "--name", name, *extra]


@pytest.fixture(scope="module")
def complete_run(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    res = invoke(*train_args(store, out))
    assert res.exit_code == 0, res.output
    return out / "run"


@pytest.fixture
def run(complete_run, tmp_path):
    """A private copy of the complete run, free to damage."""
    return shutil.copytree(complete_run, tmp_path / "run")


def clean_error(res, *needles):
    text = res.output
    assert res.exit_code == 2, text
    assert "Traceback" not in text and res.exception is None or isinstance(res.exception, SystemExit), text
    for needle in needles:
        assert needle in text, (needle, text)


# -- damaged weights ---------------------------------------------------------------------------------

def test_corrupted_weights_are_refused_by_eval_and_predict(run, tmp_path):
    weights = run / "model.safetensors"
    data = bytearray(weights.read_bytes())
    size = len(data)
    mid = size // 2
    data[mid:mid + 64] = bytes(64)  # overwrite tensor bytes in the middle: same length, header intact
    weights.write_bytes(bytes(data))
    assert weights.stat().st_size == size

    clean_error(invoke("eval", run), "model.safetensors does not match the checksum recorded at save time",
                "damaged", "retrain or restore it")
    out = tmp_path / "p.csv"
    clean_error(invoke("predict", run, "--out", out), "model.safetensors does not match the checksum")
    assert not out.exists()  # no garbage predictions


def test_missing_weights(run):
    (run / "model.safetensors").unlink()
    clean_error(invoke("eval", run), "model.safetensors is missing", "retrain the run")


def test_truncated_weights_without_run_json(run):
    """A run from before run.json (no checksum): a truncated file still fails with a message, not a traceback."""
    (run / "run.json").unlink()
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    clean_error(invoke("eval", run), "model.safetensors cannot be loaded", "damaged")


def test_run_without_run_json_still_evaluates_with_a_note(run):
    (run / "run.json").unlink()
    res = invoke("eval", run)
    assert res.exit_code == 0, res.output
    assert "the checksum of model.safetensors cannot be checked" in res.output
    assert "reproduces the recorded test metrics exactly" in res.output


# -- runs that did not finish ------------------------------------------------------------------------

@pytest.mark.parametrize("status, needle", [("interrupted", "the run is interrupted"),
                                            ("failed", "the run failed"),
                                            ("running", "its process stopped")])
def test_eval_and_predict_refuse_a_run_that_did_not_finish(run, tmp_path, status, needle):
    record = json.loads((run / "run.json").read_text())
    record.update(status=status, stage_epoch=1, epochs_done=1, error="boom" if status == "failed" else None)
    (run / "run.json").write_text(json.dumps(record))
    clean_error(invoke("eval", run), needle, "after epoch 1", f"merc-heads train --resume {run}")
    clean_error(invoke("predict", run, "--out", tmp_path / "p.csv"), needle, f"merc-heads train --resume {run}")


def test_corrupt_run_json(run):
    (run / "run.json").write_text("{not json")
    clean_error(invoke("eval", run), "run.json cannot be read")


# -- invalid numbers: refused before a run directory exists ------------------------------------------

@pytest.mark.parametrize("extra, given, valid", [
    (["--set", "lr=nan"], "--set lr=nan", "lr must be a finite number > 0"),
    (["--set", "lr=-1"], "--set lr=-1", "lr must be a finite number > 0"),
    (["--set", "lr=inf"], "--set lr=inf", "lr must be a finite number > 0"),
    (["--set", "lr=0"], "--set lr=0", "lr must be a finite number > 0"),
    (["--epochs", "0"], "--epochs 0", "--epochs must be a whole number >= 1"),
    (["--batch-size", "0"], "--batch-size 0", "--batch-size must be a whole number >= 1"),
    (["--batch-size", "-3"], "--batch-size -3", "--batch-size must be a whole number >= 1"),
    (["--set", "patience=0"], "--set patience=0", "patience must be a whole number >= 1"),
    (["--set", "eval_batch_size=0"], "--set eval_batch_size=0", "eval_batch_size must be a whole number >= 1"),
    (["--set", "weight_decay=-0.1"], "--set weight_decay=-0.1", "weight_decay must be a finite number >= 0"),
    (["--set", "grad_clip=nan"], "--set grad_clip=nan", "grad_clip must be a number"),
    (["--set", "max_frames=-1"], "--set max_frames=-1", "max_frames must be a whole number >= 0"),
    (["--set", "optim.lr=0"], "--set optim.lr=0", "optim.lr must be a finite number > 0"),
    (["--set", "train.epochs=0"], "--set train.epochs=0", "train.epochs must be a whole number >= 1"),
    (["--set", "train.batch_size=-1"], "--set train.batch_size=-1", "train.batch_size must be a whole number >= 1"),
    (["--set", "data.max_frames.a=-5"], "--set data.max_frames.a=-5", "data.max_frames must be a whole number >= 0"),
    (["--set", "optim.plateau_factor=2"], "--set optim.plateau_factor=2", "optim.plateau_factor must be a number in"),
    (["--set", "optim.betas=0.9,1"], "--set optim.betas=0.9,1", "optim.betas must be two numbers in [0, 1)"),
])
def test_invalid_numbers_fail_before_the_run_directory_exists(store, tmp_path, extra, given, valid):
    out = tmp_path / "runs"
    res = invoke(*train_args(store, out, "bad", *extra))
    clean_error(res, "invalid training setting", given, valid)
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
    assert_flags_exist(res.output)


def test_a_word_for_a_number_names_the_option(store, tmp_path):
    out = tmp_path / "runs"
    clean_error(invoke(*train_args(store, out, "bad", "--set", "lr=fast")), "--set lr=fast is not a number")
    clean_error(invoke(*train_args(store, out, "bad", "--set", "optim.scheduler=cosine")),
                "--set optim.scheduler=cosine is not one of none, plateau")
    clean_error(invoke(*train_args(store, out, "bad", "--set", "patience=soon")), "--set patience=soon",
                "patience must be a whole number >= 1")
    assert not out.exists()


def test_invalid_numbers_are_listed_together(store, tmp_path):
    res = invoke(*train_args(store, tmp_path / "runs", "bad", "--set", "lr=nan", "--set", "patience=0"))
    clean_error(res, "invalid training settings", "--set lr=nan", "--set patience=0", "lr must be",
                "patience must be")


def test_a_head_option_lr_is_checked_too(store, tmp_path):
    """SUMMER's lr is a head option (the head's fields win over the optimiser's): it is checked all the same."""
    path, features = store
    out = tmp_path / "runs"
    res = invoke("train", "--head", "summer", "--store", path, "--dataset", "synth", "--features", features,
                 "--epochs", "1", "--set", "d_model=8", "--set", "heads=2", "--set", "lr=nan", "--out", out)
    clean_error(res, "--set lr=nan", "lr must be a finite number > 0")
    assert not out.exists() or not any(out.iterdir())


def test_nan_loss_marks_the_run_failed(store, tmp_path, monkeypatch):
    cls = head_class("mlp")
    original = cls.loss

    def loss(self, batch, out, epoch):
        total, terms = original(self, batch, out, epoch)
        return (total * float("nan") if epoch == 1 else total), terms

    monkeypatch.setattr(cls, "loss", loss)
    res = invoke(*train_args(store, tmp_path, "nan", "--epochs", "3"))
    clean_error(res, "loss became nan in epoch 2", "--set optim.lr=")
    assert_flags_exist(res.output)
    status = read_status(tmp_path / "nan")
    assert status["status"] == "failed" and "loss became nan in epoch 2" in status["error"]
    assert status["epochs_done"] == 1
    clean_error(invoke("eval", tmp_path / "nan"), "the run failed after epoch 1", "loss became nan")


# -- missing or corrupt run files ----------------------------------------------------------------------

@pytest.mark.parametrize("name, damage, needle", [
    ("config.json", "delete", "config.json is missing"),
    ("config.json", "garbage", "config.json is not valid JSON"),
    ("config.json", "empty-object", "config.json is incomplete or invalid"),
    ("head_config.json", "delete", "head_config.json is missing"),
    ("head_config.json", "garbage", "head_config.json is not valid JSON"),
    ("head_config.json", "empty-object", "head_config.json is incomplete or invalid"),
    ("feature_stats.safetensors", "delete", "feature_stats.safetensors is missing"),
    ("feature_stats.safetensors", "garbage", "feature_stats.safetensors cannot be read"),
    ("metrics.json", "garbage", "metrics.json is not valid JSON"),
])
def test_missing_or_corrupt_run_files(run, name, damage, needle):
    path = run / name
    if damage == "delete":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01 not what it should be")
    else:
        path.write_text("{}")
    res = invoke("eval", run)
    clean_error(res, needle, "Fix:")
    assert str(run) in res.output  # the message says where


def test_eval_of_something_that_is_not_a_run(tmp_path):
    clean_error(invoke("eval", tmp_path / "nope"), "is not a run directory")
    clean_error(invoke("eval", tmp_path), "is not a run directory")


# -- fix hints name options that exist -----------------------------------------------------------------

_HELP: dict[str, set[str]] = {}


def assert_flags_exist(text: str) -> None:
    """Every --flag a message suggests is an option of `merc-heads train` (or --set, --resume)."""
    if not _HELP:
        for cmd in ("train", "eval", "predict"):
            _HELP[cmd] = set(re.findall(r"--[a-z][a-z0-9-]*", invoke(cmd, "--help").output))
    known = set().union(*_HELP.values())
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
    assert flags <= known, flags - known
