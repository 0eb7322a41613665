"""Ada2I: Adaptive Feature Weighting + Adaptive Modality Weighting (Nguyen, Le, Mai, Le; ACM MM 2024).

Spec: heads.md section 4; code: leson502/ADA2I (`model/encoder.py`, `model/AFW.py`, `model/net.py`,
`model/ada2i.py`, `train.py`). Utterance features of any of the roles a, t, v (speakers unused):

    encoder  Z_m   = Linear(d_m -> H)(TransformerEncoder_m(X_m))      2 layers, nhead = smallest h in 5..14 | d_m
    AFW x2   G_m   = (q1 Z (x) q2 Z) * (k1 Z (x) k2 Z)                 per utterance, [R, R] outer-product cores
             P_m   = mean_T G_m;  A_m = G_m . P_l . P_l'               contraction with the other modalities (a, t, v)
             Att_m = Linear(R^2 -> H)(A_m);  Z'_m = Att_m * Z_m + beta * Z_m;  Dropout
             L_feat = L1(Phi_m(Z_m), target_m)                         attention-mapping loss, Phi_m Linear(H -> H)
    AMW      logit_m = normalize(h_m) . N(W_m) + b / M;  y = sum_m logit_m
             (W_m = modality m's column slice of one Linear(M*H -> C); N normalises along the class axis, no scale)

Loss: NLL(log_softmax(y)) + sum over AFW layers of L_feat (added in training only, as in the code, so the dev loss
that steps the plateau scheduler is the NLL). Training optimisation (`after_backward`, after gradient clipping):
the disparity ratio rho_m = s_m / min s, s_m = sum_i softmax(h_m W_m^T + b/M)[y_i] (raw features and weights,
computed in forward under no_grad), scales modality m's encoder gradients by k_m = 1 - tanh(alpha * rho_m) when
rho_m > 1, then adds N(0, std(g)) noise to them, from epoch `start_mod` on (counted from 1 as the code does).

`parity=True` keeps all five code quirks of spec 4.8. The default (clean) fixes (1) L_feat targets Att_m, not the
gated output Z'_m, and (3) padding masks in the encoders and the AFW pooling (and pads leave L_feat). Quirks 2
(class-axis weight normalisation, no cosine scale), 4 (raw logits in the disparity) and 5 (noise on every
modality, the weakest included) stay in both modes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import masked_cross_entropy, masked_mean
from ..registry import register_head
from ._common import key_padding, primary_categorical, sinusoidal_positions, zero_pads
from .base import Batch, Head, HeadOutput, TaskSpec

ROLE_ORDER = ("a", "t", "v")  # the code's "atv": it fixes the order of the AFW contraction


@dataclass
class Ada2IConfig:
    # Defaults: the IEMOCAP column of spec 4.5 (MELD: hidden 200, rank 6, alpha 0.4, beta 0.55, lr 1.2e-4;
    # MOSEI: hidden 500, rank 10, alpha 0.4, beta 0.2, lr 1.9e-4).
    hidden: int = 300  # H
    rank: int = 11  # R, tensor rank of the AFW cores
    alpha: float = 0.037  # modulation strength (the paper's eta)
    beta: float = 0.01  # Z' = Att * Z + beta * Z
    encoder_layers: int = 2
    ffn_dim: int = 2048  # nn.TransformerEncoderLayer's default, which the code keeps
    afw_layers: int = 2
    dropout: float = 0.5
    input_dropout: float = 0.0  # merc: dropout on the frozen input features (the code has none)
    positions: bool = False  # merc: add sinusoidal positions to the encoders' input (the code has none: the
    # transformer then sees a dialogue as a set of utterances, with no order)
    afw: bool = True  # off: encoder outputs go straight to the classifier ("w/o AFW")
    amw: bool = True  # off: plain concatenation + Linear(M*H -> C) ("w/o AMW")
    modulation: bool = True  # gradient modulation of the encoders by the disparity ratio
    noise: bool = True  # Gaussian noise N(0, std(g)) on the modulated gradients (OGM-GE's GE; code --normalize)
    start_mod: int = 4  # first epoch with modulation, counted from 1 (the trainer's epoch index + 1)
    parity: bool = False  # True: the code's quirks 1-5; False: fixes 1 (L_feat target) and 3 (padding masks)


def encoder_heads(d: int) -> int:
    """nhead of a modality encoder: the smallest h in 5..14 dividing d (1 if none), as the code picks it."""
    return next((h for h in range(5, 15) if d % h == 0), 1)


class ModalityEncoder(nn.Module):
    """TransformerEncoder over the dialogue's utterances, then Linear(d_m -> H)."""

    def __init__(self, d_in: int, cfg: Ada2IConfig):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_in, encoder_heads(d_in), cfg.ffn_dim, cfg.dropout, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.encoder_layers, enable_nested_tensor=False)
        self.out = nn.Linear(d_in, cfg.hidden)
        self.positions = cfg.positions

    def forward(self, x_btd: torch.Tensor, pad_bt: torch.Tensor | None) -> torch.Tensor:
        if self.positions:
            x_btd = x_btd + sinusoidal_positions(x_btd.shape[1], x_btd.shape[2], x_btd.device, x_btd.dtype)
        return self.out(self.transformer(x_btd, src_key_padding_mask=pad_bt))


