"""Every loss of the heads, in one module: the standard task losses and the paper heads' own terms.

Every loss takes logits [B, T, C] (regression [B, T, 1] or [B, T]) and the batch's label tensor with its
"no label" marker (categorical -1, multilabel -1, regression NaN), and averages over labelled positions
only, so padding and unlabelled utterances never change the loss (MiSTER-E's `count_pads` parity option is
the one deliberate exception). Losses are computed in float32 even under bf16/fp16 autocast.

Unlabelled positions are excluded with torch.where, never with boolean indexing: shapes stay fixed, no loss
waits for the device to count the labels, and a batch without any labelled position gives a zero that still
has a graph. Shapes are in the names: `logits_btc` is [B, T, C] (any leading shape works).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .models.base import Batch, HeadOutput, TaskSpec


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the positions where mask is True (x and mask of the same shape); 0 if there are none."""
    total = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum()
    return total / mask.sum().clamp(min=1)


# -- categorical ---------------------------------------------------------------------------------------------


def _log_probs(logits_btc: torch.Tensor, labels_bt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p [..., C] in float32, NLL of the label [...]); the NLL is garbage where labels < 0: mask it."""
    logp_btc = F.log_softmax(logits_btc.float(), dim=-1)
    nll_bt = -logp_btc.gather(-1, labels_bt.clamp(min=0).long().unsqueeze(-1)).squeeze(-1)
    return logp_btc, nll_bt


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, *, weight: torch.Tensor | None = None,
                         label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean CE over positions with labels >= 0, as F.cross_entropy(ignore_index=-1) defines it.

    label_smoothing eps: per position (1 - eps) * NLL + eps * mean_c(-log p_c) (SUMMER's L_smooth).
    weight [C]: the class-weighted mean sum_i w_yi loss_i / sum_i w_yi, the smoothing term weighted by w_c."""
    valid_bt = labels >= 0
    logp_btc, nll_bt = _log_probs(logits, labels)
    eps = float(label_smoothing)
    if weight is None:
        per_bt = (1.0 - eps) * nll_bt - eps * logp_btc.mean(dim=-1) if eps else nll_bt
        return masked_mean(per_bt, valid_bt)
    w_c = weight.float()
    w_bt = w_c[labels.clamp(min=0).long()]
    per_bt = w_bt * nll_bt
    if eps:
        per_bt = (1.0 - eps) * per_bt - eps * (logp_btc * w_c).mean(dim=-1)
    zero = torch.zeros((), dtype=per_bt.dtype, device=per_bt.device)
    total = torch.where(valid_bt, per_bt, zero).sum()
    return total / torch.where(valid_bt, w_bt, zero).sum().clamp(min=1e-12)


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, *, gamma: float = 2.0, alpha: float | None = None,
               weight: torch.Tensor | None = None, count_pads: bool = False) -> torch.Tensor:
    """alpha * (1 - p_y)^gamma * CE (Lin et al. 2017; gamma=0 is plain CE), averaged over labelled positions.

    weight [C] scales each position's CE by w_y (a plain mean, not the weighted mean of masked_cross_entropy).
    count_pads: average over *all* positions, unlabelled ones and pads adding 0 to the sum, as MiSTER-E's
    `compute_loss` does with ignore_index + mean (its parity mode)."""
    valid_bt = labels >= 0
    _, nll_bt = _log_probs(logits, labels)
    nll_bt = torch.where(valid_bt, nll_bt, torch.zeros((), dtype=nll_bt.dtype, device=nll_bt.device))
    fl_bt = (1.0 - torch.exp(-nll_bt)) ** gamma * nll_bt
    if weight is not None:
        fl_bt = fl_bt * weight.float()[labels.clamp(min=0).long()]
    if alpha is not None:
        fl_bt = alpha * fl_bt
    if count_pads:
        return fl_bt.sum() / max(fl_bt.numel(), 1)
    return masked_mean(fl_bt, valid_bt)


