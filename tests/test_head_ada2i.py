import math

import pytest
import torch
import torch.nn.functional as F
from head_batches import EMOTION, assert_all_grads, assert_valid_outputs_equal, make_batch, repad

from merc.heads.models._common import count_params
from merc.heads.models.ada2i import (
    Ada2I,
    Ada2IConfig,
    AFWLayer,
    afw_layer_params,
    classifier_params,
    encoder_heads,
    encoder_params,
    modulation_coefficient,
)
from merc.heads.registry import build_head

torch.set_num_threads(1)

DIMS = {"t": 10, "a": 12, "v": 7}
TINY = dict(hidden=12, rank=3, ffn_dim=16)


def tiny(dims=DIMS, **kw) -> Ada2I:
    torch.manual_seed(0)
    return build_head("ada2i", dims, [EMOTION], {**TINY, **kw})


@pytest.mark.parametrize("parity", [False, True])
def test_forward_backward_all_params_get_grads(parity):
    model = tiny(parity=parity)
    assert model.roles == ["a", "t", "v"]
    batch = make_batch(DIMS)
    out = model(batch)
    assert out.logits["emotion"].shape == (3, 5, 4)
    loss, terms = model.loss(batch, out, 0)
    assert loss.item() == pytest.approx(terms["nll"] + terms["l_feat"], rel=1e-5)
    loss.backward()
    assert_all_grads(model)


@pytest.mark.parametrize("flags", [dict(afw=False), dict(amw=False), dict(afw=False, amw=False)])
def test_ablations_run(flags):
    model = tiny(**flags)
    batch = make_batch(DIMS)
    out = model(batch)
    loss, _ = model.loss(batch, out, 0)
    loss.backward()
    assert_all_grads(model)
    assert len(model.afw) == (0 if flags.get("afw") is False else 2)


@pytest.mark.parametrize("dims", [DIMS, {"t": 10, "a": 12}, {"t": 10}])
def test_padding_invariance_clean(dims):
    model = tiny(dims).eval()
    batch = make_batch(dims)
    with torch.no_grad():
        assert_valid_outputs_equal(model(batch), model(repad(batch)), batch)


def test_parity_is_not_padding_invariant():
    model = tiny(parity=True).eval()
    batch = make_batch(DIMS)
    with torch.no_grad():
        y1, y2 = model(batch).logits["emotion"], model(repad(batch)).logits["emotion"][:, :5]
    assert not torch.allclose(y1[batch.mask], y2[batch.mask], atol=1e-4)


def test_eval_loss_is_the_nll_only():
    model = tiny()
    batch = make_batch(DIMS)
    model.eval()
    out = model(batch)
    loss, terms = model.loss(batch, out, 0)
    assert terms["l_feat"] > 0 and loss.item() == pytest.approx(terms["nll"], rel=1e-6)


def test_encoder_heads_rule():
    assert [encoder_heads(d) for d in (768, 512, 1024, 300, 342, 100, 13)] == [6, 8, 8, 5, 6, 5, 13]
    assert encoder_heads(17) == 1


# -- AFW and its attention-mapping loss by hand ------------------------------------------------------------------


def _afw_by_hand(layer: AFWLayer, z_list, mask, parity: bool, beta: float):
    """Per-utterance loops: outer-product cores, pooled cores, contraction, gating, L1 target."""
    M = len(z_list)
    B, T, H = z_list[0].shape
    G = [[[None] * T for _ in range(B)] for _ in range(M)]
    P = [[None] * B for _ in range(M)]
    for m in range(M):
        for b in range(B):
            for t in range(T):
                z = z_list[m][b, t]
                gq = torch.outer(layer.q1[m](z), layer.q2[m](z))
                gk = torch.outer(layer.k1[m](z), layer.k2[m](z))
                G[m][b][t] = gq * gk
            ts = range(T) if mask is None else [t for t in range(T) if mask[b, t]]
            P[m][b] = sum(G[m][b][t] for t in ts) / len(ts)
    total, count = 0.0, 0
    for m in range(M):
        for b in range(B):
            for t in range(T):
                a = G[m][b][t]
                for other in range(M):
                    if other != m:
                        a = a @ P[other][b]
                att = layer.att[m](a.reshape(-1))
                gated = att * z_list[m][b, t] + beta * z_list[m][b, t]
                target = gated if parity else att
                if mask is None or mask[b, t]:
                    total += (layer.phi[m](z_list[m][b, t]) - target).abs().sum().item()
                    count += H
    return total / count


