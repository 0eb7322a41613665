import math

import pytest
import torch
import torch.nn.functional as F
from head_batches import (
    EMOTION,
    EMOTIONS,
    SENTIMENT,
    assert_all_grads,
    assert_valid_outputs_equal,
    make_batch,
    repad,
)

from merc.heads import losses
from merc.heads.models import _common
from merc.heads.models.mmolre import (
    LowRankExperts,
    MMoLRE,
    MMoLREConfig,
    UniTSEBlock,
    cme_layer_params,
    low_rank_expert_params,
    param_count_formula,
    router_params,
    shared_experts_ratio,
    unitse_block_params,
)
from merc.heads.registry import build_head

torch.set_num_threads(1)

DIMS = {"t": 16, "a": 12}
FRAMES = {"t": 6, "a": 8}
TINY = dict(d_model=16, experts=4, rank=3, top_k=2, task_rank=4, heads=2, ffn_dim=24, fusion_layers=2, mlp_hidden=8)
MSA_MER = (SENTIMENT, EMOTIONS)


def tiny(tasks=MSA_MER, **kw) -> MMoLRE:
    torch.manual_seed(0)
    return build_head("mmolre", DIMS, list(tasks), {**TINY, **kw})


def batch_for(tasks=MSA_MER, seed=0):
    return make_batch(DIMS, tasks=tasks, frames=FRAMES, seed=seed)


VARIANTS = [dict(), dict(residual=True), dict(ablation="pre_fusion"), dict(ablation="post_fusion")]


@pytest.mark.parametrize("kw", VARIANTS)
def test_forward_backward_all_params_get_grads(kw):
    model = tiny(**kw, top_k=4)  # every shared expert active, so every one gets a gradient
    assert model.levels == ("frames",) and not model.uses_context
    batch = batch_for()
    out = model(batch)
    assert out.logits["sentiment"].shape == (3, 5, 1) and out.logits["emotions"].shape == (3, 5, 6)
    loss, terms = model.loss(batch, out, 0)
    assert set(terms) == {"sentiment", "emotions"}
    assert loss.item() == pytest.approx(terms["sentiment"] + terms["emotions"], rel=1e-5)
    loss.backward()
    assert_all_grads(model)


@pytest.mark.parametrize("tasks", [(EMOTION,), (SENTIMENT,), (EMOTIONS,), (EMOTION, SENTIMENT)])
def test_any_task_subset(tasks):
    model = tiny(tasks)
    batch = batch_for(tasks)
    out = model(batch)
    assert set(out.logits) == {t.name for t in tasks}
    loss, _ = model.loss(batch, out, 0)
    loss.backward()
    if tasks == (EMOTION,):
        expected = losses.masked_cross_entropy(out.logits["emotion"], batch.labels["emotion"])
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_multitask_off_trains_primary_only():
    model = tiny((EMOTIONS,), multitask=False)
    out = model(batch_for((EMOTIONS,)))
    assert set(out.logits) == {"emotions"}
    with pytest.raises(ValueError, match="--task sentiment"):
        tiny(MSA_MER, multitask=False)


@pytest.mark.parametrize("kw", [*VARIANTS, dict(task_expert=False), dict(rank=(1, 2, 3, 5))])
def test_padding_invariance(kw):
    model = tiny(**kw).eval()
    batch = batch_for()
    with torch.no_grad():
        assert_valid_outputs_equal(model(batch), model(repad(batch, extra_t=2, extra_l=3)), batch)


def test_top_k_keeps_exactly_k_nonzero_gates():
    model = tiny(top_k=3)
    batch = batch_for()
    out = model(batch)
    n_valid = int(batch.mask.sum())
    gates = {k: v for k, v in out.aux.items() if k.startswith("gate_")}
    assert len(gates) == 2 * 2 * 2  # modalities x blocks x tasks
    for g in gates.values():
        assert g.shape == (n_valid, 4)
        assert ((g > 0).sum(dim=-1) == 3).all()
        assert (g.sum(-1) < 1).all()  # no renormalisation after top-k


def test_router_gate_is_topk_of_softmax_of_masked_mean():
    torch.manual_seed(0)
    block = UniTSEBlock(8, MMoLREConfig(experts=5, rank=2, top_k=2, task_rank=3), n_tasks=1)
    x = torch.randn(2, 8, 6)
    mask = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    router = block.routers[0]
    g = router(x, mask, 2)
    for i in range(2):
        L = int(mask[i].sum())
        p = F.softmax(router.net(x[i : i + 1, :, :L]).mean(-1)[0], dim=-1)
        top = p.topk(2).indices
        expected = torch.zeros(5)
        expected[top] = p[top]
        torch.testing.assert_close(g[i], expected)


