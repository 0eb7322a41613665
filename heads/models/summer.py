"""SUMMER: unimodal-driven distillation with dynamic fusion (Li, Yu, Huang, Yan; ICME 2025). A RECONSTRUCTION.

Spec: heads.md section 2. There is no code and the paper's hyperparameters are unpublished, so this follows the
spec's [default] choices on top of SDT (butterfliesss/SDT), the closest runnable ancestor. Utterance features of
the roles t, a, v of a dialogue, with speaker identity. Two models, trained one after the other by the trainer
(`stages()`): a text-only teacher, then a multimodal student distilled from the frozen teacher.

    input    U_m = Linear(d_m -> d, no bias)(X_m) + speaker embedding + sinusoidal position     (SDT, Eq. 1)
    SDMoE    per modality: A = self-attention block(U_m) (SDT's intra-modal transformer)
             l = W_g A;  switch expert e off at an utterance iff |l_e - mu| > 2 sigma, mu and sigma over all
               the router logits of the dialogue [default; SDMoE.route says why], the top expert always kept
             w = GumbelSoftmax(l masked, tau) in training, softmax(l masked) in eval; sdmoe=false: softmax(l)
             H_m = LayerNorm(A + sum_e w_e BiGRU_e(A))                          n = 4 BiGRUs of d/2 per direction
    teacher  SDMoE(U_t) -> Linear(d -> C)                                       trained first with CE, then frozen
    HCMF     level 1: cross-attention block for every ordered pair (q, k): query H_q, keys/values H_k
               DynAttn: where the teacher's and the student's text self-attention maps differ by > 0.5, maps with
               a text query move by phi = 0.5 toward the teacher's map (rows renormalised)
             level 2: per modality, SDT's unimodal gates sigmoid(W v) * v on its views [H_q, cross(q <- k)...],
               F_q = LayerNorm(H_q + Linear(M d -> d)(concat))
             level 3: global MoE: x = Linear(M d -> d)(concat_q F_q);  y = LayerNorm(x + sum_e softmax(W x)_e FFN_e(x))
    output   Linear(d -> C)(y)

Loss, teacher stage: CE of the teacher. Student stage (all kappa = 1 [default], 0 disables a term):
    L_IKD = k1 KL(softmax(z_T/T) || softmax(z_S/T)) T^2 + k2 mean_m CE(teacher classifier(adapter(F_m)))
            + k3 label-smoothed CE(student, eps 0.1)                         [paper: the seed TL;DR's formula]
    L     = L_IKD + k4 MSE(adapter(H_t student), H_t teacher)                 [review: the inner-feature MSE]
L_smooth is the student's task loss, so there is no separate plain CE (`ce_weight`, default 0; the spec's
"Total [default]" has one on top, which counts the same NLL twice). Both stages also report `sdmoe_off`, the
share of (utterance, expert) routing slots that the stage's own SDMoE modules switched off, for the log, and
per module and expert the slots left on (`figure_stats`, the expert-activation figure of `merc-heads plot`).

The teacher's classifier is applied with its weights detached (gradients reach the student features only), and
the teacher runs under no_grad in eval mode, so nothing can move it in the student stage. Padding: attention masks
pad keys, GRUs are packed and every loss averages over real (labelled) utterances, so pads never change an output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import kd_loss, masked_cross_entropy, masked_mean
from ..registry import register_head
from ._common import key_padding, primary_categorical, run_gru, sinusoidal_positions
from .base import Batch, Head, HeadOutput, TaskSpec

ROLE_ORDER = ("t", "a", "v")


@dataclass
class SummerConfig:
    d_model: int = 1024  # SDT's hidden width (spec default); 256 or so is plenty for small cached encoders
    heads: int = 8
    ffn_dim: int = 0  # position-wise FFN width; 0 -> d_model (SDT's d_ff = hidden)
    dropout: float = 0.5
    speaker_emb: bool = True
    max_speakers: int = 16  # speaker embedding rows; speakers past the last share it
    n_experts: int = 4  # BiGRU experts per SDMoE
    expert_hidden: int = 0  # per direction; 0 -> d_model // 2
    sdmoe: bool = True  # False: a plain dense softmax MoE (no threshold, no Gumbel): Table 4's "plain MoE"
    gumbel_tau: float = 1.0
    threshold_sigmas: float = 2.0  # logits outside mean +- k std of the dialogue's router logits: off
    global_experts: int = 4  # FFN experts of the HCMF global MoE
    dyn_attn: bool = True  # teacher-guided attention masking of the cross-modal maps with a teacher-modality query
    dyn_phi: float = 0.5
    dyn_threshold: float = 0.5
    teacher_modality: str = "t"  # the unimodal teacher (the paper's best is text; a or v for its Table 3)
    teacher_d_model: int = 0  # 0 -> d_model; otherwise Linear adapters map student features to the teacher width
    kd_temperature: float = 1.0  # SDT: 1 on IEMOCAP, 8 on MELD
    # Student loss: the paper's L_IKD (k1..k3) + the reviewers' feature MSE (k4). L_smooth is the student's
    # task loss, so no plain CE by default [paper]: the spec's "Total [default]" adds CE to L_smooth, which
    # counts the same NLL twice ((2 - eps) NLL). ce_weight=1 restores that total.
    ce_weight: float = 0.0
    kd_weight: float = 1.0  # kappa_1, logit KD
    align_weight: float = 1.0  # kappa_2, label alignment through the frozen teacher classifier
    smooth_weight: float = 1.0  # kappa_3, label-smoothed CE
    mse_weight: float = 1.0  # kappa_4, inner-feature MSE
    label_smoothing: float = 0.1  # eps of L_smooth [default]


# -- attention blocks -----------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention that returns its probabilities and can rewrite them first (`guide`, for DynAttn)."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x_q, x_kv, pad_bs: torch.Tensor, guide: Callable | None = None):
        B, Tq, d = x_q.shape
        h = self.heads

        def split(x):
            return x.view(B, -1, h, d // h).transpose(1, 2)  # [B, heads, T, d/heads]

        scores_bhts = split(self.q(x_q)) @ split(self.k(x_kv)).transpose(-1, -2) / math.sqrt(d // h)
        p_bhts = F.softmax(scores_bhts.masked_fill(pad_bs[:, None, None, :], float("-inf")), dim=-1)
        if guide is not None:
            p_bhts = guide(p_bhts)
        ctx = (self.drop(p_bhts) @ split(self.v(x_kv))).transpose(1, 2).reshape(B, Tq, d)
        return self.o(ctx), p_bhts


class Block(nn.Module):
    """SDT's transformer layer: attention + residual, then a pre-LayerNorm GELU FFN + residual."""

    def __init__(self, d: int, cfg: SummerConfig):
        super().__init__()
        self.attn = Attention(d, cfg.heads, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)
        self.ffn_norm = nn.LayerNorm(d, eps=1e-6)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim or d), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.ffn_dim or d, d), nn.Dropout(cfg.dropout))

    def forward(self, x_q, x_kv, pad_bs, guide=None):
        ctx, p = self.attn(x_q, x_kv, pad_bs, guide)
        y = x_q + self.drop(ctx)
        return y + self.ffn(self.ffn_norm(y)), p