@pytest.mark.parametrize("parity", [False, True])
def test_l_feat_by_hand(parity):
    torch.manual_seed(1)
    cfg = Ada2IConfig(hidden=5, rank=2, beta=0.3, parity=parity)
    layer = AFWLayer(3, cfg).eval()
    z_list = [torch.randn(2, 3, 5) for _ in range(3)]
    mask = None if parity else torch.tensor([[True, True, False], [True, False, False]])
    with torch.no_grad():
        _, l_feat = layer(z_list, mask)
        expected = _afw_by_hand(layer, z_list, mask, parity, beta=0.3)
    assert l_feat.item() == pytest.approx(expected, rel=1e-5)


def test_afw_output_is_gated_feature():
    torch.manual_seed(2)
    cfg = Ada2IConfig(hidden=4, rank=2, beta=0.5)
    layer = AFWLayer(1, cfg).eval()  # one modality: no contraction, A = G
    z = torch.randn(1, 2, 4)
    with torch.no_grad():
        (out,), _ = layer([z], None)
        g = (layer.q1[0](z)[..., :, None] * layer.q2[0](z)[..., None, :]) * (layer.k1[0](z)[..., :, None] * layer.k2[0](z)[..., None, :])
        att = layer.att[0](g.flatten(-2))
    torch.testing.assert_close(out, att * z + 0.5 * z)


# -- AMW, disparity ratio, modulation ---------------------------------------------------------------------------


def test_amw_logits_normalise_features_and_class_axis_of_weights():
    model = tiny().eval()
    batch = make_batch(DIMS)
    H, M = 12, 3
    h = [torch.randn(5, H) for _ in range(M)]
    got = model.modality_logits(h, cosine=True)
    W, b = model.fc_out.weight, model.fc_out.bias
    for m in range(M):
        w_hc = W[:, m * H : (m + 1) * H].T  # [H, C]
        w_hc = w_hc / w_hc.norm(dim=1, keepdim=True)  # each H row over the C classes
        expected = (h[m] / h[m].norm(dim=1, keepdim=True)) @ w_hc + b / M
        torch.testing.assert_close(got[m], expected)
    assert model(batch).logits["emotion"].shape == (3, 5, 4)


def test_disparity_ratio_by_hand():
    model = tiny()
    model.eval()
    batch = make_batch(DIMS)
    out = model(batch)
    # recompute from the AFW outputs: rerun the modules step by step
    with torch.no_grad():
        pad = ~batch.mask
        z = [torch.where(batch.mask[..., None], model.encoders[r](batch.feats[r], pad), 0.0) for r in model.roles]
        for layer in model.afw:
            z, _ = layer(z, batch.mask)
        y = batch.labels["emotion"]
        s = []
        for m, zm in enumerate(z):
            W = model.fc_out.weight[:, m * 12 : (m + 1) * 12]
            total = 0.0
            for b in range(3):
                for t in range(5):
                    if batch.mask[b, t] and y[b, t] >= 0:
                        p = F.softmax(zm[b, t] @ W.T + model.fc_out.bias / 3, dim=-1)
                        total += p[y[b, t]].item()
            s.append(total)
    expected = [v / min(s) for v in s]
    assert out.aux["ratio"].tolist() == pytest.approx(expected, rel=1e-5)
    assert min(out.aux["ratio"].tolist()) == pytest.approx(1.0)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_modulation_scales_encoder_grads_by_one_minus_tanh():
    model = tiny(noise=False, alpha=0.4)
    batch = make_batch(DIMS)
    out = model(batch)
    model.loss(batch, out, 0)[0].backward()
    out.aux["ratio"] = torch.tensor([1.0, 2.5, 1.7])  # a, t, v
    before = _grads(model)
    model.after_backward(batch, out, epoch=3)  # 0-based epoch 3 = the 4th epoch = start_mod
    k = {"a": 1.0, "t": 1 - math.tanh(0.4 * 2.5), "v": 1 - math.tanh(0.4 * 1.7)}
    assert modulation_coefficient(2.5, 0.4) == pytest.approx(k["t"]) and modulation_coefficient(0.9, 0.4) == 1.0
    for name, p in model.named_parameters():
        role = name.split(".")[1] if name.startswith("encoders.") else None
        expected = before[name] * (k[role] if role else 1.0)
        torch.testing.assert_close(p.grad, expected)


