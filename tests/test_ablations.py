"""Every ablation switch of the paper heads changes the computation the way its paper describes it
(parameters, routing or loss terms), and the one losses module (heads/losses.py) gives the numbers that the
two old ones gave.

    MMoLRE   (spec 3)        ablation none | pre_fusion | post_fusion, mixed shared-expert ranks, residual
    SUMMER   (spec 2.2, 2.3) SDMoE sparse routing at the default 4 experts, sdmoe=false, student loss terms
    MiSTER-E (spec 1.2)      gating soft | mean | top1; use_speech_expert, use_text_expert, use_fusion_expert
    Ada2I    (spec 4.2, 4.4) afw, amw, modulation; merc's positions and input_dropout
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from head_batches import EMOTION, EMOTIONS, SENTIMENT, make_batch

from merc.heads import losses
from merc.heads.models._common import count_params, zero_pads
from merc.heads.models.ada2i import afw_layer_params, classifier_params, encoder_params
from merc.heads.models.mister_e import MisterEConfig, context_expert_params, fusion_expert_params, gate_params
from merc.heads.models.mmolre import (
    ABLATIONS,
    MMoLRE,
    MMoLREConfig,
    UniTSEBlock,
    param_count_formula,
)
from merc.heads.registry import build_head

torch.set_num_threads(1)


def named(model: torch.nn.Module, prefix: str) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.startswith(prefix)]


# -- MMoLRE -------------------------------------------------------------------------------------------------

MM_DIMS = {"t": 16, "a": 12}
MM_FRAMES = {"t": 6, "a": 8}
MM_TINY = dict(d_model=16, experts=4, rank=3, top_k=2, task_rank=4, heads=2, ffn_dim=24, fusion_layers=2,
               mlp_hidden=8)
MSA_MER = [SENTIMENT, EMOTIONS]


def mmolre(**kw) -> MMoLRE:
    torch.manual_seed(0)
    return build_head("mmolre", MM_DIMS, MSA_MER, {**MM_TINY, **kw})


def mm_batch(seed: int = 0):
    return make_batch(MM_DIMS, tasks=tuple(MSA_MER), frames=MM_FRAMES, seed=seed)


def test_mmolre_ablations_build_the_parts_the_paper_names():
    unitse, fusion, total = {}, {}, {}  # per ablation: UniTSE tensors, fusion networks, parameters
    for ablation in ABLATIONS:
        model = mmolre(ablation=ablation)
        formula = param_count_formula(model.cfg, 16, out_dims=(1, 6), input_dims=MM_DIMS)
        assert count_params(model) == formula["total"]
        unitse[ablation], fusion[ablation] = len(named(model, "unitse.")), len(model.fusion)
        total[ablation] = count_params(model)
    assert unitse["none"] > 0 and unitse["pre_fusion"] == unitse["post_fusion"] == 0  # no UniTSE in either,
    assert fusion == {"none": 2, "pre_fusion": 2, "post_fusion": 1}  # and post_fusion shares one fusion
    assert total["pre_fusion"] - total["post_fusion"] == count_params(mmolre().fusion[0])
    unitse_params = param_count_formula(MMoLREConfig(**MM_TINY), 16, input_dims=MM_DIMS)["unitse"]
    assert total["none"] - total["pre_fusion"] == unitse_params


def test_mmolre_unknown_ablation_lists_the_valid_ones():
    with pytest.raises(ValueError, match="none, pre_fusion, post_fusion"):
        mmolre(ablation="pre")


def test_pre_fusion_is_the_model_without_unitse():
    """With residual blocks whose experts output 0, UniTSE is the identity: the full model then computes
    exactly what pre_fusion computes with the same fusion and output weights; with working experts they
    differ."""
    full, pre = mmolre(residual=True), mmolre(ablation="pre_fusion")
    missing, unexpected = pre.load_state_dict(full.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("unitse.") for k in unexpected)
    full.eval(), pre.eval()
    batch = mm_batch()
    with torch.no_grad():
        y_pre = pre(batch).logits
        y_full = full(batch).logits
        for name, p in full.unitse.named_parameters():
            if name.endswith(("up_weight", "up_bias")):
                p.zero_()
        y_identity = full(batch).logits
    for task in ("sentiment", "emotions"):
        torch.testing.assert_close(y_identity[task], y_pre[task])
        assert not torch.allclose(y_full[task], y_pre[task], atol=1e-4)


def _output_inputs(model: MMoLRE, batch) -> dict[str, torch.Tensor]:
    """The representation each task's output layers read."""
    seen = {}
    def keep(name):
        return lambda _module, args: seen.__setitem__(name, args[0])

    hooks = [model.out[name].register_forward_pre_hook(keep(name)) for name in model.out]
    with torch.no_grad():
        model.eval()(batch)
    for h in hooks:
        h.remove()
    return seen