def dyn_attn_guide(a_teacher: torch.Tensor, a_student_self: torch.Tensor, phi: float, threshold: float) -> Callable:
    """DynAttn [default]: A' = A + phi * M * (A_tr - A), M = 1[|A_tr - A_st| > threshold], rows renormalised."""
    disagree = ((a_teacher - a_student_self).abs() > threshold).to(a_teacher.dtype)

    def guide(p: torch.Tensor) -> torch.Tensor:
        p = p + phi * disagree * (a_teacher - p)
        return p / p.sum(dim=-1, keepdim=True).clamp(min=1e-12)

    return guide


# -- input embedding and SDMoE --------------------------------------------------------------------------------


class InputEmbed(nn.Module):
    """Linear projection (SDT: Conv1d k=1, no bias) + speaker embedding + sinusoidal positions, then dropout."""

    def __init__(self, d_in: int, d: int, cfg: SummerConfig):
        super().__init__()
        self.proj = nn.Linear(d_in, d, bias=False)
        self.speaker = nn.Embedding(cfg.max_speakers, d) if cfg.speaker_emb else None
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x_btd: torch.Tensor, speakers_bt: torch.Tensor) -> torch.Tensor:
        h = self.proj(x_btd)
        h = h + sinusoidal_positions(h.shape[1], h.shape[2], h.device, h.dtype)
        if self.speaker is not None:
            h = h + self.speaker(speakers_bt.clamp(0, self.speaker.num_embeddings - 1))
        return self.drop(h)