def test_modulation_uses_the_forward_ratio():
    model = tiny(noise=False)
    batch = make_batch(DIMS)
    out = model(batch)
    model.loss(batch, out, 0)[0].backward()
    before = _grads(model)
    model.after_backward(batch, out, epoch=10)
    for i, r in enumerate(model.roles):
        k = modulation_coefficient(out.aux["ratio"][i].item(), 0.037)
        for name, p in model.encoders[r].named_parameters():
            torch.testing.assert_close(p.grad, before[f"encoders.{r}.{name}"] * k)


@pytest.mark.parametrize("kw,epoch", [(dict(modulation=False), 10), (dict(), 2)])
def test_no_modulation_leaves_grads_untouched(kw, epoch):
    model = tiny(**kw)
    batch = make_batch(DIMS)
    out = model(batch)
    model.loss(batch, out, 0)[0].backward()
    out.aux["ratio"] = torch.tensor([1.0, 3.0, 2.0])
    before = _grads(model)
    model.after_backward(batch, out, epoch=epoch)
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, before[name]), name


def test_noise_is_added_to_encoder_grads_only():
    model = tiny(noise=True)
    batch = make_batch(DIMS)
    out = model(batch)
    model.loss(batch, out, 0)[0].backward()
    out.aux["ratio"] = torch.tensor([1.0, 1.0, 1.0])  # k = 1: only the noise changes grads
    before = _grads(model)
    torch.manual_seed(5)
    model.after_backward(batch, out, epoch=10)
    w = "encoders.t.transformer.layers.0.linear1.weight"
    g = dict(model.named_parameters())[w].grad
    assert not torch.equal(g, before[w]) and torch.isfinite(g).all()
    noise_std = (g - before[w]).std().item()
    assert noise_std == pytest.approx(before[w].std().item(), rel=0.3)
    assert torch.equal(model.fc_out.weight.grad, before["fc_out.weight"])


# -- parameter counts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dims,n_classes", [({"a": 512, "t": 768, "v": 1024}, 6), ({"a": 300, "t": 768, "v": 342}, 7)])
def test_param_counts_match_closed_form_for_default_config(dims, n_classes):
    cfg = Ada2IConfig()
    task = EMOTION.__class__("emotion", "categorical", tuple(str(i) for i in range(n_classes)))
    with torch.device("meta"):
        model = Ada2I(cfg, dims, [task])
    for layer in model.afw:
        assert count_params(layer) == afw_layer_params(cfg, 3)
    for r, d in dims.items():
        assert count_params(model.encoders[r]) == encoder_params(d, cfg)
    assert count_params(model.fc_out) == classifier_params(cfg, 3, n_classes)
    assert count_params(model) == (sum(encoder_params(d, cfg) for d in dims.values()) + 2 * afw_layer_params(cfg, 3)
                                   + classifier_params(cfg, 3, n_classes))


def test_declared_defaults_follow_spec():
    from merc.heads.config import head_defaults

    d = head_defaults(Ada2I)
    assert (d["optim.name"], d["optim.lr"], d["optim.weight_decay"], d["optim.grad_clip"], d["optim.scheduler"]) == (
        "adam", 1.7e-4, 1e-8, 2.0, "plateau")
