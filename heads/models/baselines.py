"""Baselines every paper head should beat: an utterance MLP, late fusion, and a dialogue BiGRU.

All three read whichever modality roles the run provides, predict every task of the run (categorical,
multilabel, regression) from one shared representation, and train with the standard task losses of
heads/losses.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..losses import standard_loss
from ..registry import register_head
from .base import Batch, Head, HeadOutput, TaskSpec


class TaskHeads(nn.Module):
    """One linear output layer per task: hidden [B, T, H] -> logits[task] [B, T, out_dim]."""

    def __init__(self, hidden: int, tasks: list[TaskSpec]):
        super().__init__()
        self.out = nn.ModuleDict({t.name: nn.Linear(hidden, t.out_dim) for t in tasks})

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: layer(h) for name, layer in self.out.items()}


def mlp(d_in: int, hidden: int, layers: int, dropout: float) -> nn.Sequential:
    """`layers` blocks of Linear -> GELU -> Dropout, d_in -> hidden."""
    blocks: list[nn.Module] = []
    for i in range(layers):
        blocks += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.GELU(), nn.Dropout(dropout)]
    return nn.Sequential(*blocks)


def concat_roles(batch: Batch, roles: list[str]) -> torch.Tensor:
    """[B, T, sum D_role] in a fixed role order (missing-modality rows are already zeros)."""
    return torch.cat([batch.feats[r] for r in roles], dim=-1)


class _StandardLossHead(Head):
    defaults = {  # [default] merc's baselines: AdamW, lr 1e-3, weight decay 1e-2, clipping 1.0
        "optim.name": "adamw", "optim.lr": 1e-3, "optim.weight_decay": 1e-2, "optim.grad_clip": 1.0,
        "train.batch_size": 64,  # [default] utterances per batch (the utterance baselines)
    }
    """Shared bits: the role order and the standard multi-task loss."""

    def __init__(self, cfg, dims: dict[str, int], tasks: list[TaskSpec]):
        super().__init__(cfg, dims, tasks)
        self.roles = sorted(dims, key="tav".index)

    def loss(self, batch: Batch, out: HeadOutput, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        return standard_loss(self.tasks, batch, out, regression=self.cfg.regression_loss)



# ---------------------------------------------------------------------------------------------------

@dataclass
class MLPConfig:
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.3
    input_dropout: float = 0.1
    regression_loss: str = "l1"  # l1 | mse


@register_head
class UtteranceMLP(_StandardLossHead):
    """Context-free utterance classifier on the concatenated modalities: the floor for context heads."""

    name = "mlp"
    config_cls = MLPConfig
    uses_context = False
    description = "utterance MLP on concatenated modalities (no dialogue context)"

    def __init__(self, cfg: MLPConfig, dims: dict[str, int], tasks: list[TaskSpec]):
        super().__init__(cfg, dims, tasks)
        self.drop_in = nn.Dropout(cfg.input_dropout)
        self.body = mlp(sum(dims.values()), cfg.hidden, cfg.layers, cfg.dropout)
        self.heads = TaskHeads(cfg.hidden, tasks)

    def forward(self, batch: Batch) -> HeadOutput:
        x = self.drop_in(concat_roles(batch, self.roles))  # [B, T, sum D]
        return HeadOutput(self.heads(self.body(x)))


# ---------------------------------------------------------------------------------------------------

@dataclass
class LateFusionConfig:
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.3
    input_dropout: float = 0.1
    regression_loss: str = "l1"


@register_head
class LateFusion(_StandardLossHead):
    """One MLP + output layer per modality; logits averaged over the modalities present at each utterance."""

    name = "late-fusion"
    config_cls = LateFusionConfig
    uses_context = False
    description = "per-modality utterance MLPs, logits averaged over available modalities"

    def __init__(self, cfg: LateFusionConfig, dims: dict[str, int], tasks: list[TaskSpec]):
        super().__init__(cfg, dims, tasks)
        self.drop_in = nn.Dropout(cfg.input_dropout)
        self.bodies = nn.ModuleDict({r: mlp(dims[r], cfg.hidden, cfg.layers, cfg.dropout) for r in self.roles})
        self.heads = nn.ModuleDict({r: TaskHeads(cfg.hidden, tasks) for r in self.roles})

    def forward(self, batch: Batch) -> HeadOutput:
        per_role = {r: self.heads[r](self.bodies[r](self.drop_in(batch.feats[r]))) for r in self.roles}
        # weight 1 for each modality present at an utterance; where none is, fall back to a plain mean
        present = torch.stack([batch.feat_mask.get(r, batch.mask) for r in self.roles], dim=-1).float()  # [B, T, M]
        present = torch.where(present.sum(-1, keepdim=True) > 0, present, torch.ones_like(present))
        w = present / present.sum(-1, keepdim=True)  # [B, T, M]
        logits = {}
        for t in self.tasks:
            stacked = torch.stack([per_role[r][t.name] for r in self.roles], dim=-1)  # [B, T, C, M]
            logits[t.name] = (stacked * w.unsqueeze(2).to(stacked.dtype)).sum(-1)
        aux = {f"logits_{r}_{t.name}": per_role[r][t.name] for r in self.roles for t in self.tasks}
        return HeadOutput(logits, aux)


# ---------------------------------------------------------------------------------------------------

@dataclass
class DialogueGRUConfig:
    hidden: int = 256  # per direction
    layers: int = 1
    dropout: float = 0.3
    input_dropout: float = 0.1
    speaker_embedding: bool = False  # add a learned embedding of the speaker index (order of first appearance)
    max_speakers: int = 16
    regression_loss: str = "l1"


@register_head
class DialogueGRU(_StandardLossHead):
    """Bidirectional GRU over the utterances of a dialogue; packed, so padding never reaches the recurrence."""

    name = "dialogue-gru"
    config_cls = DialogueGRUConfig
    uses_context = True
    description = "bidirectional GRU over the dialogue's utterances (concatenated modalities)"
    defaults = {  # [default] merc's baselines: AdamW, lr 1e-3, weight decay 1e-2, clipping 1.0; 16 dialogues a batch
        "optim.name": "adamw", "optim.lr": 1e-3, "optim.weight_decay": 1e-2, "optim.grad_clip": 1.0,
    }

    def __init__(self, cfg: DialogueGRUConfig, dims: dict[str, int], tasks: list[TaskSpec]):
        super().__init__(cfg, dims, tasks)
        self.drop_in = nn.Dropout(cfg.input_dropout)
        self.proj = nn.Sequential(nn.Linear(sum(dims.values()), cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout))
        self.speaker = nn.Embedding(cfg.max_speakers, cfg.hidden) if cfg.speaker_embedding else None
        self.gru = nn.GRU(cfg.hidden, cfg.hidden, num_layers=cfg.layers, batch_first=True, bidirectional=True,
                          dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        self.drop_out = nn.Dropout(cfg.dropout)
        self.heads = TaskHeads(2 * cfg.hidden, tasks)

    def forward(self, batch: Batch) -> HeadOutput:
        x = self.proj(self.drop_in(concat_roles(batch, self.roles)))  # [B, T, H]
        if self.speaker is not None:
            x = x + self.speaker(batch.speakers.clamp(max=self.cfg.max_speakers - 1))
        lengths = batch.mask.sum(1).cpu()  # pack_padded_sequence wants lengths on the CPU
        # the recurrence runs in float32 under autocast (GRU has no bf16 CPU kernel)
        packed = pack_padded_sequence(x.float(), lengths.clamp(min=1), batch_first=True, enforce_sorted=False)
        h_packed, _ = self.gru(packed)
        h, _ = pad_packed_sequence(h_packed, batch_first=True, total_length=x.shape[1])  # [B, T, 2H]
        return HeadOutput(self.heads(self.drop_out(h)))
