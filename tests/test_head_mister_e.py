import math

import pytest
import torch
from head_batches import EMOTION, assert_all_grads, assert_valid_outputs_equal, make_batch, repad

from merc.heads import losses
from merc.heads.models import _common
from merc.heads.models.mister_e import (
    MisterE,
    MisterEConfig,
    context_expert_params,
    fusion_expert_params,
    gate_params,
)
from merc.heads.registry import build_head

torch.set_num_threads(1)

DIMS = {"t": 12, "a": 10}
TINY = dict(hidden=16, gru_hidden=8, gru_layers=2, fusion_layers=2, attn_dim=12, attn_heads=3)


def tiny(**kw) -> MisterE:
    torch.manual_seed(0)
    return build_head("mister-e", DIMS, [EMOTION], {**TINY, **kw})


@pytest.mark.parametrize("parity", [False, True])
def test_forward_backward_all_params_get_grads(parity):
    model = tiny(parity=parity)
    batch = make_batch(DIMS)
    out = model(batch)
    assert out.logits["emotion"].shape == (3, 5, 4)
    loss, terms = model.loss(batch, out, epoch=0)
    assert set(terms) == {"focal", "supcon", "kl"} and all(math.isfinite(v) for v in terms.values())
    loss.backward()
    assert_all_grads(model)


@pytest.mark.parametrize("gating", ["soft", "mean", "top1"])
def test_padding_invariance_clean(gating):
    model = tiny(gating=gating).eval()
    batch = make_batch(DIMS)
    with torch.no_grad():
        assert_valid_outputs_equal(model(batch), model(repad(batch)), batch)


def test_parity_mode_is_not_padding_invariant():
    model = tiny(parity=True).eval()
    batch = make_batch(DIMS)
    with torch.no_grad():
        y1, y2 = model(batch).logits["emotion"], model(repad(batch)).logits["emotion"][:, :5]
    assert not torch.allclose(y1[batch.mask], y2[batch.mask], atol=1e-4)


def test_gating_mean_gives_equal_weights_and_top1_is_one_hot():
    batch = make_batch(DIMS)
    out = tiny(gating="mean")(batch)
    torch.testing.assert_close(out.aux["gate"], torch.full_like(out.aux["gate"], 1 / 3))
    z = out.aux["expert_logits"]
    torch.testing.assert_close(out.logits["emotion"], z.mean(dim=-2))
    g = tiny(gating="top1")(batch).aux["gate"]
    torch.testing.assert_close(g.detach(), torch.nn.functional.one_hot(g.argmax(-1), 3).float())


def test_soft_gate_is_softmax_over_temperature():
    model = tiny()
    out = model(make_batch(DIMS))
    z = out.aux["expert_logits"]
    B, T, E, C = z.shape
    expected = torch.softmax(model.gate(z.reshape(B, T, E * C)) / 2.0, dim=-1)
    torch.testing.assert_close(out.aux["gate"], expected)
    torch.testing.assert_close(out.logits["emotion"], (expected[..., None] * z).sum(-2))


@pytest.mark.parametrize("flags", [
    dict(use_fusion_expert=False), dict(use_speech_expert=False, use_text_expert=False), dict(use_speech_expert=False),
])
def test_expert_subsets(flags):
    model = tiny(**flags)
    batch = make_batch(DIMS)
    out = model(batch)
    n_on = 3 - sum(not v for v in flags.values())
    assert out.aux["expert_logits"].shape[2] == n_on
    loss, terms = model.loss(batch, out, 0)
    loss.backward()
    assert_all_grads(model)
    if not flags.get("use_fusion_expert", True):
        assert terms["supcon"] == 0.0


def test_total_loss_is_focal_plus_weighted_supcon_and_kl():
    model = tiny()
    batch = make_batch(DIMS)
    out = model(batch)
    loss, t = model.loss(batch, out, 0)
    assert loss.item() == pytest.approx(t["focal"] + 2.0 * t["supcon"] + 0.1 * t["kl"], rel=1e-5)
    y = batch.labels["emotion"]
    z = out.aux["expert_logits"]
    outputs = [out.logits["emotion"], z[:, :, 0], z[:, :, 1], z[:, :, 2]]
    focal = sum(losses.focal_loss(x, y, gamma=3.0) for x in outputs)
    assert t["focal"] == pytest.approx(focal.item(), rel=1e-5)


# -- loss terms against hand computation ---------------------------------------------------------------------


def _softmax(v):
    e = [math.exp(x) for x in v]
    return [x / sum(e) for x in e]


def test_focal_loss_by_hand():
    logits = torch.tensor([[[1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [2.0, 2.0, 2.0]]])  # B=1, T=3, C=3
    labels = torch.tensor([[0, 2, -1]])
    hand = []
    for z, y in zip(logits[0].tolist()[:2], [0, 2], strict=True):
        p = _softmax(z)[y]
        hand.append((1 - p) ** 3 * -math.log(p))
    assert losses.focal_loss(logits, labels, gamma=3.0).item() == pytest.approx(sum(hand) / 2, rel=1e-6)
    with_pads = losses.focal_loss(logits, labels, gamma=3.0, count_pads=True)
    assert with_pads.item() == pytest.approx(sum(hand) / 3, rel=1e-6)
    assert losses.focal_loss(logits, labels, gamma=0.0).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits[0], labels[0], ignore_index=-1).item(), rel=1e-6)