def test_post_fusion_tasks_share_one_fused_representation_pre_fusion_does_not():
    batch = mm_batch()
    post = _output_inputs(mmolre(ablation="post_fusion"), batch)
    torch.testing.assert_close(post["sentiment"], post["emotions"])
    pre = _output_inputs(mmolre(ablation="pre_fusion"), batch)
    assert not torch.allclose(pre["sentiment"], pre["emotions"], atol=1e-4)


def test_mixed_ranks_parameter_count_is_the_closed_form():
    """Table III's increasing ranks 16, 24, ..., 128 over N = 15 shared experts at d = 768."""
    d, ranks = 768, tuple(16 + 8 * n for n in range(15))
    with torch.device("meta"):
        block = UniTSEBlock(d, MMoLREConfig(experts=15, rank=ranks), n_tasks=2)
        equal = UniTSEBlock(d, MMoLREConfig(experts=15, rank=72), n_tasks=2)  # 72 = mean of 16..128
    # expert n: Conv1d(d -> r_n, k=3) + Conv1d(r_n -> d, k=1), with biases: r_n (3d + 1) + (r_n d + d)
    closed_form = sum(r * (3 * d + d + 1) + d for r in ranks)
    assert count_params(block.shared) == closed_form == 15 * 72 * (4 * d + 1) + 15 * d
    assert count_params(block.shared) == count_params(equal.shared)
    assert block.shared.down.out_channels == sum(ranks) == 1080
    cfg = MMoLREConfig(experts=15, rank=ranks, top_k=8)
    with torch.device("meta"):
        model = MMoLRE(cfg, {"t": 768, "a": 768}, MSA_MER)
    assert count_params(model) == param_count_formula(cfg, 768)["total"]


def test_rank_tuple_must_give_one_rank_per_expert():
    with pytest.raises(ValueError, match="2 ranks for experts=4"):
        mmolre(rank=(3, 5))
    with pytest.raises(ValueError, match=">= 1"):
        mmolre(rank=(3, 0, 2, 2))
    mmolre(rank=[1, 2, 3, 4])  # a list, as head_config.json gives the tuple back


def test_int_rank_equals_the_same_rank_for_every_expert():
    batch = mm_batch()
    a, b = mmolre(rank=3).eval(), mmolre(rank=(3, 3, 3, 3)).eval()
    same = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in same)
    with torch.no_grad():
        torch.testing.assert_close(a(batch).logits["emotions"], b(batch).logits["emotions"], rtol=0, atol=0)


def test_residual_adds_the_block_input_eq1_does_not():
    torch.manual_seed(0)
    cfg = MMoLREConfig(experts=3, rank=2, top_k=2, task_rank=3)
    plain = UniTSEBlock(8, cfg, n_tasks=2)
    residual = UniTSEBlock(8, dataclasses.replace(cfg, residual=True), n_tasks=2)
    residual.load_state_dict(plain.state_dict())
    xs = [torch.randn(2, 8, 6), torch.randn(2, 8, 6)]
    mask = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    (h_sa, h_er), _ = plain(xs, mask)
    (r_sa, r_er), _ = residual(xs, mask)
    for h, r, x in ((h_sa, r_sa, xs[0]), (h_er, r_er, xs[1])):
        torch.testing.assert_close(r - h, zero_pads(x.transpose(1, 2), mask).transpose(1, 2))
    assert not MMoLREConfig().residual  # the default follows Eq. 1


# -- SUMMER -------------------------------------------------------------------------------------------------

SU_DIMS = {"t": 12, "a": 10, "v": 7}
SU_TINY = dict(d_model=16, heads=2, global_experts=2, max_speakers=4)  # n_experts: the default 4


