"""Derived MOSI/MOSEI tasks (X_has0, X_non0, X7): rules against hand-worked labels, resolution, loading, training."""

import json

import numpy as np
import pytest
import torch
from heads_synth import features_arg, shared_store
from typer.testing import CliRunner

from merc.data_manifests.labels import IEMOCAP_VAD, MOS_SENTIMENT, MOSEI_EMOTIONS
from merc.data_manifests.manifest import LabelSpace
from merc.extract.store import StoreReader
from merc.heads.cli import app
from merc.heads.data import DERIVED_RULES, HeadsData, HeadsError, derive_labels, derived_tasks, resolve_tasks
from merc.heads.metrics import categorical_metrics, regression_metrics
from merc.heads.registry import build_head
from merc.heads.runs import evaluate_run
from merc.heads.trainer import TrainConfig, Trainer

torch.set_num_threads(1)
NAN = float("nan")

# value, has0, non0, 7-class value (MMSA: clip to [-3, 3], then numpy round half to even); -1 / None = unlabelled
TABLE = [
    (0.0, 1, -1, 0),
    (0.5, 1, 1, 0),
    (-0.5, 0, 0, 0),
    (1.5, 1, 1, 2),
    (2.5, 1, 1, 2),
    (-2.5, 0, 0, -2),
    (3.4, 1, 1, 3),
    (-3.4, 0, 0, -3),
    (0.2, 1, 1, 0),
    (-0.2, 0, 0, 0),
    (-1.6, 0, 0, -2),
    (3.0, 1, 1, 3),
    (-3.0, 0, 0, -3),
    (NAN, -1, -1, None),
]


def test_rules_match_hand_worked_labels():
    values = np.array([row[0] for row in TABLE], dtype=np.float32)
    assert derive_labels(values, "has0").tolist() == [row[1] for row in TABLE]
    assert derive_labels(values, "non0").tolist() == [row[2] for row in TABLE]
    seven = derive_labels(values, "7class")
    assert seven.tolist() == [-1 if row[3] is None else row[3] + 3 for row in TABLE]
    classes = DERIVED_RULES["7class"].classes
    assert classes == ("-3", "-2", "-1", "0", "1", "2", "3")
    assert [classes[i] for i in seven[:-1]] == [str(row[3]) for row in TABLE[:-1]]
    assert DERIVED_RULES["has0"].classes == ("negative", "non-negative")
    assert DERIVED_RULES["non0"].classes == ("negative", "positive")
    with pytest.raises(HeadsError, match="unknown derivation rule"):
        derive_labels(values, "acc5")


def test_derived_accuracy_equals_the_regression_metrics_on_the_same_values():
    """A classifier on X_has0 / X_non0 / X7 is scored on the same classes as acc2_has0 / acc2_non0 / acc7."""
    rng = np.random.default_rng(0)
    gold = np.round(rng.uniform(-3.4, 3.4, 500) * 2) / 2  # many exact zeros and .5 values
    pred = np.round(gold + rng.normal(0, 0.8, 500), 1)
    reg = regression_metrics(gold, pred)

    def acc(rule, pred_labels):
        g = derive_labels(gold, rule)
        keep = g >= 0
        return categorical_metrics(g[keep], pred_labels[keep], DERIVED_RULES[rule].classes)["accuracy"]

    assert acc("has0", derive_labels(pred, "has0")) == pytest.approx(reg["acc2_has0"])
    assert acc("non0", (pred > 0).astype(np.int64)) == pytest.approx(reg["acc2_non0"])  # a 0 prediction: negative
    assert acc("7class", derive_labels(pred, "7class")) == pytest.approx(reg["acc7"])


def test_derivable_names_per_space():
    spaces = {"sentiment": MOS_SENTIMENT, "emotions": MOSEI_EMOTIONS, **IEMOCAP_VAD,
              "score": LabelSpace("score", "regression"),  # undeclared range: derivable
              "emotion": LabelSpace("emotion", "categorical", ("a", "b"))}
    assert derived_tasks(spaces) == {
        "sentiment_has0": ("sentiment", "has0"), "sentiment_non0": ("sentiment", "non0"),
        "sentiment7": ("sentiment", "7class"),
        "score_has0": ("score", "has0"), "score_non0": ("score", "non0"), "score7": ("score", "7class")}
    # a stored space of the same name wins
    stored = {"sentiment": MOS_SENTIMENT, "sentiment7": LabelSpace("sentiment7", "categorical", ("x",))}
    assert derived_tasks(stored) == {"sentiment_has0": ("sentiment", "has0"), "sentiment_non0": ("sentiment", "non0")}


