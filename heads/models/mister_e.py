"""MiSTER-E: Mixture of Speech-Text Experts for Recognition of Emotions (Dutta, Balaji, Ganapathy; CSL 2026).

Spec: heads.md section 1; code: iiscleap/MiSTER-E (`hierarchical_moe.py`, `train_moe.py`). Speech (role "a") and
text (role "t") utterance features of a dialogue, no speaker identity. Three experts each emit logits per
utterance, and a gate mixes the logits:

    speech expert  z_s : TIN (Conv1d k=1,3,5 over utterances, summed, ReLU) -> 3-layer BiGRU -> + Linear skip
    text expert    z_t : same, on the text features
    fusion expert  z_f : 4 co-attention layers (cross-attention both ways, then self-attention per modality)
                         on the raw features, + Linear skips -> LayerNorm -> MLP
    gate               : g = softmax(MLP([z_s; z_t; z_f]) / 2), y = sum_e g_e z_e (per utterance)

Loss: focal (gamma 3) on y and on each expert + 2 * SupCon(A_f, T_f) + 0.1 * symmetric KL between experts.

`parity=True` reproduces the code: no padding masks (pads enter the convolutions, GRUs and attention), pads
counted in the loss denominators and as their own SupCon class. The default (clean) zeroes pads before the
convolutions, packs the GRU input, passes key_padding_mask to attention and masks pads out of every loss, so
pads cannot change a real utterance's output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import focal_loss, supcon_loss, symmetric_kl
from ..registry import register_head
from ._common import key_padding, primary_categorical, run_gru, zero_pads
from .base import Batch, Head, HeadOutput, TaskSpec

EXPERTS = ("speech", "text", "fusion")


@dataclass
class MisterEConfig:
    hidden: int = 1024  # TIN output width and fusion-expert width (code: 1024)
    gru_hidden: int = 512  # per direction; the BiGRU and the expert features are 2x this (code: 512)
    gru_layers: int = 3
    fusion_layers: int = 4
    attn_dim: int = 120  # q/k/v width of every co-attention (3 heads x 40)
    attn_heads: int = 3
    attn_dropout: float = 0.1  # inside MultiheadAttention
    dropout: float = 0.5  # on each attention sub-layer's back-projection
    gate_hidden: int = 10
    gate_temperature: float = 2.0
    gating: str = "soft"  # soft: learned gate | mean: uniform average of the experts | top1: hard argmax (straight-through)
    use_speech_expert: bool = True
    use_text_expert: bool = True
    use_fusion_expert: bool = True
    focal_gamma: float = 3.0
    supcon_weight: float = 2.0  # beta
    supcon_temperature: float = 1.0  # tau
    kl_weight: float = 0.1  # lambda
    parity: bool = False  # True: no padding masks anywhere and pads counted in the losses, as the released code


# -- the context experts (code: GRUModel) ----------------------------------------------------------------


class ContextExpert(nn.Module):
    """One modality's expert: Temporal Inception Network + BiGRU + skip -> (H_m, z_m)."""

    def __init__(self, d_in: int, cfg: MisterEConfig, n_classes: int):
        super().__init__()
        self.tin = nn.ModuleList([nn.Conv1d(d_in, cfg.hidden, k, padding=k // 2) for k in (1, 3, 5)])
        self.gru = nn.GRU(cfg.hidden, cfg.gru_hidden, num_layers=cfg.gru_layers, bidirectional=True, batch_first=True)
        self.skip = nn.Linear(d_in, 2 * cfg.gru_hidden)
        self.out = nn.Linear(2 * cfg.gru_hidden, n_classes)

    def forward(self, x_btd: torch.Tensor, mask_bt: torch.Tensor | None):
        if mask_bt is not None:  # "same" convolutions then see zeros past the end, as for an unpadded dialogue
            x_btd = zero_pads(x_btd, mask_bt)
        x_bdt = x_btd.transpose(1, 2)
        tin_bth = sum(F.relu(conv(x_bdt)) for conv in self.tin).transpose(1, 2)
        h_btg = run_gru(self.gru, tin_bth, mask_bt) + self.skip(x_btd)
        return h_btg, self.out(h_btg)


# -- the cross-modal expert (code: CrossAttentionModel_s, FusionModel) --------------------------------------


class AttentionSublayer(nn.Module):
    """q/k/v Linear(F->A) -> MultiheadAttention(A) -> Linear(A->F) -> Dropout -> + residual -> LayerNorm.

    As in the code, q/k/v are projected twice (the Linear layers, then MultiheadAttention's own in-projection)."""

    def __init__(self, cfg: MisterEConfig):
        super().__init__()
        F_, A = cfg.hidden, cfg.attn_dim
        self.q, self.k, self.v = nn.Linear(F_, A), nn.Linear(F_, A), nn.Linear(F_, A)
        self.mha = nn.MultiheadAttention(A, cfg.attn_heads, dropout=cfg.attn_dropout, batch_first=True)
        self.back = nn.Linear(A, F_)
        self.drop = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(F_, eps=1e-6)

    def forward(self, x_q_btf, x_kv_btf, pad_bt: torch.Tensor | None):
        ctx_bta = self.mha(self.q(x_q_btf), self.k(x_kv_btf), self.v(x_kv_btf), key_padding_mask=pad_bt,
                           need_weights=False)[0]
        return self.norm(x_q_btf + self.drop(self.back(ctx_bta)))


class CoAttentionLayer(nn.Module):
    """T_c = Att(q=T, kv=A), A_c = Att(q=A, kv=T), then self-attention on each."""

    def __init__(self, cfg: MisterEConfig):
        super().__init__()
        self.cross_t, self.cross_a = AttentionSublayer(cfg), AttentionSublayer(cfg)
        self.self_t, self.self_a = AttentionSublayer(cfg), AttentionSublayer(cfg)

    def forward(self, a_btf, t_btf, pad_bt):
        t_c, a_c = self.cross_t(t_btf, a_btf, pad_bt), self.cross_a(a_btf, t_btf, pad_bt)
        return self.self_a(a_c, a_c, pad_bt), self.self_t(t_c, t_c, pad_bt)


class FusionExpert(nn.Module):
    """Co-attention stack over the raw features -> (A_f, T_f, z_f)."""

    def __init__(self, d_a: int, d_t: int, cfg: MisterEConfig, n_classes: int):
        super().__init__()
        F_ = cfg.hidden
        self.in_a, self.in_t = nn.Linear(d_a, F_), nn.Linear(d_t, F_)
        self.layers = nn.ModuleList([CoAttentionLayer(cfg) for _ in range(cfg.fusion_layers)])
        self.skip_a, self.skip_t = nn.Linear(d_a, F_), nn.Linear(d_t, F_)
        self.norm = nn.LayerNorm(2 * F_, eps=1e-6)
        self.fc = nn.Linear(2 * F_, F_)
        self.out = nn.Linear(F_, n_classes)

    def forward(self, x_a_btd, x_t_btd, pad_bt: torch.Tensor | None):
        a_btf, t_btf = self.in_a(x_a_btd), self.in_t(x_t_btd)
        for layer in self.layers:
            a_btf, t_btf = layer(a_btf, t_btf, pad_bt)
        a_f = a_btf + self.skip_a(x_a_btd)
        t_f = t_btf + self.skip_t(x_t_btd)
        z_f = self.out(F.relu(self.fc(self.norm(torch.cat([t_f, a_f], dim=-1)))))
        return a_f, t_f, z_f


# -- the head ---------------------------------------------------------------------------------------------


@register_head
class MisterE(Head):
    name = "mister-e"
    config_cls = MisterEConfig
    required_roles = ("t", "a")
    optional_roles = ()
    uses_context = True
    description = "MiSTER-E: speech/text context experts + co-attention fusion expert, gated mixture of logits"
    defaults = {
        "optim.name": "adam",  # [code] train_moe.py: Adam (spec 1.4)
        "optim.lr": 1e-5,  # [code] train_moe.py: base_lr (spec 1.4)
        "optim.weight_decay": 0.0,  # [code] no weight decay (spec 1.4)
        "optim.grad_clip": 1.0,  # [code] clip_grad_norm_(..., 1) (spec 1.4)
        "train.epochs": 100,  # [code] train_moe.py: 100 epochs (spec 1.4)
        "train.batch_size": 8,  # [code] train loader of 8 dialogues (spec 1.4)
        "train.patience": 10,  # [default] spec 1.7: the code has no early stopping; patience 10 on the dev split
    }

    def __init__(self, cfg: MisterEConfig, dims: dict[str, int], tasks: list[TaskSpec]):
        super().__init__(cfg, dims, tasks)
        self.task = primary_categorical(tasks, self.name)
        C = self.task.out_dim
        if cfg.gating not in ("soft", "mean", "top1"):
            raise ValueError(f"mister-e: gating must be soft, mean or top1, got {cfg.gating!r}")
        on = {"speech": cfg.use_speech_expert, "text": cfg.use_text_expert, "fusion": cfg.use_fusion_expert}
        self.experts_on = [e for e in EXPERTS if on[e]]
        if not self.experts_on:
            raise ValueError("mister-e: enable at least one expert (use_speech_expert / use_text_expert / use_fusion_expert)")
        self.speech = ContextExpert(dims["a"], cfg, C) if on["speech"] else None
        self.text = ContextExpert(dims["t"], cfg, C) if on["text"] else None
        self.fusion = FusionExpert(dims["a"], dims["t"], cfg, C) if on["fusion"] else None
        E = len(self.experts_on)
        self.gate = None
        if cfg.gating != "mean" and E > 1:
            self.gate = nn.Sequential(nn.Linear(E * C, cfg.gate_hidden), nn.ReLU(), nn.Linear(cfg.gate_hidden, E))

    def forward(self, batch: Batch) -> HeadOutput:
        cfg = self.cfg
        x_a, x_t = batch.feats["a"], batch.feats["t"]
        mask = None if cfg.parity else batch.mask
        pad = None if cfg.parity else key_padding(batch.mask)
        aux: dict[str, torch.Tensor] = {}
        z: dict[str, torch.Tensor] = {}
        if self.speech is not None:
            _, z["speech"] = self.speech(x_a, mask)
        if self.text is not None:
            _, z["text"] = self.text(x_t, mask)
        if self.fusion is not None:
            aux["a_f"], aux["t_f"], z["fusion"] = self.fusion(x_a, x_t, pad)
        z_btec = torch.stack([z[e] for e in self.experts_on], dim=-2)
        B, T, E, C = z_btec.shape

        if self.gate is None:  # "mean" gating, or a single expert
            g_bte = z_btec.new_full((B, T, E), 1.0 / E)
        else:
            g_bte = F.softmax(self.gate(z_btec.reshape(B, T, E * C)) / cfg.gate_temperature, dim=-1)
            if cfg.gating == "top1":  # hard choice forward, soft gradient backward
                hard = F.one_hot(g_bte.argmax(dim=-1), E).to(g_bte.dtype)
                g_bte = hard + g_bte - g_bte.detach()
        y_btc = (g_bte.unsqueeze(-1) * z_btec).sum(dim=-2)
        aux["expert_logits"], aux["gate"] = z_btec, g_bte
        return HeadOutput(logits={self.task.name: y_btc}, aux=aux)

    def loss(self, batch: Batch, out: HeadOutput, epoch: int):
        cfg = self.cfg
        y_bt = batch.labels[self.task.name]
        if cfg.parity:  # the code's collate: -1 at pads and unlabelled positions, all of them in the means
            y_bt = torch.where(batch.mask, y_bt, torch.full_like(y_bt, -1))
        z_btec = out.aux["expert_logits"]
        experts = [z_btec[:, :, e] for e in range(z_btec.shape[2])]

        focal = focal_loss(out.logits[self.task.name], y_bt, gamma=cfg.focal_gamma, count_pads=cfg.parity)
        for z_btc in experts:
            focal = focal + focal_loss(z_btc, y_bt, gamma=cfg.focal_gamma, count_pads=cfg.parity)

        supcon = z_btec.new_zeros(())
        if self.fusion is not None and cfg.supcon_weight:
            a_f, t_f = out.aux["a_f"], out.aux["t_f"]
            if cfg.parity:  # every position, pads forming their own class (label -1)
                supcon = supcon_loss(a_f.flatten(0, 1), t_f.flatten(0, 1), y_bt.flatten(), cfg.supcon_temperature)
            else:
                keep = y_bt >= 0
                supcon = supcon_loss(a_f[keep], t_f[keep], y_bt[keep], cfg.supcon_temperature)

        kl = z_btec.new_zeros(())
        if cfg.kl_weight and len(experts) > 1:
            kl = symmetric_kl(experts, None if cfg.parity else batch.mask)

        total = focal + cfg.supcon_weight * supcon + cfg.kl_weight * kl
        return total, {"focal": focal.item(), "supcon": supcon.item(), "kl": kl.item()}

    def figure_stats(self, batch: Batch, out: HeadOutput) -> dict[str, torch.Tensor]:
        """The paper's Fig. 5a: gate weight per expert, per gold class. gate_sum [C, E] sums the gate vectors of
        the labelled utterances of each class, gate_count [C] counts them (mean = sum / count; a row sums to 1)."""
        y_bt = batch.labels.get(self.task.name)
        if y_bt is None:
            return {}
        keep_bt = batch.mask & (y_bt >= 0)
        onehot_btc = F.one_hot(y_bt.clamp(min=0), self.task.out_dim).float() * keep_bt.unsqueeze(-1)
        return {"gate_sum": torch.einsum("btc,bte->ce", onehot_btc, out.aux["gate"].float()),
                "gate_count": onehot_btc.sum(dim=(0, 1))}

    def figure_axes(self) -> dict[str, list[str]]:
        return {"experts": list(self.experts_on), "classes": list(self.task.classes)}



# -- closed-form parameter counts (checked by tests/test_head_mister_e.py) --------------------------------------


def context_expert_params(d_in: int, cfg: MisterEConfig, n_classes: int) -> int:
    H, G = cfg.hidden, cfg.gru_hidden
    tin = sum(d_in * H * k + H for k in (1, 3, 5))
    gru = 0
    for layer in range(cfg.gru_layers):
        d = H if layer == 0 else 2 * G
        gru += 2 * (3 * G * d + 3 * G * G + 6 * G)  # two directions; W_ih, W_hh and two biases of 3 gates
    return tin + gru + (d_in * 2 * G + 2 * G) + (2 * G * n_classes + n_classes)


def fusion_expert_params(d_a: int, d_t: int, cfg: MisterEConfig, n_classes: int) -> int:
    F_, A = cfg.hidden, cfg.attn_dim
    sublayer = 3 * (F_ * A + A) + (4 * A * A + 4 * A) + (A * F_ + F_) + 2 * F_  # qkv, MHA, back-proj, LayerNorm
    layers = cfg.fusion_layers * 4 * sublayer
    inputs_and_skips = 2 * ((d_a * F_ + F_) + (d_t * F_ + F_))
    return inputs_and_skips + layers + 2 * 2 * F_ + (2 * F_ * F_ + F_) + (F_ * n_classes + n_classes)


def gate_params(cfg: MisterEConfig, n_experts: int, n_classes: int) -> int:
    h = cfg.gate_hidden
    return n_experts * n_classes * h + h + h * n_experts + n_experts