@pytest.mark.parametrize("ranks", [(2, 2, 2), (1, 3, 2, 4)])
def test_low_rank_experts_equal_separate_convolutions(ranks):
    torch.manual_seed(0)
    d, n = 6, len(ranks)
    experts = LowRankExperts(d, ranks)
    x = torch.randn(2, d, 5)
    g = torch.rand(2, n)
    expected, ungated, start = 0, 0, 0
    for e, r in enumerate(ranks):  # expert e: its own Conv1d(d -> r_e, k=3) and Conv1d(r_e -> d, k=1)
        ch = slice(start, start + r)
        down = F.conv1d(x, experts.down.weight[ch], experts.down.bias[ch], padding=1)
        up = F.conv1d(down, experts.up_weight[:, ch, None], experts.up_bias[e])
        expected = expected + g[:, e, None, None] * up
        ungated = ungated + up
        start += r
    torch.testing.assert_close(experts(x, g), expected)
    torch.testing.assert_close(experts(x), ungated)


# -- losses by hand -------------------------------------------------------------------------------------------


def test_mae_by_hand():
    pred = torch.tensor([[0.5, -1.0, 2.0]])
    target = torch.tensor([[1.0, float("nan"), -1.0]])
    assert losses.masked_l1(pred, target).item() == pytest.approx((0.5 + 3.0) / 2)


def test_bce_by_hand():
    logits = torch.tensor([[[0.3, -1.2], [2.0, 0.0]]])
    target = torch.tensor([[[1.0, 0.0], [-1.0, -1.0]]])

    def s(v):
        return 1 / (1 + math.exp(-v))

    expected = (-math.log(s(0.3)) - math.log(1 - s(-1.2))) / 2
    assert losses.masked_bce(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_task_losses_in_the_head():
    model = tiny()
    batch = batch_for()
    out = model(batch)
    _, terms = model.loss(batch, out, 0)
    y, p = batch.labels["sentiment"], out.logits["sentiment"][..., 0]
    keep = ~torch.isnan(y)
    assert terms["sentiment"] == pytest.approx((p[keep] - y[keep]).abs().mean().item(), rel=1e-5)
    e, z = batch.labels["emotions"], out.logits["emotions"]
    keep = e >= 0
    bce = F.binary_cross_entropy_with_logits(z[keep], e[keep])
    assert terms["emotions"] == pytest.approx(bce.item(), rel=1e-5)


# -- parameter counts and the low-rank saving ------------------------------------------------------------------


def test_expert_block_params_default_config_and_low_rank_ratio():
    cfg = MMoLREConfig()
    d = 768
    with torch.device("meta"):
        block = UniTSEBlock(d, cfg, n_tasks=2)
    assert _common.count_params(block.shared) == 15 * low_rank_expert_params(d, 64)
    assert _common.count_params(block.task_experts[0]) == low_rank_expert_params(d, 128)
    assert _common.count_params(block.routers[0]) == router_params(d, 15)
    assert _common.count_params(block) == unitse_block_params(cfg, d, 2)
    assert low_rank_expert_params(d, 64) == 197_440 and low_rank_expert_params(d, d) == 2_360_832
    # the shared experts at full rank vs rank r: d/r up to biases (MOSI r=64: x11.96, MOSEI r=128: x5.99)
    assert shared_experts_ratio(cfg, d) == pytest.approx(11.957, abs=1e-3)
    mosei = MMoLREConfig(rank=128, top_k=8)
    assert shared_experts_ratio(mosei, d) == pytest.approx(5.990, abs=1e-3)
    # the whole MOSEI block (shared + 2 task experts + 2 routers) at full rank: x5.78, the paper's "x5.7"
    ratio = unitse_block_params(mosei, d, 2, full_rank=True) / unitse_block_params(mosei, d, 2)
    assert ratio == pytest.approx(5.776, abs=1e-3)
    with torch.device("meta"):
        full = UniTSEBlock(d, MMoLREConfig(rank=d, task_rank=d), n_tasks=2)
    assert _common.count_params(full) == unitse_block_params(mosei, d, 2, full_rank=True)


@pytest.mark.parametrize("ablation", ["none", "pre_fusion", "post_fusion"])
def test_total_params_match_formula_default_config(ablation):
    cfg = MMoLREConfig(ablation=ablation)
    with torch.device("meta"):
        model = MMoLRE(cfg, {"t": 768, "a": 1024}, list(MSA_MER))
    parts = param_count_formula(cfg, 768, out_dims=(1, 6), input_dims={"t": 768, "a": 1024})
    assert _common.count_params(model) == parts["total"]
    assert _common.count_params(model.fusion[0]) == 2 * 768 + 5 * cme_layer_params(768, 3072)
    assert _common.count_params(model.fusion) == parts["fusion"]
    assert (_common.count_params(model.unitse) if model.unitse is not None else 0) == parts["unitse"]


def test_tiny_params_match_formula():
    model = tiny()
    cfg = model.cfg
    parts = param_count_formula(cfg, 16, out_dims=(1, 6), input_dims=DIMS)
    assert _common.count_params(model) == parts["total"]


def test_declared_defaults():
    from merc.heads.config import head_defaults

    d = head_defaults(MMoLRE)
    assert (d["optim.name"], d["optim.lr"], d["train.batch_size"], d["train.batch_unit"]) == ("adamw", 1e-5, 8, "utterance")
