"""MMoLRE: Multimodal Mixture of Low-Rank Experts for multi-task sentiment + emotion (Zhang et al., ICASSP-style).

Spec: heads.md section 3 (full paper text; no official code, the fusion and output layers are MMML's,
zehuiwu/MMML `utils/cross_attn_encoder.py`, `utils/en_model.py`). An utterance-level model on token/frame
sequences: text tokens and audio frames of every real utterance of the batch are flattened to n utterances.

    input     x_m [n, L_m, D_m] -> Linear(D_m -> d) when D_m != d; duplicated per task: x^tau = x^m
    UniTSE    2 blocks per modality; per block and task tau:
                h^tau = sum_{n in top-k} g_tau,n f_sh^n(x^tau) + f_ts^tau(x^tau); x^tau <- h^tau   [paper]
                (Eq. 1; residual=True: x^tau <- x^tau + h^tau, the spec's [default], not in Eq. 1)
                f_sh^n: N shared low-rank experts Conv1d(d -> r_n, k=3) -> Conv1d(r_n -> d, k=1), linear;
                  `rank`: one r for all, or N ranks, one per expert (Table III's {16 + 8n}: 16, 24, ..., 128)
                f_ts^tau: the task's own expert, same structure with rank 128
                g_tau = top-k(softmax(masked-GAP_L(Conv1d(d/4 -> N)(ReLU(Conv1d(d -> d/4)(x^tau)))))), no renormalisation
    fusion    per task, MMML's cross-modal encoder: [CLS] prepended to each modality, 5 layers of
                bidirectional cross-attention, self-attention per modality and FFN (d -> 3072 -> d, ReLU), each a
                BERT sublayer (dropout, residual, LayerNorm), 12 heads, key padding masks -> [CLS_t; CLS_a]
    output    per task: Dropout(0.3) -> Linear(2d -> d) -> ReLU -> Linear(d -> 512) -> ReLU -> Linear(512 -> out)

Loss: sum over tasks of the task loss: MAE for sentiment regression, BCE-with-logits for multi-label emotions,
CE for a categorical task. `multitask=False` trains and predicts the primary task only. Pads (utterances and
frames) never change a real utterance's output: frames are zeroed before every convolution, the router pools
over real frames and attention masks pad keys.

Ablations (`ablation`). The paper's Table II has a "Pre-fusion variant" row and no text we could read says
more (spec 3.7); our reading [default] names where the tasks part ways relative to fusion, UniTSE removed:
    none         the model: UniTSE per modality, then one fusion network per task
    pre_fusion   no UniTSE: the tasks part *before* fusion; one fusion network per task reads the encoder
                 features directly (so the row measures what UniTSE adds)
    post_fusion  no UniTSE: the tasks part *after* fusion; one shared fusion network, then the per-task output
                 layers (hard parameter sharing, the MTL baseline the paper argues against)
With a single task the two ablations are the same network.

The low-rank experts are stored as one Conv1d(d -> sum_n r_n, k=3) and one [d, sum_n r_n] up-projection with
N biases, which is parameter-for-parameter N separate experts of ranks r_n (see `low_rank_expert_params`), and
lets the gated sum run as one matmul, for equal and mixed ranks alike:
sum_e g_e (W_e h_e + b_e) = W_up (g * h) + g b, with each gate spread over its expert's r_e channels.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import task_loss
from ..registry import register_head
from .base import FRAMES, Batch, Head, HeadOutput, TaskSpec


@dataclass
class MMoLREConfig:
    d_model: int = 768  # inputs of another width are projected to it
    experts: int = 15  # N shared low-rank experts per UniTSE block
    # r_n of the shared experts: one int for all (CMU-MOSI 64; CMU-MOSEI 128), or N ints, one per expert
    rank: int | tuple[int, ...] = 64
    top_k: int = 11  # active shared experts per task and utterance (MOSI; MOSEI used 8)
    task_rank: int = 128  # r_tau of the task-specific expert
    task_expert: bool = True
    unitse_blocks: int = 2
    residual: bool = False  # x^tau + h^tau after each UniTSE block; Eq. 1 has none [paper]
    # none | pre_fusion (no UniTSE, per-task fusion) | post_fusion (no UniTSE, one shared fusion) [default]
    ablation: str = "none"
    multitask: bool = True  # False: the primary task only
    fusion_layers: int = 5
    heads: int = 12
    ffn_dim: int = 3072
    dropout: float = 0.3  # attention probabilities, sublayer outputs and the output MLP (MMML's BertConfig)
    mlp_hidden: int = 512


ABLATIONS = ("none", "pre_fusion", "post_fusion")


# -- UniTSE: unimodal task-specific feature extraction -----------------------------------------------------------


def shared_ranks(cfg: MMoLREConfig) -> tuple[int, ...]:
    """r_n of the N shared experts: `rank` as one int for all of them, or a sequence of N ints."""
    if isinstance(cfg.rank, int):
        ranks = (cfg.rank,) * cfg.experts
    else:  # a tuple, or the list that head_config.json gives back
        ranks = tuple(int(r) for r in cfg.rank)
        if len(ranks) != cfg.experts:
            raise ValueError(f"mmolre: rank lists {len(ranks)} ranks for experts={cfg.experts}; give one int "
                             f"for every expert or exactly {cfg.experts} ranks, one per shared expert")
    if not ranks or min(ranks) < 1:
        raise ValueError(f"mmolre: ranks must be >= 1, got rank={cfg.rank!r} with experts={cfg.experts}")
    return ranks


class LowRankExperts(nn.Module):
    """Experts e = 1..n, each Conv1d(d -> r_e, k=3) -> Conv1d(r_e -> d, k=1), run together: sum_e g_e f_e(x).

    Expert e owns the bottleneck channels offset_e .. offset_e + r_e - 1 of `down` and the same columns of
    `up_weight`, so mixed ranks cost one convolution and one matmul, exactly like equal ones (no padding)."""

    def __init__(self, d: int, ranks: tuple[int, ...]):
        super().__init__()
        self.ranks = tuple(ranks)
        k = sum(self.ranks)
        self.down = nn.Conv1d(d, k, kernel_size=3, padding=1)
        self.up_weight = nn.Parameter(torch.empty(d, k))
        self.up_bias = nn.Parameter(torch.empty(len(self.ranks), d))
        channel_expert_k = torch.tensor([e for e, r in enumerate(self.ranks) for _ in range(r)])
        self.register_buffer("channel_expert", channel_expert_k, persistent=False)  # gate index per channel
        # nn.Conv1d's default init of each expert's up-projection (fan_in = r_e), one draw per run of equal
        # ranks, so equal ranks draw exactly what a single [d, N r] draw gives
        e0 = c0 = 0
        for r, run in itertools.groupby(self.ranks):
            n_run = len(list(run))
            bound = 1 / math.sqrt(r)
            nn.init.uniform_(self.up_weight[:, c0 : c0 + n_run * r], -bound, bound)
            nn.init.uniform_(self.up_bias[e0 : e0 + n_run], -bound, bound)
            e0, c0 = e0 + n_run, c0 + n_run * r

    def forward(self, x_ndl: torch.Tensor, g_ne: torch.Tensor | None = None) -> torch.Tensor:
        h_nkl = self.down(x_ndl)  # [n_utt, sum_e r_e, L]
        if g_ne is None:  # every expert with weight 1
            bias_nd = self.up_bias.sum(dim=0).expand(x_ndl.shape[0], -1)
        else:
            h_nkl = h_nkl * g_ne.index_select(1, self.channel_expert).unsqueeze(-1)
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
        self.top_k, self.residual = cfg.top_k, cfg.residual
        self.shared = LowRankExperts(d, shared_ranks(cfg))
        self.task_experts = (nn.ModuleList([LowRankExperts(d, (cfg.task_rank,)) for _ in range(n_tasks)])
                             if cfg.task_expert else None)
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
            outs.append(x_ndl + h_ndl if self.residual else h_ndl)
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
    defaults = {
        "optim.name": "adamw",  # [paper] spec 3.4
        "optim.lr": 1e-5,  # [paper] spec 3.4
        "optim.weight_decay": 0.01,  # [default] torch AdamW's default; the paper gives none
        "optim.grad_clip": None,  # [default] none mentioned
        "train.epochs": 20,  # [default] spec 3.4: MMML's maximum epochs
        "train.batch_size": 8,  # [paper] spec 3.4: batch 8 (segments)
        "train.batch_unit": "utterance",  # [paper] spec 3.1: utterance-level model, no dialogue context
        "train.patience": 8,  # [paper] spec 3.4: early stopping patience 8
        "data.max_frames.t": 64,  # [code] MMML: text max 64 tokens (spec 3.1)
        "data.max_frames.a": 299,  # [code] MMML: audio cut to 96 000 samples, ~299 frames (spec 3.1)
    }

    @staticmethod
    def default_tasks(cfg: MMoLREConfig) -> str | None:
        """Without --task: every label space of the dataset (MOSEI: sentiment + emotions jointly), unless multitask=false."""
        return "all" if cfg.multitask else None

    def __init__(self, cfg: MMoLREConfig, dims: dict[str, int], tasks: list[TaskSpec]):
        super().__init__(cfg, dims, tasks)
        if cfg.ablation not in ABLATIONS:
            raise ValueError(f"mmolre: ablation must be one of {', '.join(ABLATIONS)}; got {cfg.ablation!r}")
        shared_ranks(cfg)  # checks `rank` against `experts` before anything is built
        if not tasks:
            raise ValueError("mmolre needs at least one task")
        if not cfg.multitask and len(tasks) > 1:
            raise ValueError(f"mmolre with multitask=false predicts only the primary task; run it with "
                             f"--task {tasks[0].name}, or drop multitask=false to train {[t.name for t in tasks]} jointly")
        d, n_tasks = cfg.d_model, len(tasks)
        self.proj = nn.ModuleDict({r: nn.Linear(dims[r], d) if dims[r] != d else nn.Identity() for r in ("t", "a")})
        self.unitse = nn.ModuleDict({
            r: nn.ModuleList([UniTSEBlock(d, cfg, n_tasks) for _ in range(cfg.unitse_blocks)]) for r in ("t", "a")
        }) if cfg.ablation == "none" else None
        n_fusion = 1 if cfg.ablation == "post_fusion" else n_tasks
        self.fusion = nn.ModuleList([CrossModalEncoder(cfg) for _ in range(n_fusion)])
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

        if self.unitse is not None:  # per modality, one stream per task: [n, L, d] each
            streams = {r: [s.transpose(1, 2) for s in self._unitse(r, x[r].transpose(1, 2), m[r], aux)]
                       for r in ("t", "a")}
        else:  # the ablations: every task reads the encoder features
            streams = {r: [x[r]] * len(self.tasks) for r in ("t", "a")}
        reps = []  # per fusion network: [n, 2d]
        for tau, fusion in enumerate(self.fusion):
            t, _, a, _ = fusion(streams["t"][tau], m["t"], streams["a"][tau], m["a"])
            reps.append(torch.cat([t[:, 0], a[:, 0]], dim=-1))
        if len(reps) < len(self.tasks):  # post_fusion: one fusion network shared by every task's output layer
            reps = reps * len(self.tasks)

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

    def figure_stats(self, batch: Batch, out: HeadOutput) -> dict[str, torch.Tensor]:
        """Expert usage per task: for every router (modality x UniTSE block x task), usage [.., N] counts the
        utterances that selected each shared expert among their top k, gate_sum [.., N] adds up its gate weight,
        utterances counts the routed utterances (so usage sums to top_k x utterances over the experts)."""
        if self.unitse is None:
            return {}
        gates = torch.stack([torch.stack([torch.stack([out.aux[f"gate_{r}_{i}_{t.name}"].float()
                                                       for t in self.tasks])
                                          for i in range(len(self.unitse[r]))]) for r in ("t", "a")])
        return {"usage": (gates > 0).sum(dim=-2).float(), "gate_sum": gates.sum(dim=-2),
                "utterances": gates.new_tensor(float(gates.shape[-2]))}

    def figure_axes(self) -> dict[str, list[str]]:
        if self.unitse is None:
            return {}
        return {"roles": ["t", "a"], "blocks": [str(i + 1) for i in range(self.cfg.unitse_blocks)],
                "tasks": [t.name for t in self.tasks], "experts": [str(e + 1) for e in range(self.cfg.experts)]}



# -- closed-form parameter counts (checked by tests/test_head_mmolre.py) --------------------------------------


def low_rank_expert_params(d: int, r: int) -> int:
    """Conv1d(d -> r, k=3) + Conv1d(r -> d, k=1), with biases. r = d gives the full-rank expert."""
    return (3 * d * r + r) + (r * d + d)


def router_params(d: int, n_experts: int) -> int:
    q = d // 4
    return (d * q + q) + (q * n_experts + n_experts)


def shared_experts_params(d: int, ranks: tuple[int, ...]) -> int:
    """The N shared experts of one block: sum_n [r_n (3d + d + 1) + d] = sum_n r_n (4d + 1) + N d."""
    return sum(low_rank_expert_params(d, r) for r in ranks)


def unitse_block_params(cfg: MMoLREConfig, d: int, n_tasks: int, full_rank: bool = False) -> int:
    """One UniTSE block of one modality; full_rank=True: the same block with rank-d experts (a full-rank MoE)."""
    ranks, task_rank = ((d,) * cfg.experts, d) if full_rank else (shared_ranks(cfg), cfg.task_rank)
    task = (low_rank_expert_params(d, task_rank) if cfg.task_expert else 0) + router_params(d, cfg.experts)
    return shared_experts_params(d, ranks) + n_tasks * task


def shared_experts_ratio(cfg: MMoLREConfig, d: int) -> float:
    """Parameters of the N shared experts at full rank / at their ranks r_n (the experts' share of x5.7)."""
    return shared_experts_params(d, (d,) * cfg.experts) / shared_experts_params(d, shared_ranks(cfg))


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
    n_unitse = 2 * cfg.unitse_blocks if cfg.ablation == "none" else 0  # blocks over both modalities
    n_fusion = 1 if cfg.ablation == "post_fusion" else n_tasks
    parts = {
        "projection": sum(D * d + d for D in input_dims.values() if D != d),
        "unitse": n_unitse * unitse_block_params(cfg, d, n_tasks),
        "fusion": n_fusion * (2 * d + cfg.fusion_layers * cme_layer_params(d, cfg.ffn_dim)),
        "output": sum((2 * d * d + d) + (d * cfg.mlp_hidden + cfg.mlp_hidden) + (cfg.mlp_hidden * o + o) for o in out_dims),
    }
    parts["total"] = sum(parts.values())
    return parts