def summer(**kw):
    torch.manual_seed(0)
    return build_head("summer", SU_DIMS, [EMOTION], {**SU_TINY, **kw})


def su_batch():
    return make_batch(SU_DIMS, lengths=(9, 7, 4))


def _routes(model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Wrap every SDMoE's route() to record (weights, switched off) of the next forward passes."""
    seen = []
    for moe in [model.teacher.sdmoe, *model.student.sdmoe.values()]:
        original = moe.route

        def route(logits, mask, original=original):
            w, off = original(logits, mask)
            seen.append((w, off))
            return w, off

        moe.route = route
    return seen


@pytest.mark.parametrize("stage", ["teacher", "student"])
@pytest.mark.parametrize("train", [False, True])
def test_sdmoe_switches_experts_off_at_the_default_four(stage, train):
    model = summer()
    assert model.cfg.n_experts == 4
    model.set_stage(stage)
    model.train(train)
    seen = _routes(model)
    batch = su_batch()
    out = model(batch)
    _, terms = model.loss(batch, out, 0)
    assert 0 < terms["sdmoe_off"] < 0.5
    # the routes of this stage's own SDMoE modules (in the student stage, the frozen teacher's come first)
    own = seen[1:] if stage == "student" else seen
    n_off = sum(int(off.sum()) for _, off in own)
    assert terms["sdmoe_off"] == pytest.approx(n_off / (int(batch.mask.sum()) * 4 * len(own)))
    for w, off in own:
        assert (w[off] == 0).all() and (w[batch.mask].sum(-1) - 1).abs().max() < 1e-5
        assert not off[~batch.mask].any()


def test_sdmoe_false_is_a_dense_deterministic_softmax_moe():
    batch = su_batch()
    dense = summer(sdmoe=False, dropout=0.0)
    dense.set_stage("student")
    seen = _routes(dense)
    for mode in (False, True):  # no threshold, no Gumbel noise: the same output twice, in eval and training
        dense.train(mode)
        with torch.no_grad():
            y1, y2 = dense(batch), dense(batch)
        torch.testing.assert_close(y1.logits["emotion"], y2.logits["emotion"], rtol=0, atol=0)
        assert y1.aux["sdmoe_off"].item() == 0.0
    assert all(not off.any() and (w[batch.mask] > 0).all() for w, off in seen)
    sparse = summer(dropout=0.0)  # the Gumbel noise of SDMoE makes training forwards differ
    sparse.set_stage("student")
    sparse.train()
    with torch.no_grad():
        assert not torch.equal(sparse(batch).logits["emotion"], sparse(batch).logits["emotion"])


def test_summer_student_loss_is_l_ikd_plus_feature_mse_without_a_second_ce():
    model = summer()
    model.set_stage("student")
    model.eval()
    batch = su_batch()
    out = model(batch)
    total, terms = model.loss(batch, out, 0)
    assert "ce" not in terms
    l_ikd = terms["kd"] + terms["align"] + terms["smooth"]
    assert total.item() == pytest.approx(l_ikd + terms["mse"], rel=1e-5)
    y, z = batch.labels["emotion"], out.logits["emotion"]
    keep = y >= 0
    smooth = F.cross_entropy(z[keep], y[keep], label_smoothing=0.1)
    assert terms["smooth"] == pytest.approx(smooth.item(), rel=1e-5)
    model.cfg.ce_weight = 1.0  # the spec's "Total [default]": CE on top
    total_ce, terms_ce = model.loss(batch, out, 0)
    assert total_ce.item() - total.item() == pytest.approx(F.cross_entropy(z[keep], y[keep]).item(), rel=1e-4)
    with pytest.raises(ValueError, match="every student loss weight is 0"):
        summer(kd_weight=0, align_weight=0, smooth_weight=0, mse_weight=0)


# -- MiSTER-E -----------------------------------------------------------------------------------------------

ME_DIMS = {"t": 12, "a": 10}
ME_TINY = dict(hidden=16, gru_hidden=8, gru_layers=2, fusion_layers=2, attn_dim=12, attn_heads=3)


def mister_e(**kw):
    torch.manual_seed(0)
    return build_head("mister-e", ME_DIMS, [EMOTION], {**ME_TINY, **kw})


@pytest.mark.parametrize("gating", ["soft", "mean", "top1"])
def test_mister_e_gating(gating):
    model = mister_e(gating=gating)
    cfg = model.cfg
    batch = make_batch(ME_DIMS)
    out = model(batch)
    g = out.aux["gate"]
    if gating == "mean":  # no gate network: a uniform average of the three experts' logits
        assert model.gate is None and not named(model, "gate.")
        torch.testing.assert_close(g, torch.full_like(g, 1 / 3))
    else:
        assert count_params(model.gate) == gate_params(cfg, 3, 4)
    if gating == "top1":  # one expert per utterance forward, the soft gate's gradient backward
        torch.testing.assert_close(g.detach(), F.one_hot(g.argmax(-1), 3).float())  # hard + g - g.detach()
    z = out.aux["expert_logits"]
    torch.testing.assert_close(out.logits["emotion"], (g.unsqueeze(-1) * z).sum(-2))
    loss, _ = model.loss(batch, out, 0)
    loss.backward()
    if model.gate is not None:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.gate.parameters())


