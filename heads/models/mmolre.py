"""MMoLRE: Multimodal Mixture of Low-Rank Experts for multi-task sentiment + emotion (Zhang et al., ICASSP-style).

Spec: heads.md section 3 (full paper text; no official code, the fusion and output layers are MMML's,
zehuiwu/MMML `utils/cross_attn_encoder.py`, `utils/en_model.py`). An utterance-level model on token/frame
sequences: text tokens and audio frames of every real utterance of the batch are flattened to n utterances.

    input     x_m [n, L_m, D_m] -> Linear(D_m -> d) when D_m != d; duplicated per task: x^tau = x^m
    UniTSE    2 blocks per modality; per block and task tau:
                h^tau = sum_{n in top-k} g_tau,n f_sh^n(x^tau) + f_ts^tau(x^tau);  x^tau <- x^tau + h^tau
                f_sh^n: N shared low-rank experts Conv1d(d -> r, k=3) -> Conv1d(r -> d, k=1) (no nonlinearity)
                f_ts^tau: the task's own expert, same structure with rank 128
                g_tau = top-k(softmax(masked-GAP_L(Conv1d(d/4 -> N)(ReLU(Conv1d(d -> d/4)(x^tau)))))), no renormalisation
    fusion    per task, MMML's cross-modal encoder: [CLS] prepended to each modality, 5 layers of
                bidirectional cross-attention, self-attention per modality and FFN (d -> 3072 -> d, ReLU), each a
                BERT sublayer (dropout, residual, LayerNorm), 12 heads, key padding masks -> [CLS_t; CLS_a]
    output    per task: Dropout(0.3) -> Linear(2d -> d) -> ReLU -> Linear(d -> 512) -> ReLU -> Linear(512 -> out)

Loss: sum over tasks of the task loss: MAE for sentiment regression, BCE-with-logits for multi-label emotions,
CE for a categorical task. `fusion="pre"` is the paper's pre-fusion ablation: one shared cross-modal encoder on the
input sequences first, then UniTSE on the fused sequences, reading each task's [CLS] positions. `multitask=False`
trains and predicts the primary task only. Pads (utterances and frames) never change a real utterance's output:
frames are zeroed before every convolution, the router pools over real frames and attention masks pad keys.

The low-rank experts are stored as one Conv1d(d -> N*r, k=3) and one [d, N*r] up-projection with N biases, which
is parameter-for-parameter N separate experts (see `low_rank_expert_params`), and lets the gated sum run as one
matmul: sum_e g_e (W_e h_e + b_e) = W_up (g * h) + g b.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_head
from ._common import task_loss
from .base import FRAMES, Batch, Head, HeadOutput, TaskSpec


@dataclass
class MMoLREConfig:
    d_model: int = 768  # inputs of another width are projected to it
    experts: int = 15  # N shared low-rank experts per UniTSE block
    rank: int = 64  # r_n of the shared experts (CMU-MOSI; CMU-MOSEI used 128)
    top_k: int = 11  # active shared experts per task and utterance (MOSI; MOSEI used 8)
    task_rank: int = 128  # r_tau of the task-specific expert
    task_expert: bool = True
    unitse_blocks: int = 2
    fusion: str = "post"  # post: UniTSE then per-task fusion (the model) | pre: fusion first (the ablation)
    multitask: bool = True  # False: the primary task only
    fusion_layers: int = 5
    heads: int = 12
    ffn_dim: int = 3072
    dropout: float = 0.3  # attention probabilities, sublayer outputs and the output MLP (MMML's BertConfig)
    mlp_hidden: int = 512
    # optimiser: AdamW lr 1e-5 (paper); weight decay torch's default 0.01 and no clipping [default]
    lr: float = 1e-5
    weight_decay: float = 0.01
    grad_clip: float = 0.0  # <= 0: off


# -- UniTSE: unimodal task-specific feature extraction -----------------------------------------------------------


class LowRankExperts(nn.Module):
    """n experts Conv1d(d -> r, k=3) -> Conv1d(r -> d, k=1), run together; forward returns sum_e g_e f_e(x)."""

    def __init__(self, d: int, n: int, r: int):
        super().__init__()
        self.n, self.r = n, r
        self.down = nn.Conv1d(d, n * r, kernel_size=3, padding=1)  # expert e owns output channels e*r .. e*r+r-1
        self.up_weight = nn.Parameter(torch.empty(d, n * r))  # expert e's Conv1d(r -> d, k=1) is columns e*r ..
        self.up_bias = nn.Parameter(torch.empty(n, d))
        bound = 1 / math.sqrt(r)  # nn.Conv1d's default init for fan_in = r
        nn.init.uniform_(self.up_weight, -bound, bound)
        nn.init.uniform_(self.up_bias, -bound, bound)

    def forward(self, x_ndl: torch.Tensor, g_ne: torch.Tensor | None = None) -> torch.Tensor:
        h_nkl = self.down(x_ndl)  # [n_utt, n*r, L]
        if g_ne is None:  # every expert with weight 1
            bias_nd = self.up_bias.sum(dim=0).expand(x_ndl.shape[0], -1)
        else:
            h_nkl = h_nkl * g_ne.repeat_interleave(self.r, dim=1).unsqueeze(-1)
            bias_nd = g_ne @ self.up_bias
        return torch.einsum("dk,nkl->ndl", self.up_weight, h_nkl) + bias_nd.unsqueeze(-1)


class Router(nn.Module):
    """Conv1d(d -> d/4) -> ReLU -> Conv1d(d/4 -> N) -> mean over real frames -> softmax -> keep the top k."""

    def __init__(self, d: int, n_experts: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(d, d // 4, 1), nn.ReLU(), nn.Conv1d(d // 4, n_experts, 1))

    def forward(self, x_ndl: torch.Tensor, mask_nl: torch.Tensor, top_k: int) -> torch.Tensor:
        logits_nel = self.net(x_ndl)
        m = mask_nl.unsqueeze(1).to(logits_nel.dtype)
        pooled_ne = (logits_nel * m).sum(-1) / m.sum(-1).clamp(min=1)
        p_ne = F.softmax(pooled_ne.float(), dim=-1).to(x_ndl.dtype)
        k = min(top_k, p_ne.shape[-1])
        idx = p_ne.topk(k, dim=-1).indices
        return torch.zeros_like(p_ne).scatter(-1, idx, p_ne.gather(-1, idx))


class UniTSEBlock(nn.Module):
    """One block over all task streams of a modality: shared experts, one task expert and one router per task."""

    def __init__(self, d: int, cfg: MMoLREConfig, n_tasks: int):
        super().__init__()
        self.top_k = cfg.top_k
        self.shared = LowRankExperts(d, cfg.experts, cfg.rank)
        self.task_experts = nn.ModuleList([LowRankExperts(d, 1, cfg.task_rank) for _ in range(n_tasks)]) if cfg.task_expert else None
        self.routers = nn.ModuleList([Router(d, cfg.experts) for _ in range(n_tasks)])

    def forward(self, xs_ndl: list[torch.Tensor], mask_nl: torch.Tensor):
        outs, gates = [], []
        m = mask_nl.unsqueeze(1)
        for tau, x_ndl in enumerate(xs_ndl):
            x_ndl = torch.where(m, x_ndl, torch.zeros((), dtype=x_ndl.dtype, device=x_ndl.device))  # pads -> 0
            g_ne = self.routers[tau](x_ndl, mask_nl, self.top_k)
            h_ndl = self.shared(x_ndl, g_ne)
            if self.task_experts is not None:
                h_ndl = h_ndl + self.task_experts[tau](x_ndl)
            outs.append(x_ndl + h_ndl)
            gates.append(g_ne)
        return outs, gates


# -- task-adaptive fusion: MMML's cross-modality encoder ------------------------------------------------------


class BertAttention(nn.Module):
    """Multi-head attention of x_q over x_kv -> dense -> dropout -> + x_q -> LayerNorm (a BERT sublayer)."""

    def __init__(self, cfg: MMoLREConfig):
        super().__init__()
        d = cfg.d_model
        self.heads, self.p = cfg.heads, cfg.dropout
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.dense = nn.Linear(d, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(d, eps=1e-12)

    def forward(self, x_q, x_kv, keep_ns: torch.Tensor):
        n, Lq, d = x_q.shape
        h = self.heads

        def split(x):
            return x.view(n, -1, h, d // h).transpose(1, 2)  # [n, heads, L, d/heads]

        ctx = F.scaled_dot_product_attention(split(self.q(x_q)), split(self.k(x_kv)), split(self.v(x_kv)),
                                             attn_mask=keep_ns[:, None, None, :],
                                             dropout_p=self.p if self.training else 0.0)
        ctx = ctx.transpose(1, 2).reshape(n, Lq, d)
        return self.norm(x_q + self.drop(self.dense(ctx)))


class FeedForward(nn.Module):
    def __init__(self, cfg: MMoLREConfig):
        super().__init__()
        d = cfg.d_model
        self.up, self.down = nn.Linear(d, cfg.ffn_dim), nn.Linear(cfg.ffn_dim, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.norm = nn.LayerNorm(d, eps=1e-12)

    def forward(self, x):
        return self.norm(x + self.drop(self.down(F.relu(self.up(x)))))


class CMELayer(nn.Module):
    """Cross-attention both ways, then self-attention per modality, then an FFN per modality."""

    def __init__(self, cfg: MMoLREConfig):
        super().__init__()
        self.cross_t, self.cross_a = BertAttention(cfg), BertAttention(cfg)
        self.self_t, self.self_a = BertAttention(cfg), BertAttention(cfg)
        self.ffn_t, self.ffn_a = FeedForward(cfg), FeedForward(cfg)

    def forward(self, t, m_t, a, m_a):
        t, a = self.cross_t(t, a, m_a), self.cross_a(a, t, m_t)
        t, a = self.self_t(t, t, m_t), self.self_a(a, a, m_a)
        return self.ffn_t(t), self.ffn_a(a)


class CrossModalEncoder(nn.Module):
    """[CLS] + sequence per modality -> `fusion_layers` CME layers -> both full sequences ([CLS] at position 0)."""

    def __init__(self, cfg: MMoLREConfig):
        super().__init__()
        self.cls_t = nn.Parameter(torch.randn(cfg.d_model))  # MMML: nn.Embedding(1, 768), N(0, 1) init
        self.cls_a = nn.Parameter(torch.randn(cfg.d_model))
        self.layers = nn.ModuleList([CMELayer(cfg) for _ in range(cfg.fusion_layers)])

    @staticmethod
    def prepend(cls_d, x_nld, m_nl):
        n = x_nld.shape[0]
        x = torch.cat([cls_d.to(x_nld.dtype).expand(n, 1, -1), x_nld], dim=1)
        m = torch.cat([m_nl.new_ones(n, 1), m_nl], dim=1)
        return x, m

    def forward(self, t_nld, m_t, a_nld, m_a):
        t, m_t = self.prepend(self.cls_t, t_nld, m_t)
        a, m_a = self.prepend(self.cls_a, a_nld, m_a)
        for layer in self.layers:
            t, a = layer(t, m_t, a, m_a)
        return t, m_t, a, m_a


def output_mlp(cfg: MMoLREConfig, out_dim: int) -> nn.Sequential:
    d = cfg.d_model
    return nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(2 * d, d), nn.ReLU(), nn.Linear(d, cfg.mlp_hidden),
                         nn.ReLU(), nn.Linear(cfg.mlp_hidden, out_dim))


# -- the head ---------------------------------------------------------------------------------------------


@register_head
class MMoLRE(Head):
    name = "mmolre"
    config_cls = MMoLREConfig
    levels = (FRAMES,)
    required_roles = ("t", "a")
    optional_roles = ()
    uses_context = False
    description = "MMoLRE: per-task low-rank expert mixtures on token/frame sequences + per-task cross-modal encoder (MSA + MER)"

    @staticmethod
    def default_tasks(cfg: MMoLREConfig) -> str | None:
        """Without --task: every label space of the dataset (MOSEI: sentiment + emotions jointly), unless multitask=false."""
        return "all" if cfg.multitask else None

    def __init__(self, cfg: MMoLREConfig, dims: dict[str, int], tasks: list[TaskSpec]):
        super().__init__(cfg, dims, tasks)
        if cfg.fusion not in ("post", "pre"):
            raise ValueError(f"mmolre: fusion must be post or pre, got {cfg.fusion!r}")
        if not tasks:
            raise ValueError("mmolre needs at least one task")
        if not cfg.multitask and len(tasks) > 1:
            raise ValueError(f"mmolre with multitask=false predicts only the primary task; run it with "
                             f"--task {tasks[0].name}, or drop multitask=false to train {[t.name for t in tasks]} jointly")
        d, n_tasks = cfg.d_model, len(tasks)
        self.proj = nn.ModuleDict({r: nn.Linear(dims[r], d) if dims[r] != d else nn.Identity() for r in ("t", "a")})
        self.unitse = nn.ModuleDict({
            r: nn.ModuleList([UniTSEBlock(d, cfg, n_tasks) for _ in range(cfg.unitse_blocks)]) for r in ("t", "a")
        })
        self.fusion = nn.ModuleList([CrossModalEncoder(cfg) for _ in range(n_tasks if cfg.fusion == "post" else 1)])
        self.out = nn.ModuleDict({t.name: output_mlp(cfg, t.out_dim) for t in tasks})

    def _unitse(self, role: str, x_ndl: torch.Tensor, mask_nl: torch.Tensor, aux: dict) -> list[torch.Tensor]:
        streams = [x_ndl] * len(self.tasks)  # x^tau = x^m
        for i, block in enumerate(self.unitse[role]):
            streams, gates = block(streams, mask_nl)
            for task, g in zip(self.tasks, gates, strict=True):
                aux[f"gate_{role}_{i}_{task.name}"] = g
        return streams

    def forward(self, batch: Batch) -> HeadOutput:
        sel_bt = batch.mask
        x, m = {}, {}
        for r in ("t", "a"):
            x_btld, m_btl = batch.frames[r]
            x[r] = self.proj[r](x_btld[sel_bt])  # [n, L, d]: the real utterances only
            m[r] = m_btl[sel_bt]
        aux: dict[str, torch.Tensor] = {}

        reps = []  # per task: [n, 2d]
        if self.cfg.fusion == "post":
            streams = {r: self._unitse(r, x[r].transpose(1, 2), m[r], aux) for r in ("t", "a")}
            for tau, fusion in enumerate(self.fusion):
                t, _, a, _ = fusion(streams["t"][tau].transpose(1, 2), m["t"], streams["a"][tau].transpose(1, 2), m["a"])
                reps.append(torch.cat([t[:, 0], a[:, 0]], dim=-1))
        else:
            t, m_t, a, m_a = self.fusion[0](x["t"], m["t"], x["a"], m["a"])
            s_t = self._unitse("t", t.transpose(1, 2), m_t, aux)
            s_a = self._unitse("a", a.transpose(1, 2), m_a, aux)
            reps = [torch.cat([s_t[tau][:, :, 0], s_a[tau][:, :, 0]], dim=-1) for tau in range(len(self.tasks))]

        logits = {}
        for task, rep in zip(self.tasks, reps, strict=True):
            y_no = self.out[task.name](rep)
            y_bto = y_no.new_zeros(sel_bt.shape + (task.out_dim,))
            y_bto[sel_bt] = y_no
            logits[task.name] = y_bto
        return HeadOutput(logits=logits, aux=aux)

    def loss(self, batch: Batch, out: HeadOutput, epoch: int):
        terms = {t.name: task_loss(t, out.logits[t.name], batch.labels[t.name]) for t in self.tasks}
        total = sum(terms.values())
        return total, {k: v.item() for k, v in terms.items()}

    def optimizer_config(self) -> dict:
        cfg = self.cfg
        return {"name": "adamw", "lr": cfg.lr, "weight_decay": cfg.weight_decay, "grad_clip": cfg.grad_clip,
                "scheduler": None}


# -- closed-form parameter counts (checked by tests/test_head_mmolre.py) --------------------------------------


def low_rank_expert_params(d: int, r: int) -> int:
    """Conv1d(d -> r, k=3) + Conv1d(r -> d, k=1), with biases. r = d gives the full-rank expert."""
    return (3 * d * r + r) + (r * d + d)


def router_params(d: int, n_experts: int) -> int:
    q = d // 4
    return (d * q + q) + (q * n_experts + n_experts)


def unitse_block_params(cfg: MMoLREConfig, d: int, n_tasks: int, full_rank: bool = False) -> int:
    """One UniTSE block of one modality; full_rank=True: the same block with rank-d experts (a full-rank MoE)."""
    rank, task_rank = (d, d) if full_rank else (cfg.rank, cfg.task_rank)
    task = (low_rank_expert_params(d, task_rank) if cfg.task_expert else 0) + router_params(d, cfg.experts)
    return cfg.experts * low_rank_expert_params(d, rank) + n_tasks * task


def shared_experts_ratio(cfg: MMoLREConfig, d: int) -> float:
    """Parameters of the N shared experts at full rank / at rank r (the experts part of the x5.7 claim)."""
    return low_rank_expert_params(d, d) / low_rank_expert_params(d, cfg.rank)


def cme_layer_params(d: int, ffn: int) -> int:
    attention = 4 * (d * d + d) + 2 * d  # q, k, v, dense; LayerNorm
    feed_forward = (d * ffn + ffn) + (ffn * d + d) + 2 * d
    return 4 * attention + 2 * feed_forward


def param_count_formula(cfg: MMoLREConfig, d: int | None = None, out_dims: tuple[int, ...] = (1, 6),
                        input_dims: dict[str, int] | None = None) -> dict[str, int]:
    """Closed-form parameter counts of MMoLRE per part, for tasks with output widths `out_dims` (default: sentiment
    regression + 6 emotions) and inputs of width `input_dims` (default: d, no projection)."""
    d = d or cfg.d_model
    n_tasks = len(out_dims)
    input_dims = input_dims or {"t": d, "a": d}
    parts = {
        "projection": sum(D * d + d for D in input_dims.values() if D != d),
        "unitse": 2 * cfg.unitse_blocks * unitse_block_params(cfg, d, n_tasks),
        "fusion": (n_tasks if cfg.fusion == "post" else 1) * (2 * d + cfg.fusion_layers * cme_layer_params(d, cfg.ffn_dim)),
        "output": sum((2 * d * d + d) + (d * cfg.mlp_hidden + cfg.mlp_hidden) + (cfg.mlp_hidden * o + o) for o in out_dims),
    }
    parts["total"] = sum(parts.values())
    return parts
