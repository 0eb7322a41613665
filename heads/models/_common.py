"""Small helpers shared by the four published heads (MiSTER-E, SUMMER, MMoLRE, Ada2I).

Private to heads/models: masks, masked losses written out in full (so each can be checked by hand), sinusoidal
positions and a GRU runner that packs padded dialogues. Shapes are in the names: `x_btd` is [B, T, D].

Conventions (heads/models/base.py): `batch.mask` [B, T] is True at real utterances and the real ones come first
in every dialogue; categorical labels are -1 where there is no label; regression labels are NaN there;
multilabel targets are -1 there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import TaskSpec

# -- tasks and masks ---------------------------------------------------------------------------------------


def primary_categorical(tasks: list[TaskSpec], head: str) -> TaskSpec:
    """The one task of a head that predicts a single categorical label space (MiSTER-E, SUMMER, Ada2I).

    The trainer reads logits for every task of the run, so extra tasks are refused here with the fix."""
    if not tasks:
        raise ValueError(f"head {head!r} needs a task")
    if tasks[0].kind != "categorical":
        raise ValueError(
            f"head {head!r} predicts a categorical label space; got {tasks[0].name!r} of kind "
            f"{tasks[0].kind!r}. Choose a categorical one with --task <name>."
        )
    if len(tasks) > 1:
        raise ValueError(
            f"head {head!r} predicts one categorical label space; got {[t.name for t in tasks]}. "
            f"Run it with --task {tasks[0].name} (mmolre and the baselines take several tasks)."
        )
    return tasks[0]


def key_padding(mask_bt: torch.Tensor) -> torch.Tensor:
    """key_padding_mask for attention (True = ignore) that never hides every key of a row.

    A row with no real position (an empty dialogue) keeps its first key, so softmax stays finite; its outputs are
    pads and never read.
    """
    pad_bt = ~mask_bt
    all_pad_b = pad_bt.all(dim=-1)
    if all_pad_b.any():
        pad_bt = pad_bt.clone()
        pad_bt[all_pad_b, 0] = False
    return pad_bt


def zero_pads(x_bt_: torch.Tensor, mask_bt: torch.Tensor) -> torch.Tensor:
    """x with every padded position set to 0 (torch.where, so NaN/inf at pads cannot leak)."""
    m = mask_bt.reshape(mask_bt.shape + (1,) * (x_bt_.dim() - mask_bt.dim()))
    return torch.where(m, x_bt_, torch.zeros((), dtype=x_bt_.dtype, device=x_bt_.device))


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over the positions where mask is True (x and mask of the same shape); 0 if there are none."""
    n = mask.sum()
    total = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum()
    return total / n.clamp(min=1)


def lengths_of(mask_bt: torch.Tensor) -> torch.Tensor:
    return mask_bt.sum(dim=-1)


def run_gru(gru: nn.GRU, x_btd: torch.Tensor, mask_bt: torch.Tensor | None) -> torch.Tensor:
    """Run a batch_first GRU. With a mask the dialogues are packed, so pads never enter the recurrence (clean);
    without one the GRU runs over the padded sequence as the original codes do (parity)."""
    if mask_bt is None:
        return gru(x_btd)[0]
    T = x_btd.shape[1]
    lengths_b = lengths_of(mask_bt).clamp(min=1).cpu()
    packed = nn.utils.rnn.pack_padded_sequence(x_btd, lengths_b, batch_first=True, enforce_sorted=False)
    out, _ = gru(packed)
    return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)[0]