@pytest.mark.parametrize("off", ["speech", "text", "fusion"])
def test_mister_e_expert_switches_remove_the_expert(off):
    model = mister_e(**{f"use_{off}_expert": False})
    cfg = MisterEConfig(**ME_TINY)
    assert not named(model, f"{off}.") and getattr(model, off) is None
    expected = {"speech": context_expert_params(10, cfg, 4), "text": context_expert_params(12, cfg, 4),
                "fusion": fusion_expert_params(10, 12, cfg, 4)}
    expected.pop(off)
    assert count_params(model) == sum(expected.values()) + gate_params(cfg, 2, 4)
    batch = make_batch(ME_DIMS)
    out = model(batch)
    assert out.aux["expert_logits"].shape[2] == 2
    assert model.experts_on == [e for e in ("speech", "text", "fusion") if e != off]
    _, terms = model.loss(batch, out, 0)
    assert (terms["supcon"] == 0.0) == (off == "fusion")  # SupCon reads the fusion expert's A_f, T_f


def test_mister_e_single_expert_has_no_gate_and_no_agreement_loss():
    model = mister_e(use_speech_expert=False, use_text_expert=False)
    batch = make_batch(ME_DIMS)
    out = model(batch)
    _, terms = model.loss(batch, out, 0)
    assert model.gate is None and terms["kl"] == 0.0
    torch.testing.assert_close(out.logits["emotion"], out.aux["expert_logits"][:, :, 0])


# -- Ada2I --------------------------------------------------------------------------------------------------

AD_DIMS = {"t": 10, "a": 12, "v": 7}
AD_TINY = dict(hidden=12, rank=3, ffn_dim=16)


def ada2i(**kw):
    torch.manual_seed(0)
    return build_head("ada2i", AD_DIMS, [EMOTION], {**AD_TINY, **kw})


def _encoded(model, batch) -> list[torch.Tensor]:
    pad = ~batch.mask
    return [zero_pads(model.encoders[r](batch.feats[r], pad), batch.mask) for r in model.roles]


def test_ada2i_without_afw_has_no_afw_layers_and_no_feature_loss():
    model = ada2i(afw=False).eval()
    cfg = model.cfg
    assert not named(model, "afw.")
    encoders = sum(encoder_params(d, cfg) for d in AD_DIMS.values())
    assert count_params(model) == encoders + classifier_params(cfg, 3, 4)
    assert count_params(ada2i()) - count_params(model) == 2 * afw_layer_params(cfg, 3)
    batch = make_batch(AD_DIMS)
    with torch.no_grad():
        out = model(batch)
        expected = torch.stack(model.modality_logits(_encoded(model, batch), cosine=True)).sum(0)
    assert out.aux["l_feat"].item() == 0.0
    torch.testing.assert_close(out.logits["emotion"], expected)


def test_ada2i_without_amw_is_a_linear_layer_on_the_concatenation():
    batch = make_batch(AD_DIMS)
    with torch.no_grad():
        plain, cosine = ada2i(amw=False, afw=False).eval(), ada2i(afw=False).eval()
        z = _encoded(plain, batch)
        torch.testing.assert_close(plain(batch).logits["emotion"], plain.fc_out(torch.cat(z, dim=-1)))
        assert not torch.allclose(cosine(batch).logits["emotion"], plain(batch).logits["emotion"], atol=1e-4)
    assert count_params(plain) == count_params(cosine)  # AMW reads the same Linear(M*H -> C), differently


