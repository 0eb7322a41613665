"""The trainer loop, precision choice, optimiser overrides, stages and hooks, losses, seeds, baselines."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from heads_synth import shared_store
from torch import nn

from merc.heads import trainer as trainer_mod
from merc.heads.data import HeadsData, HeadsError
from merc.heads.losses import (
    focal_loss,
    masked_bce,
    masked_cross_entropy,
    masked_l1,
    masked_mse,
    standard_loss,
)
from merc.heads.models.base import Batch, Head, HeadOutput, TaskSpec
from merc.heads.registry import build_head
from merc.heads.trainer import (
    TrainConfig,
    Trainer,
    optimizer_settings,
    resolve_precision,
)

torch.set_num_threads(1)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def planted():
    path, names = shared_store("planted")
    return HeadsData.load(path, "synth", f"t={names['t']},a={names['a']}")


def small(name, data, **over):
    return build_head(name, data.dims, data.tasks, {"hidden": 32, **over})


# -- precision ---------------------------------------------------------------------------------------

def test_precision_resolution(monkeypatch):
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"
    with pytest.raises(HeadsError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", CPU)
    with pytest.raises(HeadsError, match="unknown --precision"):
        resolve_precision("fp8", CPU)
    monkeypatch.setattr(trainer_mod, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", CPU) == "bf16"
    monkeypatch.setattr(trainer_mod, "cpu_has_native_bf16", lambda: False)
    assert resolve_precision("auto", CPU) == "fp32"


def test_cpu_flag_probe_matches_proc_cpuinfo():
    trainer_mod.cpu_has_native_bf16.cache_clear()
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    assert trainer_mod.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


# -- optimiser ---------------------------------------------------------------------------------------

def test_optimizer_settings_overrides_win(planted):
    head = small("mlp", planted)
    assert optimizer_settings(head)["name"] == "adamw" and optimizer_settings(head)["grad_clip"] == 1.0  # mlp's defaults
    s = optimizer_settings(head, {"lr": "0.5", "name": "Adam", "scheduler": "plateau", "grad_clip": 0})
    assert s["lr"] == 0.5 and s["name"] == "adam" and s["scheduler"] == "plateau" and s["grad_clip"] is None
    opt = trainer_mod.build_optimizer(head, s)
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["lr"] == 0.5
    assert isinstance(trainer_mod.build_scheduler(opt, s), torch.optim.lr_scheduler.ReduceLROnPlateau)
    with pytest.raises(HeadsError, match="unknown optimizer"):
        trainer_mod.build_optimizer(head, {**s, "name": "sgdx"})
    with pytest.raises(HeadsError, match="optim.name must be one of adamw, adam"):
        optimizer_settings(head, {"name": "sgd"})


# -- loop --------------------------------------------------------------------------------------------

def fit(data, head, **cfg):
    cfg = {"epochs": 4, "batch_size": 8, "precision": "fp32", "device": "cpu", **cfg}
    t = Trainer(head, data, TrainConfig(**cfg))
    return t, t.fit()


def test_same_seed_repeats_exactly(planted):
    results = []
    for _ in range(2):
        torch.manual_seed(123)  # different global state before each run: the trainer's seed must win
        head = small("dialogue-gru", planted, dropout=0.2)
        t, res = fit(planted, head, seed=7)
        preds = t.evaluate("test")["emotion"]
        results.append((res.history, preds.scores.copy()))
    h1, h2 = [[{k: v for k, v in r.items() if k != "seconds"} for r in h] for h, _ in results]
    assert h1 == h2
    assert np.array_equal(results[0][1], results[1][1])
    _, res3 = fit(planted, small("dialogue-gru", planted, dropout=0.2), seed=8)
    assert [r["train_loss"] for r in res3.history] != [r["train_loss"] for r in h1]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_both_cpu_precisions_train(planted, precision):
    head = small("late-fusion", planted)
    t, res = fit(planted, head, precision=precision, epochs=3)
    assert res.precision == precision
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert all(np.isfinite(r["dev_loss"]) for r in res.history)


def test_early_stopping_and_best_state_restored(planted):
    head = small("mlp", planted)
    # a vanishing lr (0 is refused): nothing improves after epoch 0, so training stops after 1 + patience epochs
    t, res = fit(planted, head, epochs=20, patience=2, optim={"lr": 1e-12})
    assert len(res.history) == 3 and res.best["main"]["epoch"] == 0


def test_the_batch_unit_reaches_the_data(planted):
    """train.batch_unit goes to both batches() and n_batches(): utterance batches of B utterances, T = 1."""
    from merc.heads.trainer import Callback

    class Count(Callback):
        def __init__(self):
            self.announced, self.steps = [], 0

        def on_epoch_start(self, stage, epoch, n_batches):
            self.announced.append(n_batches)

        def on_step(self, loss):
            self.steps += 1

    for unit, expected in (("utterance", planted.n_batches("train", 16, unit="utterance")),
                           ("dialogue", planted.n_batches("train", 16))):
        count = Count()
        t = Trainer(small("mlp", planted), planted, TrainConfig(epochs=1, batch_size=16, batch_unit=unit,
                                                                precision="fp32", device="cpu"), [count])
        t.fit()
        assert count.announced == [expected] and count.steps == expected
        assert t.record_settings()["batch_unit"] == unit
    assert planted.n_batches("train", 16, unit="utterance") > planted.n_batches("train", 16)


class _Recorder(Head):
    """A two-stage head that records the trainer's calls (SUMMER-like teacher/student staging)."""

    name = "recorder"
    defaults = {"optim.name": "adam", "optim.lr": 1e-2, "optim.weight_decay": 0.0, "optim.grad_clip": 1.0}

    def __init__(self, dims, tasks):
        super().__init__(None, dims, tasks)
        self.teacher = nn.Linear(dims["t"], tasks[0].out_dim)
        self.student = nn.Linear(dims["t"], tasks[0].out_dim)
        self.calls: list[tuple] = []
        self.stage = "teacher"

    def stages(self):
        return ["teacher", "student"]

    def set_stage(self, stage):
        self.calls.append(("set_stage", stage))
        self.stage = stage
        self.teacher.requires_grad_(stage == "teacher")

    def forward(self, batch: Batch) -> HeadOutput:
        layer = self.teacher if self.stage == "teacher" else self.student
        return HeadOutput({self.tasks[0].name: layer(batch.feats["t"])})

    def loss(self, batch, out, epoch):
        return standard_loss(self.tasks, batch, out)

    def after_backward(self, batch, out, epoch):
        grad = self.teacher.weight.grad
        self.calls.append(("after_backward", self.stage, epoch, grad is not None))


