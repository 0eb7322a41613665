"""heads/metrics.py against scikit-learn, an MMSA-style reference, and hand-worked examples."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_recall_fscore_support
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from merc.heads.metrics import (
    HIGHER_IS_BETTER,
    PRIMARY,
    categorical_metrics,
    is_better,
    multilabel_metrics,
    regression_metrics,
)

torch.set_num_threads(1)
CLASSES = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")


# -- categorical -------------------------------------------------------------------------------------

def test_categorical_hand_worked():
    # class 0: tp 1 of 2 gold, 2 predicted -> P .5 R .5 F1 .5; class 1: tp 2, 2 gold, 3 predicted -> F1 .8;
    # class 2: 1 gold, never predicted -> F1 0.  weighted = (2*.5 + 2*.8 + 1*0) / 5 = .52; macro = 1.3 / 3
    m = categorical_metrics(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), ("a", "b", "c"))
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["weighted_f1"] == pytest.approx(0.52)
    assert m["macro_f1"] == pytest.approx(1.3 / 3)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert m["per_class"]["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["n"] == 5


@pytest.mark.parametrize("seed", range(6))
def test_categorical_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    # skewed and with some classes absent from gold or predictions, like MELD's fear/disgust
    gold = rng.choice(7, size=n, p=[.45, .12, .0, .08, .2, .05, .1])
    pred = np.where(rng.random(n) < 0.6, gold, rng.choice(7, size=n, p=[.5, .1, .05, .1, .15, .0, .1]))
    m = categorical_metrics(gold, pred, CLASSES)
    assert m["accuracy"] == pytest.approx(accuracy_score(gold, pred))
    assert m["weighted_f1"] == pytest.approx(f1_score(gold, pred, average="weighted", zero_division=0))
    assert m["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro", zero_division=0))
    with warnings.catch_warnings():  # sklearn warns about predicted classes absent from gold
        warnings.simplefilter("ignore")
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(gold, pred))
    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=range(7), zero_division=0)
    for i, c in enumerate(CLASSES):
        assert m["per_class"][c]["precision"] == pytest.approx(p[i])
        assert m["per_class"][c]["recall"] == pytest.approx(r[i])
        assert m["per_class"][c]["f1"] == pytest.approx(f[i])
        assert m["per_class"][c]["support"] == s[i]
    assert m["confusion_matrix"] == sk_confusion_matrix(gold, pred, labels=range(7)).tolist()


def test_categorical_empty_is_nan_not_crash():
    m = categorical_metrics(np.zeros(0, int), np.zeros(0, int), ("a", "b"))
    assert m["n"] == 0 and np.isnan(m["weighted_f1"])


# -- regression --------------------------------------------------------------------------------------

def mmsa_reference(pred: np.ndarray, truth: np.ndarray) -> dict:
    """What MMSA's metricsTop.__eval_mosei_regression computes, written out with scikit-learn."""
    non_zeros = np.array([i for i, e in enumerate(truth) if e != 0])
    return {
        "mae": np.mean(np.abs(pred - truth)),
        "pearson": np.corrcoef(pred, truth)[0][1],
        "acc7": np.sum(np.round(np.clip(pred, -3, 3)) == np.round(np.clip(truth, -3, 3))) / len(truth),
        "acc5": np.sum(np.round(np.clip(pred, -2, 2)) == np.round(np.clip(truth, -2, 2))) / len(truth),
        "acc2_non0": accuracy_score(truth[non_zeros] > 0, pred[non_zeros] > 0),
        "f1_non0": f1_score(truth[non_zeros] > 0, pred[non_zeros] > 0, average="weighted"),
        "acc2_has0": accuracy_score(truth >= 0, pred >= 0),
        "f1_has0": f1_score(truth >= 0, pred >= 0, average="weighted"),
    }


def test_regression_hand_worked():
    gold = np.array([-2.0, -0.4, 0.0, 0.6, 2.6])
    pred = np.array([-1.6, 0.2, 0.0, -0.1, 3.4])
    m = regression_metrics(gold, pred)
    # Has0: gold >= 0 -> F F T T T; pred >= 0 -> F T T F T: 3 of 5
    assert m["acc2_has0"] == pytest.approx(3 / 5)
    # Non0 drops the zero gold: gold > 0 -> F F T T; pred > 0 -> F T F T: 2 of 4
    assert m["acc2_non0"] == pytest.approx(2 / 4) and m["n_non0"] == 4
    # Acc7: round(clip(., -3, 3)): pred -2 0 0 -0 3, gold -2 -0 0 1 3 -> 4 of 5
    assert m["acc7"] == pytest.approx(4 / 5)
    # Acc5: round(clip(., -2, 2)): pred -2 0 0 -0 2, gold -2 -0 0 1 2 -> 4 of 5
    assert m["acc5"] == pytest.approx(4 / 5)
    assert m["mae"] == pytest.approx((0.4 + 0.6 + 0 + 0.7 + 0.8) / 5)
    # weighted F1 of Has0 by hand: class "neg" (2 gold): tp 1, predicted 2 -> F1 .5; "non-neg" (3 gold): tp 2,
    # predicted 3 -> F1 2/3; weighted = (2 * .5 + 3 * 2/3) / 5 = .6
    assert m["f1_has0"] == pytest.approx(0.6)