def test_resolve_tasks_all_is_stored_only_and_errors_list_both():
    spaces = {"sentiment": MOS_SENTIMENT, "emotions": MOSEI_EMOTIONS}
    assert [t.name for t in resolve_tasks(spaces, "all")] == ["sentiment", "emotions"]
    specs = resolve_tasks(spaces, "sentiment7,sentiment,sentiment_non0")
    assert [(t.name, t.kind) for t in specs] == [("sentiment7", "categorical"), ("sentiment", "regression"),
                                                 ("sentiment_non0", "categorical")]
    assert specs[0].out_dim == 7 and specs[2].classes == ("negative", "positive")
    with pytest.raises(HeadsError) as err:
        resolve_tasks(spaces, "sentiment2")
    message = str(err.value)
    assert "no label space 'sentiment2'" in message
    assert "sentiment, emotions" in message and "sentiment_has0, sentiment_non0, sentiment7" in message


@pytest.fixture(scope="module")
def mosei():
    path, names = shared_store("mosei")
    return path, names


def test_loaded_labels_follow_the_manifest_values(mosei):
    path, names = mosei
    data = HeadsData.load(path, "synth", features_arg(names),
                          tasks="sentiment_has0,sentiment_non0,sentiment7,sentiment")
    assert data.derived == {"sentiment_has0": ("sentiment", "has0"), "sentiment_non0": ("sentiment", "non0"),
                            "sentiment7": ("sentiment", "7class")}
    values = [u.labels["sentiment"] for d in StoreReader(path).manifest("synth").dialogues for u in d.utterances]
    assert 0.0 in values  # the store has exact zeros, which Non0 leaves unlabelled
    assert data.labels["sentiment_has0"].tolist() == [0 if v < 0 else 1 for v in values]
    assert data.labels["sentiment_non0"].tolist() == [-1 if v == 0 else int(v > 0) for v in values]
    assert data.labels["sentiment7"].tolist() == [max(-3, min(3, round(v))) + 3 for v in values]
    assert data.labels["sentiment_has0"].dtype == np.int64
    b = data.batch([0, 1])
    assert b.labels["sentiment7"].dtype == torch.long and (b.labels["sentiment7"][~b.mask] == -1).all()
    # "all" keeps meaning the stored spaces
    assert [t.name for t in HeadsData.load(path, "synth", features_arg(names), tasks="all").tasks] == \
        ["sentiment", "emotions"]


@pytest.mark.parametrize("task", ["sentiment_has0", "sentiment_non0", "sentiment7"])
def test_a_categorical_head_trains_on_each_derived_task(mosei, task):
    path, names = mosei
    data = HeadsData.load(path, "synth", features_arg(names), tasks=task)
    head = build_head("mlp", data.dims, data.tasks, {"hidden": 32})
    trainer = Trainer(head, data, TrainConfig(epochs=1, batch_size=8, precision="fp32", device="cpu"))
    fit = trainer.fit()
    assert fit.monitor == "weighted_f1" and len(fit.history) == 1 and "dev_accuracy" in fit.history[0]
    test = trainer.evaluate("test")[task].metrics()
    assert {"accuracy", "weighted_f1", "macro_f1", "balanced_accuracy", "per_class", "confusion_matrix"} <= set(test)
    assert set(test["per_class"]) == set(data.tasks[0].classes)
    gold = data.labels[task][data.split_rows("test")]
    assert test["n"] == int((gold >= 0).sum()) and test["n"] > 0  # Non0: the zeros are not scored


def test_cli_trains_and_reloads_a_derived_task(mosei, tmp_path):
    path, names = mosei
    res = CliRunner().invoke(app, ["train", "--head", "mlp", "--store", path, "--dataset", "synth",
                                   "--features", features_arg(names), "--task", "sentiment_has0", "--epochs", "1",
                                   "--batch-size", "8", "--set", "hidden=32", "--out", str(tmp_path), "--name", "r",
                                   "--precision", "fp32", "--device", "cpu"])
    assert res.exit_code == 0, (res.output, res.exception)
    run = tmp_path / "r"
    config = json.loads((run / "config.json").read_text())
    assert config["tasks"] == [{"name": "sentiment_has0", "kind": "categorical",
                                "classes": ["negative", "non-negative"]}]
    test = json.loads((run / "metrics.json").read_text())["splits"]["test"]["sentiment_has0"]
    assert {"accuracy", "weighted_f1"} <= set(test) and set(test["per_class"]) == {"negative", "non-negative"}
    metrics, recorded = evaluate_run(run, "test", device="cpu")  # the derived task is derived again on reload
    assert json.loads(json.dumps(metrics)) == recorded