def test_supcon_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, -1.0], [3.0, 0.0]])
    y = torch.tensor([0, 1, 0])
    tau = 0.5
    r = [v / math.hypot(*v) for v in [torch.tensor(x) for x in a.tolist() + t.tolist()]]
    labels = y.tolist() * 2
    n = len(r)
    total = 0.0
    for i in range(n):
        s = [float(r[i] @ r[k]) / tau for k in range(n)]
        log_den = math.log(sum(math.exp(s[k]) for k in range(n) if k != i))
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        total += -sum(s[p] - log_den for p in pos) / len(pos)
    assert losses.supcon_loss(a, t, y, tau).item() == pytest.approx(total / n, rel=1e-5)


def test_supcon_positives_include_other_view_and_same_label():
    # two utterances of different labels: each anchor's only positive is its other-modality view
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1])
    # sims (tau=1): self-view pair 1, cross-label pairs 0 -> l_i = -(1 - log(e + 2))
    expected = -(1 - math.log(math.e + 2))
    assert losses.supcon_loss(a, t, y, 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_symmetric_kl_by_hand():
    g = torch.Generator().manual_seed(3)
    z = [torch.randn(2, 3, 4, generator=g) for _ in range(3)]
    mask = torch.tensor([[True, True, False], [True, False, False]])

    def kl(p, q):
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))

    for use_mask in (False, True):
        total = 0.0
        for i, j in [(0, 1), (0, 2), (1, 2)]:
            s = 0.0
            for b in range(2):
                for t_ in range(3):
                    if use_mask and not mask[b, t_]:
                        continue
                    p, q = _softmax(z[i][b, t_].tolist()), _softmax(z[j][b, t_].tolist())
                    s += kl(p, q) + kl(q, p)
            total += s / 2  # batchmean: divided by B
        got = losses.symmetric_kl(z, mask if use_mask else None).item()
        assert got == pytest.approx(total / 3, rel=1e-5)


def test_clean_losses_ignore_pads_parity_counts_them():
    batch = make_batch(DIMS)
    model = tiny()
    out = model(batch)
    y = batch.labels["emotion"]
    keep = y >= 0
    _, t = model.loss(batch, out, 0)
    expected = losses.supcon_loss(out.aux["a_f"][keep], out.aux["t_f"][keep], y[keep], 1.0)
    assert t["supcon"] == pytest.approx(expected.item(), rel=1e-5)
    model.cfg.parity = True
    _, tp = model.loss(batch, out, 0)
    a_f, t_f = out.aux["a_f"].flatten(0, 1), out.aux["t_f"].flatten(0, 1)
    expected_p = losses.supcon_loss(a_f, t_f, y.flatten(), 1.0)
    assert tp["supcon"] == pytest.approx(expected_p.item(), rel=1e-5)
    assert tp["focal"] < t["focal"]  # same numerators, pads in the denominators


# -- parameter counts -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dims", [{"t": 2048, "a": 2048}, {"t": 768, "a": 1024}])
def test_param_counts_match_closed_form_for_default_config(dims):
    cfg = MisterEConfig()
    with torch.device("meta"):
        model = MisterE(cfg, dims, [EMOTION])
    count = _common.count_params
    assert count(model.speech) == context_expert_params(dims["a"], cfg, 4)
    assert count(model.text) == context_expert_params(dims["t"], cfg, 4)
    assert count(model.fusion) == fusion_expert_params(dims["a"], dims["t"], cfg, 4)
    assert count(model.gate) == gate_params(cfg, 3, 4)
    assert count(model) == (context_expert_params(dims["a"], cfg, 4) + context_expert_params(dims["t"], cfg, 4)
                            + fusion_expert_params(dims["a"], dims["t"], cfg, 4) + gate_params(cfg, 3, 4))


def test_declared_defaults_follow_spec():
    from merc.heads.config import head_defaults

    d = head_defaults(MisterE)
    assert (d["optim.name"], d["optim.lr"], d["optim.weight_decay"], d["optim.grad_clip"]) == ("adam", 1e-5, 0.0, 1.0)
    assert (d["train.epochs"], d["train.batch_size"], d["train.batch_unit"]) == (100, 8, "dialogue")


def test_rejects_non_categorical_primary():
    from head_batches import SENTIMENT
    with pytest.raises(ValueError, match="categorical"):
        MisterE(MisterEConfig(**TINY), DIMS, [SENTIMENT])


def test_rejects_extra_tasks():
    from head_batches import SENTIMENT
    with pytest.raises(ValueError, match="--task emotion"):
        MisterE(MisterEConfig(**TINY), DIMS, [EMOTION, SENTIMENT])