def test_stages_run_in_order_with_hooks(planted):
    head = _Recorder(planted.dims, planted.tasks)
    teacher_before = head.teacher.weight.detach().clone()
    t, res = fit(planted, head, epochs=2)
    stages = [c[1] for c in head.calls if c[0] == "set_stage"]
    assert stages == ["teacher", "student"]
    assert [r["stage"] for r in res.history] == ["teacher"] * 2 + ["student"] * 2
    hooks = [c for c in head.calls if c[0] == "after_backward"]
    assert len(hooks) == 4 * planted.n_batches("train", 8)
    assert all(c[3] for c in hooks if c[1] == "teacher") and not any(c[3] for c in hooks if c[1] == "student")
    teacher_after = head.teacher.weight.detach().clone()
    assert not torch.equal(teacher_before, teacher_after)
    assert set(res.best) == {"teacher", "student"}


def test_monitor_must_exist(planted):
    with pytest.raises(HeadsError, match="monitor metric"):
        fit(planted, small("mlp", planted), epochs=1, monitor="mae")


# -- baselines ---------------------------------------------------------------------------------------

def test_dialogue_gru_padding_changes_nothing(planted):
    head = small("dialogue-gru", planted, layers=2).eval()
    short, long_ = sorted(planted.split_dialogues("dev")[:2],
                          key=lambda d: planted.dialogue_offsets[d + 1] - planted.dialogue_offsets[d])
    alone = head(planted.batch([short]))
    padded = head(planted.batch([short, long_]))  # `short` is now padded up to the long one
    n = int(planted.batch([short]).mask.sum())
    assert torch.allclose(alone.logits["emotion"][0, :n], padded.logits["emotion"][0, :n], atol=1e-6)


@pytest.mark.parametrize("name", ["mlp", "late-fusion", "dialogue-gru"])
def test_baselines_serve_all_task_kinds(name):
    path, names = shared_store("mosei")
    data = HeadsData.load(path, "synth", ",".join(names.values()), tasks="all")
    head = build_head(name, data.dims, data.tasks, {"hidden": 16})
    b = data.batch([0, 1, 2])
    out = head(b)
    B, T = b.mask.shape
    assert out.logits["sentiment"].shape == (B, T, 1) and out.logits["emotions"].shape == (B, T, 6)
    loss, terms = head.loss(b, out, 0)
    loss.backward()
    assert set(terms) == {"loss_sentiment", "loss_emotions"} and torch.isfinite(loss)


# -- losses ------------------------------------------------------------------------------------------

def test_losses_ignore_unlabelled_positions():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, requires_grad=True)
    labels = torch.tensor([[1, -1, 3], [-1, -1, 0]])
    keep = labels >= 0
    ref = nn.functional.cross_entropy(logits[keep], labels[keep])
    assert torch.allclose(masked_cross_entropy(logits, labels), ref)
    assert torch.allclose(focal_loss(logits, labels, gamma=0.0), ref)
    # focal by hand at one position
    p = torch.softmax(logits[0, 0], -1)[1]
    one = torch.tensor([[1]])
    assert torch.allclose(focal_loss(logits[:1, :1], one, gamma=2.0), (1 - p) ** 2 * -torch.log(p))

    targets = torch.tensor([[[1.0, 0, 1, 0], [-1, -1, -1, -1], [0, 0, 0, 1]]] * 2)
    k = targets >= 0
    ref_bce = nn.functional.binary_cross_entropy_with_logits(logits[k], targets[k])
    assert torch.allclose(masked_bce(logits, targets), ref_bce)

    pred = torch.randn(2, 3, 1)
    y = torch.tensor([[0.5, float("nan"), -1.0], [float("nan"), 2.0, 0.0]])
    m = ~torch.isnan(y)
    assert torch.allclose(masked_l1(pred, y), (pred.squeeze(-1)[m] - y[m]).abs().mean())
    assert torch.allclose(masked_mse(pred, y), ((pred.squeeze(-1)[m] - y[m]) ** 2).mean())


