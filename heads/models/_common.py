"""Small helpers shared by the four published heads (MiSTER-E, SUMMER, MMoLRE, Ada2I).

Private to heads/models: the task check, masks, sinusoidal positions and a GRU runner that packs padded
dialogues. The losses live in heads/losses.py (one implementation of each, for the baselines and the paper
heads). Shapes are in the names: `x_btd` is [B, T, D].

Conventions (heads/models/base.py): `batch.mask` [B, T] is True at real utterances and the real ones come first
in every dialogue; categorical labels are -1 where there is no label; regression labels are NaN there;
multilabel targets are -1 there.
"""

from __future__ import annotations

import math

import torch
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


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