class SDMoE(nn.Module):
    """Self-attention block + a routed mixture of BiGRU experts added residually."""

    def __init__(self, d: int, cfg: SummerConfig):
        super().__init__()
        self.cfg = cfg
        eh = cfg.expert_hidden or d // 2
        self.block = Block(d, cfg)
        self.router = nn.Linear(d, cfg.n_experts)
        self.experts = nn.ModuleList([nn.GRU(d, eh, batch_first=True, bidirectional=True) for _ in range(cfg.n_experts)])
        self.expert_out = nn.Linear(2 * eh, d) if 2 * eh != d else nn.Identity()
        self.norm = nn.LayerNorm(d)

    def route(self, logits_bte: torch.Tensor, mask_bt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (expert weights [B, T, E], switched off [B, T, E] bool, True only at real utterances).

        mu and sigma are those of all the router logits of the dialogue (real utterances x experts) [default].
        Over an utterance's own n logits, |l_e - mu| <= sqrt(n - 1) sigma always holds (Samuelson), so at the
        default n = 4 a 2-sigma band could never switch an expert off. Over the dialogue's n T logits it binds
        (T >= 2) with the paper's 2 sigma kept, which also keeps the paper's expected sparsity (about 5 % of
        Gaussian logits fall outside 2 sigma). An utterance's routing depends on its own dialogue only, never
        on the rest of the batch, and eval is deterministic. The top expert of an utterance is never switched
        off, so its weights always sum to 1."""
        cfg = self.cfg
        logits_bte = logits_bte.float()
        if not cfg.sdmoe:  # a plain dense softmax MoE
            return F.softmax(logits_bte, dim=-1), torch.zeros_like(logits_bte, dtype=torch.bool)
        real_bte = mask_bt.unsqueeze(-1).expand_as(logits_bte)
        zero = torch.zeros((), dtype=logits_bte.dtype, device=logits_bte.device)
        n_b11 = real_bte.sum(dim=(1, 2), keepdim=True).clamp(min=1)
        mu_b11 = torch.where(real_bte, logits_bte, zero).sum(dim=(1, 2), keepdim=True) / n_b11
        dev_bte = logits_bte - mu_b11
        sigma_b11 = (torch.where(real_bte, dev_bte**2, zero).sum(dim=(1, 2), keepdim=True) / n_b11).sqrt()
        off_bte = (dev_bte.abs() > cfg.threshold_sigmas * sigma_b11) & real_bte
        off_bte = off_bte & (logits_bte < logits_bte.amax(dim=-1, keepdim=True))
        logits_bte = logits_bte.masked_fill(off_bte, float("-inf"))
        if self.training:
            return F.gumbel_softmax(logits_bte, tau=cfg.gumbel_tau, hard=False, dim=-1), off_bte
        return F.softmax(logits_bte, dim=-1), off_bte

    def forward(self, x_btd, mask_bt, pad_bt):
        a_btd, p_bhtt = self.block(x_btd, x_btd, pad_bt)
        w_bte, off_bte = self.route(self.router(a_btd), mask_bt)
        e_bted = torch.stack([self.expert_out(run_gru(gru, a_btd, mask_bt)) for gru in self.experts], dim=2)
        h_btd = self.norm(a_btd + (w_bte.to(a_btd.dtype).unsqueeze(-1) * e_bted).sum(dim=2))
        return h_btd, p_bhtt, off_bte


# -- teacher and student ------------------------------------------------------------------------------------


class Teacher(nn.Module):
    """Unimodal encoder + SDMoE + classifier."""

    def __init__(self, d_in: int, d: int, cfg: SummerConfig, n_classes: int):
        super().__init__()
        self.embed = InputEmbed(d_in, d, cfg)
        self.sdmoe = SDMoE(d, cfg)
        self.classifier = nn.Linear(d, n_classes)

    def forward(self, x_btd, speakers_bt, mask_bt, pad_bt):
        """-> features H [B, T, d], logits [B, T, C], self-attention map, SDMoE's switched-off experts."""
        h_btd, p_bhtt, off_bte = self.sdmoe(self.embed(x_btd, speakers_bt), mask_bt, pad_bt)
        return h_btd, self.classifier(h_btd), p_bhtt, off_bte


class Student(nn.Module):
    """Per-modality encoders + SDMoE, then HCMF (pairwise cross-attention, gated per-modality fusion, global MoE)."""

    def __init__(self, dims: dict[str, int], roles: list[str], cfg: SummerConfig, n_classes: int):
        super().__init__()
        d, M = cfg.d_model, len(roles)
        self.cfg, self.roles = cfg, roles
        self.embed = nn.ModuleDict({r: InputEmbed(dims[r], d, cfg) for r in roles})
        self.sdmoe = nn.ModuleDict({r: SDMoE(d, cfg) for r in roles})
        self.cross = nn.ModuleDict({q + k: Block(d, cfg) for q in roles for k in roles if k != q})  # level 1
        self.view_gate = nn.ModuleDict({q + k: nn.Linear(d, d, bias=False) for q in roles for k in roles})  # level 2
        self.reduce = nn.ModuleDict({q: nn.Linear(M * d, d) for q in roles})
        self.norm2 = nn.ModuleDict({q: nn.LayerNorm(d) for q in roles})
        self.mix = nn.Linear(M * d, d)  # level 3: global MoE
        self.global_router = nn.Linear(d, cfg.global_experts)
        ffn = cfg.ffn_dim or d
        self.global_experts = nn.ModuleList([
            nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(ffn, d))
            for _ in range(cfg.global_experts)
        ])
        self.norm3 = nn.LayerNorm(d)
        self.classifier = nn.Linear(d, n_classes)

    def forward(self, batch: Batch, mask_bt, pad_bt, teacher_attn: torch.Tensor | None = None):
        """-> logits, level-2 features F_m, SDMoE features H_m, SDMoE's switched-off experts per modality.
        With the teacher's self-attention map, cross-attention maps whose query is the teacher modality are
        guided by DynAttn."""
        cfg = self.cfg
        h, self_attn, off = {}, {}, {}
        for r in self.roles:
            u_btd = self.embed[r](batch.feats[r], batch.speakers)
            h[r], self_attn[r], off[r] = self.sdmoe[r](u_btd, mask_bt, pad_bt)
        guides = {}
        if teacher_attn is not None:
            tm = cfg.teacher_modality
            guides[tm] = dyn_attn_guide(teacher_attn, self_attn[tm], cfg.dyn_phi, cfg.dyn_threshold)
        fused = {}
        for q in self.roles:
            views = [(q, h[q])] + [(k, self.cross[q + k](h[q], h[k], pad_bt, guides.get(q))[0]) for k in self.roles if k != q]
            gated = [torch.sigmoid(self.view_gate[q + k](v)) * v for k, v in views]
            fused[q] = self.norm2[q](h[q] + self.reduce[q](torch.cat(gated, dim=-1)))
        x_btd = self.mix(torch.cat([fused[r] for r in self.roles], dim=-1))
        g_bte = F.softmax(self.global_router(x_btd), dim=-1)
        y_btd = self.norm3(x_btd + sum(g_bte[..., e : e + 1] * ex(x_btd) for e, ex in enumerate(self.global_experts)))
        return self.classifier(y_btd), fused, h, off


