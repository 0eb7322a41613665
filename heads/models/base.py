"""The contract between the trainer and every head: what a batch holds, what a head returns.

One trainer loop drives all heads (heads/trainer.py), so each head only says how to compute its
outputs and its loss. Heads that need more than forward + loss (SUMMER's teacher stage, Ada2I's
gradient modulation) use the optional hooks at the bottom of `Head`; a head whose paper has figures of
its internals (gate weights, disparity ratios, expert usage) reduces what they need from its outputs in
`figure_stats`, so that plotting reads numbers the run recorded and never re-runs the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn

from merc.extract.store.layout import FRAMES, ROLES, UTTERANCE

TaskKind = Literal["categorical", "multilabel", "regression"]
# Modality roles (ROLES, from the store's vocabulary) a feature set can play. `--features t=minilm,a=egemaps`
# names them; a bare feature-set name takes the role of the modality the store recorded for it.
__all__ = ["FRAMES", "ROLES", "UTTERANCE", "Batch", "Head", "HeadOutput", "TaskSpec"]


@dataclass(frozen=True)
class TaskSpec:
    """One prediction target, read from a dataset label space."""

    name: str  # the label space name, e.g. "emotion", "sentiment", "emotions"
    kind: TaskKind
    classes: tuple[str, ...] = ()  # empty for regression

    @property
    def out_dim(self) -> int:
        return 1 if self.kind == "regression" else len(self.classes)


@dataclass
class Batch:
    """B dialogues padded to T utterances (a MOSI/MOSEI "dialogue" is a video of segments).

    feats[role]:  [B, T, D_role] float     utterance-level features, zeros at pads
    mask:         [B, T] bool              True at real utterances
    feat_mask[role]: [B, T] bool           True where that modality's features exist (False where
                                           extraction failed for the utterance, or at pads)
    speakers:     [B, T] long              speaker index by order of first appearance in the dialogue; 0 at pads
    labels[task]: categorical [B, T] long, -1 = no label / pad
                  regression  [B, T] float, NaN = no label / pad
                  multilabel  [B, T, C] float in {0, 1}, -1 = no label / pad
    frames[role]: ([B, T, L, D] float, [B, T, L] bool) token/frame sequences, only for heads that ask
    """

    feats: dict[str, torch.Tensor]
    mask: torch.Tensor
    speakers: torch.Tensor
    labels: dict[str, torch.Tensor]
    feat_mask: dict[str, torch.Tensor] = field(default_factory=dict)
    dialogue_ids: list[str] = field(default_factory=list)
    frames: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def mv(x: torch.Tensor) -> torch.Tensor:
            return x.to(device, non_blocking=non_blocking)

        return Batch(
            feats={k: mv(v) for k, v in self.feats.items()},
            mask=mv(self.mask),
            speakers=mv(self.speakers),
            labels={k: mv(v) for k, v in self.labels.items()},
            feat_mask={k: mv(v) for k, v in self.feat_mask.items()},
            dialogue_ids=self.dialogue_ids,
            frames={k: (mv(x), mv(m)) for k, (x, m) in self.frames.items()},
        )


@dataclass
class HeadOutput:
    """logits[task]: [B, T, C] (regression: [B, T, 1]); aux: whatever the head's loss needs."""

    logits: dict[str, torch.Tensor]
    aux: dict[str, torch.Tensor] = field(default_factory=dict)


class Head(nn.Module):
    """Base class of every head. Subclasses set the class attributes and implement forward + loss.

    Constructed as `HeadClass(cfg, dims, tasks)` where `dims` maps role -> input width and `tasks`
    lists the targets (the first is the primary task used for model selection).
    """

    name: ClassVar[str] = ""
    config_cls: ClassVar[type] = object
    levels: ClassVar[tuple[str, ...]] = (UTTERANCE,)  # FRAMES for token/frame-sequence heads (store vocabulary)
    required_roles: ClassVar[tuple[str, ...]] = ()  # e.g. ("t", "a") for MiSTER-E
    optional_roles: ClassVar[tuple[str, ...]] = ROLES
    uses_context: ClassVar[bool] = True  # False for utterance-level heads (MMoLRE, the MLP baseline)
    description: ClassVar[str] = ""
    # The paper's optimiser and schedule as dotted config keys ("optim.lr", "train.epochs", ...), each with its source
    # in a comment: the one place these defaults live (heads/config.py layers presets and --set on top). The batch
    # unit follows `uses_context` unless declared.
    defaults: ClassVar[dict[str, object]] = {}

    def __init__(self, cfg, dims: dict[str, int], tasks: list[TaskSpec]):
        super().__init__()
        self.cfg = cfg
        self.dims = dict(dims)
        self.tasks = list(tasks)

    def forward(self, batch: Batch) -> HeadOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, batch: Batch, out: HeadOutput, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and its named terms (floats, for the log)."""
        raise NotImplementedError  # pragma: no cover - abstract

    # -- optional hooks ---------------------------------------------------------------------------------
    def stages(self) -> list[str]:
        """Training stages run in order by the trainer (SUMMER: ["teacher", "student"])."""
        return ["main"]

    def set_stage(self, stage: str) -> None:
        """Called by the trainer before each stage; freeze/unfreeze parts here."""

    def after_backward(self, batch: Batch, out: HeadOutput, epoch: int) -> None:
        """Called after loss.backward() and before the optimiser step (Ada2I gradient modulation)."""

    # -- figures (merc-heads plot) -------------------------------------------------------------------------
    def figure_stats(self, batch: Batch, out: HeadOutput) -> dict[str, torch.Tensor]:
        """Small sums over one batch of what the head's own figures need (MiSTER-E: gate weight per gold class
        and expert; a count goes with every sum), read from `out` of a forward pass that ran anyway.

        The trainer adds them up over each training epoch (log.jsonl's `figures`) and over each split of the
        final evaluation (figures.json): every value must be additive over batches, a fixed-shape tensor
        independent of the batch size, so the files stay small whatever the data. Called under no_grad; it must
        only read (no random numbers, no state), so recording never changes what a run computes."""
        return {}

    def figure_axes(self) -> dict[str, list[str]]:
        """Names along the axes of `figure_stats`' arrays (experts, classes, modalities...), for the plots."""
        return {}