@pytest.mark.parametrize("modulation", [False, True])
def test_ada2i_modulation_switch(modulation):
    model = ada2i(modulation=modulation, noise=False)
    batch = make_batch(AD_DIMS)
    out = model(batch)
    model.loss(batch, out, 0)[0].backward()
    out.aux["ratio"] = torch.tensor([1.0, 3.0, 2.0])  # a (the weakest), t, v
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.after_backward(batch, out, epoch=10)
    for name, p in model.named_parameters():
        scaled = modulation and name.startswith(("encoders.t.", "encoders.v."))
        assert torch.equal(p.grad, before[name]) != scaled, name


def test_ada2i_positions_make_the_encoders_see_utterance_order():
    """positions=true (merc's option): the same utterances in another order give other outputs, not permuted
    ones; without positions the transformer sees a dialogue as a set (a permutation only permutes the output)."""
    batch = make_batch(AD_DIMS, lengths=(5,))
    perm = torch.tensor([3, 0, 4, 1, 2])
    shuffled = dataclasses.replace(batch, feats={r: x[:, perm] for r, x in batch.feats.items()})
    with torch.no_grad():
        for positions in (False, True):
            model = ada2i(positions=positions, afw=False).eval()
            same = torch.allclose(model(shuffled).logits["emotion"], model(batch).logits["emotion"][:, perm],
                                  atol=1e-5)
            assert same != positions
    assert count_params(ada2i(positions=True)) == count_params(ada2i())  # sinusoidal: no parameters


def test_ada2i_input_dropout_drops_input_features_in_training_only():
    batch = make_batch(AD_DIMS)
    model = ada2i(input_dropout=0.5)
    seen = []
    model.encoders["t"].register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    model.train()
    model(batch)
    x_t = batch.feats["t"]
    kept = seen[0] != 0
    torch.testing.assert_close(seen[0][kept], (x_t * 2)[kept])  # inverted dropout: survivors scaled by 1/(1-p)
    real = x_t != 0
    assert 0.3 < (~kept & real).sum() / real.sum() < 0.7  # about half of the real entries dropped
    model.eval()
    model(batch)
    torch.testing.assert_close(seen[1], x_t)
    torch.manual_seed(0)
    default = ada2i()
    default.train()
    state = torch.random.get_rng_state()
    default.drop_in(x_t)  # off by default: the input passes untouched and no random number is drawn
    assert torch.equal(torch.random.get_rng_state(), state)


# -- one losses module: the numbers of the two old modules ---------------------------------------------------


def _fixed():
    g = torch.Generator().manual_seed(123)
    logits = torch.randn(3, 5, 4, generator=g) * 2
    labels = torch.randint(0, 4, (3, 5), generator=g)
    labels[0, 1] = -1
    labels[2, 3:] = -1
    pred = torch.randn(3, 5, 1, generator=g)
    target = torch.randn(3, 5, generator=g)
    target[1, 2] = float("nan")
    ml_logits = torch.randn(3, 5, 6, generator=g)
    ml_target = (torch.rand(3, 5, 6, generator=g) > 0.5).float()
    ml_target[2, 4] = -1
    return logits, labels, pred, target, ml_logits, ml_target


def test_losses_give_the_values_of_the_old_modules():
    """Values computed before the merge, by heads/models/_common.py (the paper heads) and heads/losses.py (the
    baselines)."""
    logits, labels, pred, target, ml_logits, ml_target = _fixed()
    old = {  # the old _common.py functions
        "cross_entropy": (losses.masked_cross_entropy(logits, labels), 2.1071431636810303),
        "focal_loss gamma 3": (losses.focal_loss(logits, labels, gamma=3.0), 1.590863823890686),
        "focal_loss gamma 3, count_pads": (losses.focal_loss(logits, labels, gamma=3.0, count_pads=True),
                                           1.2726911306381226),
        "label_smoothed_ce 0.1": (losses.masked_cross_entropy(logits, labels, label_smoothing=0.1),
                                  2.1324498653411865),
        "mae_loss": (losses.masked_l1(pred, target), 1.5623115301132202),
        "bce_loss": (losses.masked_bce(ml_logits, ml_target), 0.8626879453659058),
        # the old losses.py functions (the baselines' task losses)
        "focal_loss gamma 2": (losses.focal_loss(logits, labels, gamma=2.0), 1.7182971239089966),
        "task_loss regression": (losses.task_loss(SENTIMENT, pred, target), 1.5623114109039307),
        "task_loss multilabel": (losses.task_loss(EMOTIONS, ml_logits, ml_target), 0.8626879453659058),
    }
    for name, (got, value) in old.items():
        assert got.item() == pytest.approx(value, rel=1e-6), name


