"""Standard task losses over padded dialogue batches, shared by the baselines and the paper heads.

Every loss takes logits [B, T, C] (regression [B, T, 1] or [B, T]) and the batch's label tensor with its
"no label" marker (categorical -1, multilabel -1, regression NaN), and averages over labelled positions
only, so padding and unlabelled utterances never change the loss. Losses are computed in float32 even
under bf16/fp16 autocast. A batch without any labelled position gives a zero that still has a graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .models.base import Batch, HeadOutput, TaskSpec


def _zero(logits: torch.Tensor) -> torch.Tensor:
    return logits.sum() * 0.0


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, weight: torch.Tensor | None = None,
                         label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean CE over positions with labels >= 0 (class-weighted mean when `weight` is given, like F.cross_entropy)."""
    keep = labels >= 0
    if not keep.any():
        return _zero(logits)
    return F.cross_entropy(logits[keep].float(), labels[keep], weight=weight, label_smoothing=label_smoothing)


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, *, gamma: float = 2.0, alpha: float | None = None,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over labelled positions of alpha * (1 - p_y)^gamma * CE (Lin et al. 2017; gamma=0 is plain CE)."""
    keep = labels >= 0
    if not keep.any():
        return _zero(logits)
    z, y = logits[keep].float(), labels[keep]
    logp_y = F.log_softmax(z, dim=-1).gather(1, y[:, None]).squeeze(1)
    ce = -logp_y if weight is None else -logp_y * weight[y]
    loss = (1.0 - logp_y.exp()).clamp(min=0.0).pow(gamma) * ce
    if alpha is not None:
        loss = alpha * loss
    return loss.mean()


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, *, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-label BCE-with-logits averaged over (position, class) cells whose target is not -1."""
    keep = targets >= 0
    if not keep.any():
        return _zero(logits)
    per_cell = F.binary_cross_entropy_with_logits(logits.float(), targets.clamp(min=0).float(), reduction="none",
                                                  pos_weight=pos_weight)
    return per_cell[keep].mean()


def masked_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over positions whose target is not NaN (MMSA / MMoLRE regression loss)."""
    pred = pred.squeeze(-1) if pred.dim() == target.dim() + 1 else pred
    keep = ~torch.isnan(target)
    if not keep.any():
        return _zero(pred)
    return F.l1_loss(pred[keep].float(), target[keep].float())


def masked_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over positions whose target is not NaN."""
    pred = pred.squeeze(-1) if pred.dim() == target.dim() + 1 else pred
    keep = ~torch.isnan(target)
    if not keep.any():
        return _zero(pred)
    return F.mse_loss(pred[keep].float(), target[keep].float())


def task_loss(task: TaskSpec, logits: torch.Tensor, labels: torch.Tensor, *, regression: str = "l1") -> torch.Tensor:
    """The standard loss of a task kind: categorical CE, multilabel BCE, regression L1 (or "mse")."""
    if task.kind == "categorical":
        return masked_cross_entropy(logits, labels)
    if task.kind == "multilabel":
        return masked_bce(logits, labels)
    return masked_l1(logits, labels) if regression == "l1" else masked_mse(logits, labels)


def standard_loss(tasks: list[TaskSpec], batch: Batch, out: HeadOutput, *,
                  weights: dict[str, float] | None = None, regression: str = "l1") -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of the standard loss of every task (optionally weighted), with each term for the log."""
    total, terms = None, {}
    for task in tasks:
        loss = task_loss(task, out.logits[task.name], batch.labels[task.name], regression=regression)
        w = (weights or {}).get(task.name, 1.0)
        total = w * loss if total is None else total + w * loss
        terms[f"loss_{task.name}"] = float(loss.detach())
    assert total is not None, "no tasks"
    return total, terms