def sinusoidal_positions(T: int, d: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[T, d] sinusoidal position table (Vaswani et al.; SDT's PositionalEncoding)."""
    pos_t1 = torch.arange(T, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe_td = torch.zeros(T, d, device=device, dtype=torch.float32)
    pe_td[:, 0::2] = torch.sin(pos_t1 * div)
    pe_td[:, 1::2] = torch.cos(pos_t1 * div)[:, : d // 2]
    return pe_td.to(dtype)


# -- classification losses ------------------------------------------------------------------------------


def cross_entropy_per_position(logits_bc: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """CE at every position (any leading shape), 0 where the label is < 0."""
    valid = labels_b >= 0
    logp = F.log_softmax(logits_bc.float(), dim=-1)
    nll = -logp.gather(-1, labels_b.clamp(min=0).long().unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, nll, torch.zeros((), dtype=nll.dtype, device=nll.device))


def cross_entropy(logits_btc: torch.Tensor, labels_bt: torch.Tensor) -> torch.Tensor:
    """Mean CE over labelled positions."""
    return masked_mean(cross_entropy_per_position(logits_btc, labels_bt), labels_bt >= 0)


def focal_loss(logits_btc: torch.Tensor, labels_bt: torch.Tensor, gamma: float, count_pads: bool = False):
    """FL = (1 - p_y)^gamma * CE, averaged over labelled positions; with count_pads over *all* positions
    (pads and unlabelled ones add 0 to the sum), as MiSTER-E's `compute_loss` does with ignore_index + mean."""
    ce = cross_entropy_per_position(logits_btc, labels_bt)
    fl = (1.0 - torch.exp(-ce)) ** gamma * ce
    if count_pads:
        return fl.sum() / max(fl.numel(), 1)
    return masked_mean(fl, labels_bt >= 0)


def label_smoothed_ce(logits_btc: torch.Tensor, labels_bt: torch.Tensor, eps: float) -> torch.Tensor:
    """(1 - eps) * NLL + eps * mean_c(-log p_c), over labelled positions (PyTorch's label_smoothing definition)."""
    valid = labels_bt >= 0
    logp = F.log_softmax(logits_btc.float(), dim=-1)
    nll = -logp.gather(-1, labels_bt.clamp(min=0).long().unsqueeze(-1)).squeeze(-1)
    smooth = -logp.mean(dim=-1)
    return masked_mean((1.0 - eps) * nll + eps * smooth, valid)


def kl_div(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p || q) per position (summed over the class axis), p = softmax(p_logits / T), q likewise."""
    logp = F.log_softmax(p_logits.float() / temperature, dim=-1)
    logq = F.log_softmax(q_logits.float() / temperature, dim=-1)
    return (logp.exp() * (logp - logq)).sum(dim=-1)


def kd_loss(student_btc, teacher_btc, temperature: float, mask_bt: torch.Tensor) -> torch.Tensor:
    """Hinton KD: KL(softmax(z_T / T) || softmax(z_S / T)) * T^2, mean over masked-in positions."""
    return masked_mean(kl_div(teacher_btc, student_btc, temperature), mask_bt) * temperature**2


def symmetric_kl(logits_list: list[torch.Tensor], mask_bt: torch.Tensor | None) -> torch.Tensor:
    """Mean over expert pairs (i, j) of KL(p_i || p_j) + KL(p_j || p_i), reduced like PyTorch 'batchmean' on
    [B, T, C]: summed over positions and classes, divided by B. With a mask, pads add nothing to the sum."""
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


def supcon_loss(a_nd: torch.Tensor, t_nd: torch.Tensor, labels_n: torch.Tensor, temperature: float = 1.0):
    """Supervised contrastive loss over the 2N L2-normalised views {a_i} U {t_i} (labels duplicated).

    s_ij = r_i . r_j / tau; positives P(i) = {j != i : y_j = y_i}, which include the other modality's view of the
    same utterance; l_i = -(1/|P(i)|) sum_{p in P(i)} [s_ip - log sum_{k != i} exp(s_ik)]; loss = mean_i l_i.
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
    mean_log_prob_pos = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(1) / n_pos.clamp(min=1)
    return -mean_log_prob_pos.mean()


# -- regression and multi-label losses --------------------------------------------------------------------


def mae_loss(pred_bt: torch.Tensor, target_bt: torch.Tensor) -> torch.Tensor:
    """Mean |y - y_hat| over positions whose target is not NaN."""
    valid = ~torch.isnan(target_bt)
    diff = (pred_bt.float() - torch.nan_to_num(target_bt.float())).abs()
    return masked_mean(diff, valid)


def bce_loss(logits_btc: torch.Tensor, target_btc: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits averaged over the (position, class) entries whose target is 0 or 1 (-1 = no label)."""
    valid = target_btc >= 0
    per = F.binary_cross_entropy_with_logits(logits_btc.float(), target_btc.clamp(min=0).float(), reduction="none")
    return masked_mean(per, valid)


def task_loss(task: TaskSpec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE (categorical), MAE (regression, logits [..., 1]) or BCE (multilabel)."""
    if task.kind == "categorical":
        return cross_entropy(logits, labels)
    if task.kind == "regression":
        return mae_loss(logits[..., 0], labels)
    return bce_loss(logits, labels)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