def test_losses_match_torch_references():
    logits, labels, pred, target, ml_logits, ml_target = _fixed()
    keep = labels >= 0
    z, y = logits[keep], labels[keep]
    w = torch.tensor([0.5, 2.0, 1.0, 3.0])
    for kw in (dict(), dict(weight=w), dict(label_smoothing=0.2), dict(weight=w, label_smoothing=0.2)):
        expected = F.cross_entropy(z, y, **kw)
        torch.testing.assert_close(losses.masked_cross_entropy(logits, labels, **kw), expected)
    torch.testing.assert_close(losses.focal_loss(logits, labels, gamma=0.0), F.cross_entropy(z, y))
    p_y = F.softmax(z, -1).gather(1, y[:, None]).squeeze(1)
    ce = F.cross_entropy(z, y, reduction="none")
    torch.testing.assert_close(losses.focal_loss(logits, labels, gamma=2.0, alpha=0.25, weight=w),
                               (0.25 * (1 - p_y) ** 2 * ce * w[y]).mean())
    cells = ml_target >= 0
    torch.testing.assert_close(losses.masked_bce(ml_logits, ml_target),
                               F.binary_cross_entropy_with_logits(ml_logits[cells], ml_target[cells]))
    real = ~torch.isnan(target)
    torch.testing.assert_close(losses.masked_mse(pred, target), F.mse_loss(pred[..., 0][real], target[real]))
    nothing = torch.full((3, 5), -1)
    zero = losses.focal_loss(logits.requires_grad_(), nothing, count_pads=True)
    assert zero.item() == 0.0 and zero.grad_fn is not None


SU_OLD = {**SU_TINY, "n_experts": 3}
# (head, dims, tasks, overrides, stage, before): each head's loss on a fixed batch, computed before the merge
HEAD_LOSSES = [
    ("mmolre", MM_DIMS, (SENTIMENT, EMOTIONS), {**MM_TINY, "residual": True}, None, 2.3948001861572266),
    ("mister-e", ME_DIMS, (EMOTION,), ME_TINY, None, 8.687338829040527),
    ("mister-e", ME_DIMS, (EMOTION,), {**ME_TINY, "parity": True}, None, 8.422554969787598),
    ("summer", SU_DIMS, (EMOTION,), {**SU_OLD, "sdmoe": False}, "teacher", 1.6556227207183838),
    # the student with the plain CE the old total had (now ce_weight=0 by default)
    ("summer", SU_DIMS, (EMOTION,), {**SU_OLD, "sdmoe": False, "ce_weight": 1.0}, "student", 6.4317746162414),
    ("ada2i", AD_DIMS, (EMOTION,), AD_TINY, None, 1.481715202331543),
    ("mlp", ME_DIMS, (EMOTION, SENTIMENT, EMOTIONS), {}, None, 3.833127975463867),
    ("dialogue-gru", ME_DIMS, (EMOTION, SENTIMENT, EMOTIONS), {}, None, 3.7606422901153564),
]


@pytest.mark.parametrize("name,dims,tasks,overrides,stage,before", HEAD_LOSSES)
def test_head_losses_unchanged_by_the_merge(name, dims, tasks, overrides, stage, before):
    torch.manual_seed(0)
    head = build_head(name, dims, list(tasks), overrides)
    if stage:
        head.set_stage(stage)
    head.eval()
    batch = make_batch(dims, tasks=tasks, frames=MM_FRAMES if name == "mmolre" else None)
    with torch.no_grad():
        loss, _ = head.loss(batch, head(batch), 0)
    assert loss.item() == pytest.approx(before, rel=1e-6)