def deactivated_fraction(off_list: list[torch.Tensor], mask_bt: torch.Tensor) -> torch.Tensor:
    """Share of the (real utterance, expert) routing slots that the given SDMoE modules switched off."""
    slots = mask_bt.sum() * sum(o.shape[-1] for o in off_list)
    return sum(o.sum() for o in off_list).float() / slots.clamp(min=1)


# -- the head ---------------------------------------------------------------------------------------------


@register_head
class Summer(Head):
    name = "summer"
    config_cls = SummerConfig
    required_roles = ()
    uses_context = True
    description = "SUMMER (reconstruction): SDMoE encoders + hierarchical cross-modal fusion, distilled from a frozen unimodal teacher"
    defaults = {
        "optim.name": "adam",  # [default] spec 2.4: SDT's optimiser (SUMMER published none)
        "optim.lr": 1e-4,  # [default] spec 2.4: SDT's IEMOCAP value (MELD 5e-6)
        "optim.weight_decay": 1e-5,  # [default] spec 2.4 (SDT)
        "optim.grad_clip": None,  # [default] spec 2.4 mentions no clipping
        "train.epochs": 150,  # [default] spec 2.4: SDT's IEMOCAP epochs (MELD 50), per stage
        "train.batch_size": 16,  # [default] spec 2.4: SDT's IEMOCAP batch (MELD 8)
        "train.patience": 10,  # [default] not published; the trainer's early stopping
    }

    def __init__(self, cfg: SummerConfig, dims: dict[str, int], tasks: list[TaskSpec]):
        super().__init__(cfg, dims, tasks)
        self.task = primary_categorical(tasks, self.name)
        self.roles = [r for r in ROLE_ORDER if r in dims]
        tm = cfg.teacher_modality
        if tm not in dims:
            raise ValueError(f"summer: the teacher modality {tm!r} is not among the run's roles {sorted(dims)}; "
                             f"add its features or --set teacher_modality=<one of {self.roles}>")
        if not any((cfg.ce_weight, cfg.kd_weight, cfg.align_weight, cfg.smooth_weight, cfg.mse_weight)):
            raise ValueError("summer: every student loss weight is 0; give one of ce_weight, kd_weight, "
                             "align_weight, smooth_weight, mse_weight a value > 0")
        d, d_T, C = cfg.d_model, cfg.teacher_d_model or cfg.d_model, self.task.out_dim
        self.teacher = Teacher(dims[tm], d_T, cfg, C)
        self.student = Student(dims, self.roles, cfg, C)
        self.align_adapter = nn.Linear(d, d_T) if d != d_T else nn.Identity()
        self.mse_adapter = nn.Linear(d, d_T) if d != d_T else nn.Identity()
        self.stage = "student"  # what a trained model predicts with; the trainer calls set_stage first

    def stages(self) -> list[str]:
        return ["teacher", "student"]

    def set_stage(self, stage: str) -> None:
        if stage not in ("teacher", "student"):
            raise ValueError(f"summer has stages teacher and student, not {stage!r}")
        self.stage = stage
        self.teacher.requires_grad_(stage == "teacher")
        for part in (self.student, self.align_adapter, self.mse_adapter):
            part.requires_grad_(stage == "student")
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "stage", None) == "student":  # the frozen teacher always runs in eval mode
            self.teacher.eval()
        return self

    def forward(self, batch: Batch) -> HeadOutput:
        cfg = self.cfg
        mask, pad = batch.mask, key_padding(batch.mask)
        x_teacher = batch.feats[cfg.teacher_modality]
        if self.stage == "teacher":
            _, z_T, _, off_T = self.teacher(x_teacher, batch.speakers, mask, pad)
            return HeadOutput(logits={self.task.name: z_T},
                              aux={"teacher_logits": z_T, "sdmoe_off": deactivated_fraction([off_T], mask),
                                   "sdmoe_off_teacher": off_T})

        with torch.no_grad():
            h_T, z_T, a_T, _ = self.teacher(x_teacher, batch.speakers, mask, pad)
        z_S, fused, h, off = self.student(batch, mask, pad, a_T if cfg.dyn_attn else None)
        student_h = self.mse_adapter(h[cfg.teacher_modality])
        aux = {"teacher_logits": z_T, "teacher_h": h_T, "student_h": student_h,
               "sdmoe_off": deactivated_fraction(list(off.values()), mask),
               **{f"sdmoe_off_{r}": off_r for r, off_r in off.items()}}
        if cfg.align_weight:
            w, b = self.teacher.classifier.weight.detach(), self.teacher.classifier.bias.detach()
            for r in self.roles:
                aux[f"align_{r}"] = F.linear(self.align_adapter(fused[r]), w, b)
        return HeadOutput(logits={self.task.name: z_S}, aux=aux)

    def loss(self, batch: Batch, out: HeadOutput, epoch: int):
        cfg = self.cfg
        y_bt = batch.labels[self.task.name]
        z = out.logits[self.task.name]
        routing = {"sdmoe_off": out.aux["sdmoe_off"].item()}  # logged, not optimised
        if self.stage == "teacher":
            ce = masked_cross_entropy(z, y_bt)
            return ce, {"teacher_ce": ce.item(), **routing}
        terms, weights = {}, {}
        if cfg.ce_weight:
            terms["ce"] = masked_cross_entropy(z, y_bt)
            weights["ce"] = cfg.ce_weight
        if cfg.kd_weight:
            terms["kd"] = kd_loss(z, out.aux["teacher_logits"], cfg.kd_temperature, batch.mask)
            weights["kd"] = cfg.kd_weight
        if cfg.align_weight:
            align = [masked_cross_entropy(out.aux[f"align_{r}"], y_bt) for r in self.roles]
            terms["align"] = sum(align) / len(align)
            weights["align"] = cfg.align_weight
        if cfg.smooth_weight:
            terms["smooth"] = masked_cross_entropy(z, y_bt, label_smoothing=cfg.label_smoothing)
            weights["smooth"] = cfg.smooth_weight
        if cfg.mse_weight:
            se_bt = ((out.aux["student_h"].float() - out.aux["teacher_h"].float()) ** 2).mean(dim=-1)
            terms["mse"] = masked_mean(se_bt, batch.mask)
            weights["mse"] = cfg.mse_weight
        total = sum(weights[k] * v for k, v in terms.items())
        return total, {**{k: v.item() for k, v in terms.items()}, **routing}

    def figure_modules(self) -> list[str]:
        """The SDMoE modules: the teacher's, then the student's, one per modality."""
        return ["teacher", *self.roles]

    def figure_stats(self, batch: Batch, out: HeadOutput) -> dict[str, torch.Tensor]:
        """Expert activation of every SDMoE module that routed in this stage: active [M, E] counts the real
        utterances at which each expert was left on, routed [M] the utterances the module routed (0 for the
        modules of the other stage), so active / routed is the share of routing decisions that kept the expert."""
        real_bt1 = batch.mask.unsqueeze(-1)
        active, routed = [], []
        for name in self.figure_modules():
            off_bte = out.aux.get(f"sdmoe_off_{name}")
            if off_bte is None:
                active.append(real_bt1.new_zeros(self.cfg.n_experts, dtype=torch.float32))
                routed.append(active[-1].new_zeros(()))
            else:
                active.append((real_bt1 & ~off_bte).sum(dim=(0, 1)).float())
                routed.append(batch.mask.sum().float())
        return {"active": torch.stack(active), "routed": torch.stack(routed)}

    def figure_axes(self) -> dict[str, list[str]]:
        return {"modules": [f"teacher ({self.cfg.teacher_modality})" if m == "teacher" else f"student {m}"
                            for m in self.figure_modules()],
                "experts": [str(e + 1) for e in range(self.cfg.n_experts)]}