def kl_div(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p || q) per position (summed over the class axis), p = softmax(p_logits / T), q likewise."""
    logp = F.log_softmax(p_logits.float() / temperature, dim=-1)
    logq = F.log_softmax(q_logits.float() / temperature, dim=-1)
    return (logp.exp() * (logp - logq)).sum(dim=-1)


def kd_loss(student_btc: torch.Tensor, teacher_btc: torch.Tensor, temperature: float,
            mask_bt: torch.Tensor) -> torch.Tensor:
    """Hinton KD: KL(softmax(z_T / T) || softmax(z_S / T)) * T^2, mean over masked-in positions (SUMMER)."""
    return masked_mean(kl_div(teacher_btc, student_btc, temperature), mask_bt) * temperature**2


def symmetric_kl(logits_list: list[torch.Tensor], mask_bt: torch.Tensor | None) -> torch.Tensor:
    """Mean over expert pairs (i, j) of KL(p_i || p_j) + KL(p_j || p_i), reduced like PyTorch 'batchmean' on
    [B, T, C]: summed over positions and classes, divided by B. With a mask, pads add nothing to the sum
    (MiSTER-E `compute_symmetric_kl`)."""
    n = len(logits_list)
    if n < 2:
        return logits_list[0].new_zeros(())
    B = logits_list[0].shape[0]
    total, pairs = 0.0, 0
    for i in range(n):
        for j in range(i + 1, n):
            kl_bt = kl_div(logits_list[i], logits_list[j]) + kl_div(logits_list[j], logits_list[i])
            if mask_bt is not None:
                kl_bt = torch.where(mask_bt, kl_bt, torch.zeros((), dtype=kl_bt.dtype, device=kl_bt.device))
            total = total + kl_bt.sum() / B
            pairs += 1
    return total / pairs


def supcon_loss(a_nd: torch.Tensor, t_nd: torch.Tensor, labels_n: torch.Tensor,
                temperature: float = 1.0) -> torch.Tensor:
    """Supervised contrastive loss over the 2N L2-normalised views {a_i} U {t_i} (labels duplicated).

    s_ij = r_i . r_j / tau; positives P(i) = {j != i : y_j = y_i}, which include the other modality's view of
    the same utterance; l_i = -(1/|P(i)|) sum_{p in P(i)} [s_ip - log sum_{k != i} exp(s_ik)];
    loss = mean_i l_i.
    (MiSTER-E `compute_supcon_loss`; an anchor without positives adds 0 but counts in the mean, as there.)
    """
    N = a_nd.shape[0]
    if N == 0:
        return a_nd.new_zeros(()) * a_nd.sum()
    r = F.normalize(torch.cat([a_nd, t_nd], dim=0).float(), dim=-1)  # [2N, D]
    y = torch.cat([labels_n, labels_n], dim=0)
    sim = r @ r.T / temperature
    not_self = ~torch.eye(2 * N, dtype=torch.bool, device=r.device)
    positives = (y[:, None] == y[None, :]) & not_self
    log_denominator = torch.logsumexp(sim.masked_fill(~not_self, float("-inf")), dim=1, keepdim=True)
    log_prob = sim - log_denominator
    n_pos = positives.sum(dim=1)
    sum_log_prob_pos = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(1)
    mean_log_prob_pos = sum_log_prob_pos / n_pos.clamp(min=1)
    return -mean_log_prob_pos.mean()


# -- multi-label and regression ------------------------------------------------------------------------------


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, *, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-label BCE-with-logits averaged over (position, class) cells whose target is not -1."""
    per_cell = F.binary_cross_entropy_with_logits(logits.float(), targets.clamp(min=0).float(), reduction="none",
                                                  pos_weight=pos_weight)
    return masked_mean(per_cell, targets >= 0)


def _regression_error(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred - target in float32 with 0 for NaN targets, mask of real targets); pred [..., 1] or [...]."""
    pred = pred.squeeze(-1) if pred.dim() == target.dim() + 1 else pred
    return pred.float() - torch.nan_to_num(target.float()), ~torch.isnan(target)


def masked_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over positions whose target is not NaN (MMSA / MMoLRE regression loss)."""
    diff, valid = _regression_error(pred, target)
    return masked_mean(diff.abs(), valid)


def masked_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over positions whose target is not NaN."""
    diff, valid = _regression_error(pred, target)
    return masked_mean(diff**2, valid)


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