def test_losses_with_nothing_labelled_are_zero_with_a_graph():
    logits = torch.randn(1, 2, 3, requires_grad=True)
    for loss in (masked_cross_entropy(logits, torch.full((1, 2), -1)), focal_loss(logits, torch.full((1, 2), -1)),
                 masked_bce(logits, torch.full((1, 2, 3), -1.0)),
                 masked_l1(logits[..., :1], torch.full((1, 2), float("nan")))):
        assert loss.item() == 0.0
        loss.backward()


@dataclass
class _Cfg:
    regression_loss: str = "l1"


def test_standard_loss_sums_tasks():
    tasks = [TaskSpec("emotion", "categorical", ("a", "b")), TaskSpec("sentiment", "regression")]
    out = HeadOutput({"emotion": torch.zeros(1, 2, 2), "sentiment": torch.ones(1, 2, 1)})
    batch = Batch(feats={}, mask=torch.ones(1, 2, dtype=torch.bool), speakers=torch.zeros(1, 2, dtype=torch.long),
                  labels={"emotion": torch.tensor([[0, 1]]), "sentiment": torch.tensor([[0.0, 3.0]])})
    total, terms = standard_loss(tasks, batch, out, weights={"sentiment": 0.5})
    assert terms["loss_emotion"] == pytest.approx(np.log(2)) and terms["loss_sentiment"] == pytest.approx(1.5)
    assert total.item() == pytest.approx(np.log(2) + 0.75)


# -- settings checks and resuming ----------------------------------------------------------------------

@pytest.mark.parametrize("cfg, optim, needles", [
    ({"epochs": 0}, {}, ["--epochs 0", "--epochs must be a whole number >= 1"]),
    ({"batch_size": 0, "patience": 0}, {}, ["--batch-size 0", "--set train.patience=0"]),
    ({"eval_batch_size": -1}, {}, ["--set train.eval_batch_size=-1"]),
    ({}, {"lr": float("nan")}, ["--set optim.lr=nan", "optim.lr must be a finite number > 0"]),
    ({}, {"lr": -1.0, "weight_decay": -1}, ["--set optim.lr=-1.0", "--set optim.weight_decay=-1"]),
    ({}, {"grad_clip": float("nan")}, ["--set optim.grad_clip=nan"]),
    ({}, {"lr": float("inf")}, ["--set optim.lr=inf"]),
])
def test_invalid_settings_fail_when_the_trainer_is_made(planted, cfg, optim, needles):
    with pytest.raises(HeadsError) as info:
        Trainer(small("mlp", planted), planted, TrainConfig(precision="fp32", device="cpu", optim=optim, **cfg))
    for needle in needles:
        assert needle in str(info.value)


def test_fit_resumes_exactly_from_a_saved_state(planted, tmp_path):
    """A TrainState handed to on_checkpoint, saved and loaded (safetensors + JSON), continues the fit exactly."""
    from merc.heads.checkpoint import load_state, save_state
    from merc.heads.trainer import Callback

    class Save(Callback):
        def on_checkpoint(self, state):
            save_state(state, tmp_path / f"{state.stage}-{state.epoch}.safetensors")

    def run(callbacks=(), resume=None):
        torch.manual_seed(99)  # the head's initial weights differ from the resumed ones: the state must win
        head = _Recorder(planted.dims, planted.tasks)
        t = Trainer(head, planted, TrainConfig(epochs=3, batch_size=8, precision="fp32", device="cpu", seed=5,
                                               optim={"scheduler": "plateau"}), list(callbacks))
        return head, t.fit(resume=resume)

    ref_head, ref = run([Save()])
    for name in ("teacher-1", "teacher-2", "student-0"):
        head, res = run(resume=load_state(tmp_path / f"{name}.safetensors"))
        for k, v in ref_head.state_dict().items():
            assert torch.equal(v, head.state_dict()[k]), (name, k)
        strip = [[{k: v for k, v in r.items() if k != "seconds"} for r in h] for h in (ref.history, res.history)]
        assert strip[0] == strip[1] and res.best == ref.best
        assert [c[1] for c in head.calls if c[0] == "set_stage"] == (["student"] if name == "student-0" else
                                                                     ["teacher", "student"])


def test_seeding_sets_deterministic_algorithms_without_loading_the_compiler():
    """seed_everything turns on deterministic algorithms (warn only) without importing torch._inductor, which
    took 1.7 s of every run's start (tools/bench_sweep.py)."""
    import subprocess
    import sys

    code = ("import sys, torch; from merc.heads.trainer import seed_everything; seed_everything(3); "
            "print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(), "
            "'torch._inductor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "False"]
