"""Evaluation metrics, each named for exactly what it computes.

Pure numpy (no scikit-learn import on the training path); tests/test_metrics.py checks every number
against scikit-learn and against hand-worked examples.

Names used in metrics.json:
- categorical: `accuracy`; `weighted_f1` (per-class F1 averaged with weights = gold support, sklearn
  average="weighted"); `macro_f1` (unweighted mean over the classes that occur in gold or predictions,
  sklearn average="macro" with labels=None); `balanced_accuracy` (mean recall over classes present in
  gold; the "UA" of speech emotion papers); `per_class` {class: precision, recall, f1, support};
  `confusion_matrix` (rows = gold, columns = predicted, in label-space order). Undefined ratios are 0
  (sklearn zero_division=0).
- categorical metrics also score the classification tasks derived from a regression sentiment X (`X_has0`,
  `X_non0`, `X7`, heads/data.py `derived_tasks`), whose classes follow the regression rules below.
- regression (MOSI/MOSEI sentiment in [-3, 3], MMSA `metricsTop.py` conventions):
  `acc2_has0` / `f1_has0` (negative < 0 vs non-negative >= 0, all segments; F1 weighted over the two
  classes), `acc2_non0` / `f1_non0` (negative < 0 vs positive > 0 on segments whose gold is non-zero;
  a prediction of exactly 0 counts as negative), `acc5` / `acc7` (clip to [-2, 2] / [-3, 3], round with
  numpy's half-to-even rounding, compare), `mae`, `pearson`; `n_non0` counts the non-zero gold segments.
- multilabel (MOSEI emotions, "present" = 1): `per_class` {emotion: accuracy, weighted_f1} of the binary
  present/absent decision, `avg_accuracy`, `avg_weighted_f1` (unweighted means over emotions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Which metric picks the best checkpoint on dev, per task kind, and whether higher is better.
PRIMARY = {"categorical": ("weighted_f1", True), "regression": ("mae", False), "multilabel": ("avg_weighted_f1", True)}
HIGHER_IS_BETTER = {"accuracy": True, "weighted_f1": True, "macro_f1": True, "balanced_accuracy": True,
                    "acc2_has0": True, "f1_has0": True, "acc2_non0": True, "f1_non0": True, "acc5": True,
                    "acc7": True, "mae": False, "loss": False, "pearson": True, "avg_accuracy": True, "avg_weighted_f1": True}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(num.shape, dtype=np.float64), where=den > 0)


def confusion_matrix(gold: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """[C, C] counts, rows = gold class, columns = predicted class."""
    gold, pred = np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    return np.bincount(gold * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def categorical_metrics(gold: np.ndarray, pred: np.ndarray, classes: Sequence[str]) -> dict:
    """Metrics of single-label predictions; `gold` and `pred` are class indices of labelled utterances."""
    n_classes = len(classes)
    cm = confusion_matrix(gold, pred, n_classes)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)  # gold count per class
    predicted = cm.sum(axis=0).astype(np.float64)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * tp, support + predicted)  # = 2PR / (P + R), and 0 where undefined
    n = int(cm.sum())
    occurring = (support + predicted) > 0
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "weighted_f1": float((f1 * support).sum() / n) if n else float("nan"),
        "macro_f1": float(f1[occurring].mean()) if occurring.any() else float("nan"),
        "balanced_accuracy": float(recall[support > 0].mean()) if n else float("nan"),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                          "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion_matrix": cm.tolist(),
    }


def _binary(gold: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Accuracy and weighted F1 of a two-class decision given as booleans."""
    m = categorical_metrics(np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64), ("0", "1"))
    return m["accuracy"], m["weighted_f1"]


def regression_metrics(gold: np.ndarray, pred: np.ndarray) -> dict:
    """MOSI/MOSEI sentiment metrics of labelled segments (gold and pred are floats, NaNs already removed)."""
    gold, pred = np.asarray(gold, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    n = len(gold)
    if n == 0:
        return {"n": 0, "n_non0": 0, **{k: float("nan") for k in ("acc2_has0", "f1_has0", "acc2_non0", "f1_non0",
                                                                   "acc5", "acc7", "mae", "pearson")}}
    acc2_has0, f1_has0 = _binary(gold >= 0, pred >= 0)
    non0 = gold != 0
    acc2_non0, f1_non0 = _binary(gold[non0] > 0, pred[non0] > 0) if non0.any() else (float("nan"),) * 2
    if gold.std() > 0 and pred.std() > 0:
        pearson = float(np.corrcoef(pred, gold)[0, 1])
    else:
        pearson = float("nan")  # undefined for a constant prediction or target
    return {
        "n": n,
        "acc2_has0": acc2_has0, "f1_has0": f1_has0,
        "acc2_non0": acc2_non0, "f1_non0": f1_non0, "n_non0": int(non0.sum()),
        "acc5": float(np.mean(np.round(np.clip(pred, -2, 2)) == np.round(np.clip(gold, -2, 2)))),
        "acc7": float(np.mean(np.round(np.clip(pred, -3, 3)) == np.round(np.clip(gold, -3, 3)))),
        "mae": float(np.mean(np.abs(pred - gold))),
        "pearson": pearson,
    }


def multilabel_metrics(gold: np.ndarray, pred: np.ndarray, classes: Sequence[str]) -> dict:
    """Per-emotion binary accuracy and weighted F1; gold [N, C] in {0, 1} with -1 = unknown, pred [N, C] bool."""
    gold, pred = np.asarray(gold), np.asarray(pred).astype(bool)
    per_class = {}
    for c, name in enumerate(classes):
        known = gold[:, c] >= 0
        acc, wf1 = _binary(gold[known, c] > 0, pred[known, c]) if known.any() else (float("nan"),) * 2
        per_class[name] = {"accuracy": acc, "weighted_f1": wf1, "positives": int((gold[known, c] > 0).sum()),
                           "n": int(known.sum())}
    accs = [v["accuracy"] for v in per_class.values()]
    wf1s = [v["weighted_f1"] for v in per_class.values()]
    return {"n": int(len(gold)), "avg_accuracy": float(np.mean(accs)) if accs else float("nan"),
            "avg_weighted_f1": float(np.mean(wf1s)) if wf1s else float("nan"), "per_class": per_class}


def task_metrics(kind: str, gold: np.ndarray, pred: np.ndarray, classes: Sequence[str] = ()) -> dict:
    if kind == "categorical":
        return categorical_metrics(gold, pred, classes)
    if kind == "regression":
        return regression_metrics(gold, pred)
    if kind == "multilabel":
        return multilabel_metrics(gold, pred, classes)
    raise ValueError(f"unknown task kind {kind!r}")


def is_better(metric: str, new: float, old: float | None) -> bool:
    """Whether `new` improves on `old` for this metric (NaN never improves)."""
    if new != new:  # NaN
        return False
    if old is None or old != old:
        return True
    return new > old if HIGHER_IS_BETTER.get(metric, True) else new < old