class AFWLayer(nn.Module):
    """One Adaptive Feature Weighting layer over the M modalities (code: AFWLayer + Attention + AttentionMapping)."""

    def __init__(self, n_modalities: int, cfg: Ada2IConfig):
        super().__init__()
        H, R, M = cfg.hidden, cfg.rank, n_modalities
        self.beta, self.parity = cfg.beta, cfg.parity
        self.q1, self.q2 = nn.ModuleList([nn.Linear(H, R) for _ in range(M)]), nn.ModuleList([nn.Linear(H, R) for _ in range(M)])
        self.k1, self.k2 = nn.ModuleList([nn.Linear(H, R) for _ in range(M)]), nn.ModuleList([nn.Linear(H, R) for _ in range(M)])
        self.att = nn.ModuleList([nn.Linear(R * R, H) for _ in range(M)])
        self.phi = nn.ModuleList([nn.Linear(H, H) for _ in range(M)])  # attention mapping Phi_m
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, z_list: list[torch.Tensor], mask_bt: torch.Tensor | None):
        """z_list: M x [B, T, H] -> (M x [B, T, H] after dropout, L_feat). mask_bt None = pool over pads too."""
        g_list, p_list = [], []
        for m, z_bth in enumerate(z_list):
            g_q = self.q1[m](z_bth)[..., :, None] * self.q2[m](z_bth)[..., None, :]  # [B, T, R, R]
            g_k = self.k1[m](z_bth)[..., :, None] * self.k2[m](z_bth)[..., None, :]
            g_btrr = g_q * g_k
            if mask_bt is None:
                p_brr = g_btrr.mean(dim=1)
            else:
                n_b = mask_bt.sum(dim=1).clamp(min=1).to(g_btrr.dtype)
                p_brr = zero_pads(g_btrr, mask_bt).sum(dim=1) / n_b[:, None, None]
            g_list.append(g_btrr)
            p_list.append(p_brr)

        att_list, gated_list = [], []
        for m, z_bth in enumerate(z_list):
            a_btrr = g_list[m]
            for other, p_brr in enumerate(p_list):
                if other != m:
                    a_btrr = torch.einsum("btkr,bro->btko", a_btrr, p_brr)
            att_bth = self.att[m](a_btrr.flatten(-2))
            att_list.append(att_bth)
            gated_list.append(att_bth * z_bth + self.beta * z_bth)

        # Attention-mapping loss. The code's target is the gated output (a list alias), the paper's is Att_m.
        target = gated_list if self.parity else att_list
        diff = torch.stack([(self.phi[m](z) - t).abs() for m, (z, t) in enumerate(zip(z_list, target, strict=True))])
        if mask_bt is None:
            l_feat = diff.mean()
        else:
            l_feat = masked_mean(diff, mask_bt[None, :, :, None].expand_as(diff))
        return [self.drop(g) for g in gated_list], l_feat