def test_regression_rounding_is_half_to_even_like_mmsa():
    # np.round(2.5) == 2 and np.round(0.5) == 0: a gold of 2.5 and a prediction of 2.4 agree on Acc7
    m = regression_metrics(np.array([2.5, 0.5]), np.array([2.4, 0.0]))
    assert m["acc7"] == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_regression_matches_mmsa_reference(seed):
    rng = np.random.default_rng(seed)
    gold = np.clip(np.round(rng.normal(0, 1.5, 200) * 3) / 3, -3, 3)  # MOSI-like thirds, with zeros
    gold[:10] = 0.0
    pred = gold + rng.normal(0, 0.8, 200)
    pred[:3] = 0.0
    m = regression_metrics(gold, pred)
    ref = mmsa_reference(pred, gold)
    for k, v in ref.items():
        assert m[k] == pytest.approx(v), k
    # Pearson by its definition
    pc, gc = pred - pred.mean(), gold - gold.mean()
    assert m["pearson"] == pytest.approx((pc * gc).sum() / np.sqrt((pc ** 2).sum() * (gc ** 2).sum()))


def test_regression_constant_prediction_gives_nan_pearson():
    m = regression_metrics(np.array([1.0, -1.0, 2.0]), np.zeros(3))
    assert np.isnan(m["pearson"]) and m["mae"] == pytest.approx(4 / 3)


REGRESSION_NAMES = {"n", "acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "n_non0", "acc5", "acc7", "mae", "pearson"}
CATEGORICAL_NAMES = {"n", "accuracy", "weighted_f1", "macro_f1", "balanced_accuracy", "per_class", "confusion_matrix"}


def test_metric_names_are_the_documented_ones_even_when_empty():
    """metrics.json, --set monitor= and the derived sentiment tasks (X_has0, X_non0, X7) rely on these names."""
    gold = np.array([-1.2, 0.0, 0.4, 2.6])
    assert set(regression_metrics(gold, gold + 0.1)) == REGRESSION_NAMES
    empty = regression_metrics(np.zeros(0), np.zeros(0))
    assert set(empty) == REGRESSION_NAMES and empty["n"] == 0 and empty["n_non0"] == 0
    assert set(categorical_metrics(np.array([0, 1]), np.array([1, 1]), ("negative", "non-negative"))) == \
        CATEGORICAL_NAMES
    assert all(HIGHER_IS_BETTER[k] for k in REGRESSION_NAMES - {"n", "n_non0", "mae"}) and not HIGHER_IS_BETTER["mae"]
    assert PRIMARY["categorical"] == ("weighted_f1", True) and PRIMARY["regression"] == ("mae", False)


# -- multilabel --------------------------------------------------------------------------------------

def test_multilabel_matches_sklearn_per_emotion():
    rng = np.random.default_rng(0)
    emotions = ("happy", "sad", "anger", "surprise", "disgust", "fear")
    gold = (rng.random((150, 6)) < [.5, .3, .2, .1, .15, .05]).astype(np.float32)
    gold[:7] = -1  # unlabelled rows are ignored
    pred = np.where(rng.random((150, 6)) < 0.75, gold > 0, rng.random((150, 6)) < 0.3)
    m = multilabel_metrics(gold, pred, emotions)
    accs, f1s = [], []
    for c, e in enumerate(emotions):
        g, p = gold[7:, c] > 0, pred[7:, c]
        assert m["per_class"][e]["accuracy"] == pytest.approx(accuracy_score(g, p))
        assert m["per_class"][e]["weighted_f1"] == pytest.approx(f1_score(g, p, average="weighted"))
        accs.append(accuracy_score(g, p))
        f1s.append(f1_score(g, p, average="weighted"))
    assert m["avg_accuracy"] == pytest.approx(np.mean(accs))
    assert m["avg_weighted_f1"] == pytest.approx(np.mean(f1s))


def test_multilabel_hand_worked():
    # one emotion, gold 1 1 0 0, pred 1 0 0 0: accuracy .75; F1(present) = 2/3 (2 gold), F1(absent) = .8 (2 gold)
    m = multilabel_metrics(np.array([[1], [1], [0], [0]]), np.array([[1], [0], [0], [0]]), ("happy",))
    assert m["per_class"]["happy"]["accuracy"] == pytest.approx(0.75)
    assert m["avg_weighted_f1"] == pytest.approx((2 * 2 / 3 + 2 * 0.8) / 4)


def test_is_better_direction():
    assert is_better("weighted_f1", 0.6, 0.5) and not is_better("weighted_f1", 0.5, 0.6)
    assert is_better("mae", 0.5, 0.6) and not is_better("mae", 0.6, 0.5)
    assert is_better("mae", 0.7, None) and not is_better("mae", float("nan"), 0.7)