@register_head
class Ada2I(Head):
    name = "ada2i"
    config_cls = Ada2IConfig
    required_roles = ()
    uses_context = True
    description = "Ada2I: transformer encoders + adaptive feature weighting (tensor-ring attention) + cosine modality weighting, gradient modulation"
    defaults = {
        "optim.name": "adam",  # [code] train.py --optimizer adam, optimizer.py (spec 4.5)
        "optim.lr": 1.7e-4,  # [paper] Table 2, IEMOCAP column (the head config's defaults are that column)
        "optim.weight_decay": 1e-8,  # [code] train.py --weight_decay (spec 4.5)
        "optim.grad_clip": 2.0,  # [code] train.py: clip_grad_norm_ max_norm 2.0 (spec 4.4)
        "optim.scheduler": "plateau",  # [code] optimizer.py: ReduceLROnPlateau on the dev loss (spec 4.5)
        "optim.plateau_factor": 0.1,  # [code] PyTorch's default, which optimizer.py keeps (spec 4.5)
        "optim.plateau_patience": 10,  # [code] PyTorch's default (spec 4.5)
        "train.epochs": 50,  # [paper] Table 2; run.sh --epoch=50 (spec 4.5)
        "train.batch_size": 10,  # [paper] Table 2, IEMOCAP and MELD (spec 4.5)
        "train.patience": 20,  # [code] run.sh --early_stopping=20 (spec 4.5)
    }

    def __init__(self, cfg: Ada2IConfig, dims: dict[str, int], tasks: list[TaskSpec]):
        super().__init__(cfg, dims, tasks)
        self.task = primary_categorical(tasks, self.name)
        self.roles = [r for r in ROLE_ORDER if r in dims]
        if not self.roles:
            raise ValueError(f"ada2i needs at least one of the roles {ROLE_ORDER}; got {sorted(dims)}")
        M, H = len(self.roles), cfg.hidden
        self.drop_in = nn.Dropout(cfg.input_dropout)
        self.encoders = nn.ModuleDict({r: ModalityEncoder(dims[r], cfg) for r in self.roles})
        self.afw = nn.ModuleList([AFWLayer(M, cfg) for _ in range(cfg.afw_layers)]) if cfg.afw else nn.ModuleList()
        self.fc_out = nn.Linear(M * H, self.task.out_dim)  # AMW reads its weights per modality slice

    def modality_logits(self, h_list: list[torch.Tensor], cosine: bool) -> list[torch.Tensor]:
        """logit_m = h_m . W_m^T + b / M, with (cosine) h_m L2-normalised over H and W_m^T over the class axis."""
        H, M = self.cfg.hidden, len(h_list)
        out = []
        for m, h in enumerate(h_list):
            w_ch = self.fc_out.weight[:, m * H : (m + 1) * H]
            b_c = self.fc_out.bias / M
            if cosine:
                out.append(F.normalize(h, dim=-1) @ F.normalize(w_ch.T, dim=1) + b_c)
            else:
                out.append(h @ w_ch.T + b_c)
        return out

    def forward(self, batch: Batch) -> HeadOutput:
        cfg = self.cfg
        mask = None if cfg.parity else batch.mask
        pad = None if cfg.parity else key_padding(batch.mask)
        z_list = []
        for r in self.roles:
            z_bth = self.encoders[r](self.drop_in(batch.feats[r]), pad)
            z_list.append(z_bth if mask is None else zero_pads(z_bth, mask))

        l_feat = z_list[0].new_zeros(())
        for layer in self.afw:
            z_list, l_layer = layer(z_list, mask)
            l_feat = l_feat + l_layer

        if cfg.amw:
            y_btc = torch.stack(self.modality_logits(z_list, cosine=True)).sum(dim=0)
        else:
            y_btc = self.fc_out(torch.cat(z_list, dim=-1))
        aux = {"l_feat": l_feat}

        labels = batch.labels.get(self.task.name)
        if labels is not None:  # disparity ratio for the gradient modulation, from raw logits (code: ada2i.py)
            with torch.no_grad():
                keep = (labels >= 0) & batch.mask
                if keep.any():
                    y = labels[keep]
                    scores = torch.stack([
                        F.softmax(z.float(), dim=-1)[keep].gather(1, y[:, None]).sum()
                        for z in self.modality_logits([h.detach() for h in z_list], cosine=False)
                    ])
                    aux["ratio"] = scores / scores.min()
                    aux["scores"] = scores
        return HeadOutput(logits={self.task.name: y_btc}, aux=aux)

    def loss(self, batch: Batch, out: HeadOutput, epoch: int):
        nll = masked_cross_entropy(out.logits[self.task.name], batch.labels[self.task.name])
        total = (nll + out.aux["l_feat"]) if self.training else nll
        return total, {"nll": nll.item(), "l_feat": out.aux["l_feat"].item()}

    def figure_stats(self, batch: Batch, out: HeadOutput) -> dict[str, torch.Tensor]:
        """The paper's Fig. 5: the disparity ratio rho_m of each modality (ROLE_ORDER), summed over the batches
        that computed one (ratio_batches counts them; the epoch's mean is the quotient)."""
        if "ratio" not in out.aux:
            return {}
        ratio_m = out.aux["ratio"].float()
        return {"ratio_sum": ratio_m, "ratio_batches": ratio_m.new_ones(())}

    def figure_axes(self) -> dict[str, list[str]]:
        return {"modalities": list(self.roles)}

    def after_backward(self, batch: Batch, out: HeadOutput, epoch: int) -> None:
        """Scale each modality encoder's (clipped) gradients by k_m, then add N(0, std(g)) noise."""
        cfg = self.cfg
        if not cfg.modulation or epoch + 1 < cfg.start_mod or "ratio" not in out.aux:
            return
        for r, rho in zip(self.roles, out.aux["ratio"].tolist(), strict=True):
            k = modulation_coefficient(rho, cfg.alpha)
            for p in self.encoders[r].parameters():
                if p.grad is None:
                    continue
                p.grad.mul_(k)
                if cfg.noise and p.grad.numel() > 1:
                    p.grad.add_(torch.randn_like(p.grad) * (p.grad.std() + 1e-8))



def modulation_coefficient(rho: float, alpha: float) -> float:
    """k = 1 - tanh(alpha * rho) for a modality ahead of the weakest (rho > 1), else 1."""
    return 1.0 - math.tanh(alpha * rho) if rho > 1 else 1.0


# -- closed-form parameter counts (checked by tests/test_head_ada2i.py) --------------------------------------


def encoder_params(d: int, cfg: Ada2IConfig) -> int:
    F_ = cfg.ffn_dim
    layer = (3 * d * d + 3 * d) + (d * d + d) + (d * F_ + F_) + (F_ * d + d) + 4 * d  # attn, FFN, two LayerNorms
    return cfg.encoder_layers * layer + d * cfg.hidden + cfg.hidden


def afw_layer_params(cfg: Ada2IConfig, n_modalities: int) -> int:
    H, R = cfg.hidden, cfg.rank
    return n_modalities * (4 * (H * R + R) + (R * R * H + H) + (H * H + H))


def classifier_params(cfg: Ada2IConfig, n_modalities: int, n_classes: int) -> int:
    return n_modalities * cfg.hidden * n_classes + n_classes
