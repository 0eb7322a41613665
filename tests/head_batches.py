"""Tiny random padded batches for the head tests (tests/test_head_*.py), plus the checks they share."""

from __future__ import annotations

import torch

from merc.heads.models.base import Batch, TaskSpec

EMOTION = TaskSpec("emotion", "categorical", ("neu", "hap", "sad", "ang"))
SENTIMENT = TaskSpec("sentiment", "regression")
EMOTIONS = TaskSpec("emotions", "multilabel", ("hap", "sad", "ang", "sur", "dis", "fea"))


def _labels(task: TaskSpec, mask_bt: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    B, T = mask_bt.shape
    if task.kind == "categorical":
        y = torch.randint(0, task.out_dim, (B, T), generator=g)
        y = torch.where(mask_bt, y, torch.full_like(y, -1))
        y[0, 1] = -1  # one real but unlabelled utterance
        return y
    if task.kind == "regression":
        y = torch.rand(B, T, generator=g) * 6 - 3
        return torch.where(mask_bt, y, torch.full_like(y, float("nan")))
    y = (torch.rand(B, T, task.out_dim, generator=g) > 0.6).float()
    return torch.where(mask_bt[..., None], y, torch.full_like(y, -1.0))


def make_batch(
    dims: dict[str, int],
    lengths: tuple[int, ...] = (5, 3, 1),
    tasks: tuple[TaskSpec, ...] = (EMOTION,),
    frames: dict[str, int] | None = None,
    n_speakers: int = 3,
    seed: int = 0,
) -> Batch:
    """B = len(lengths) dialogues padded to max(lengths); zeros at pads. `frames` maps role -> max frames L, and
    adds per-utterance frame sequences of random valid length 1..L (zeros at padded frames)."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    feats = {r: torch.where(mask[..., None], torch.randn(B, T, d, generator=g), torch.zeros(())) for r, d in dims.items()}
    speakers = torch.where(mask, torch.randint(0, n_speakers, (B, T), generator=g), torch.zeros((), dtype=torch.long))
    labels = {t.name: _labels(t, mask, g) for t in tasks}
    fr = {}
    for role, L in (frames or {}).items():
        n_valid = torch.randint(1, L + 1, (B, T), generator=g)
        n_valid[0, 0] = L  # at least one full-length utterance
        fmask = (torch.arange(L)[None, None, :] < n_valid[..., None]) & mask[..., None]
        x = torch.where(fmask[..., None], torch.randn(B, T, L, dims[role], generator=g), torch.zeros(()))
        fr[role] = (x, fmask)
    return Batch(feats=feats, mask=mask, speakers=speakers, labels=labels,
                 feat_mask={r: mask.clone() for r in dims}, frames=fr)


def repad(batch: Batch, extra_t: int = 2, extra_l: int = 3, seed: int = 1) -> Batch:
    """The same real content with random values at every padded position and `extra_t` more padded utterances
    (and `extra_l` more padded frames per utterance)."""
    g = torch.Generator().manual_seed(seed)
    B, T = batch.mask.shape
    T2 = T + extra_t
    mask = torch.zeros(B, T2, dtype=torch.bool)
    mask[:, :T] = batch.mask

    def widen(x: torch.Tensor, fill) -> torch.Tensor:
        out = torch.full((B, T2) + tuple(x.shape[2:]), fill, dtype=x.dtype)
        out[:, :T] = x
        return out

    feats = {}
    for r, x in batch.feats.items():
        noise = torch.randn((B, T2) + tuple(x.shape[2:]), generator=g) * 3
        feats[r] = torch.where(mask[..., None], widen(x, 0.0), noise)
    speakers = torch.where(mask, widen(batch.speakers, 0), torch.randint(0, 5, (B, T2), generator=g))
    labels = {}
    for name, y in batch.labels.items():
        fill = -1 if not y.is_floating_point() else (float("nan") if y.dim() == 2 else -1.0)
        labels[name] = widen(y, fill)
    frames = {}
    for r, (x, fmask) in batch.frames.items():
        L = x.shape[2]
        L2 = L + extra_l
        xm = torch.zeros(B, T2, L2, x.shape[3])
        xm[:, :T, :L] = x
        fm = torch.zeros(B, T2, L2, dtype=torch.bool)
        fm[:, :T, :L] = fmask
        noise = torch.randn(B, T2, L2, x.shape[3], generator=g) * 3
        frames[r] = (torch.where(fm[..., None], xm, noise), fm)
    return Batch(feats=feats, mask=mask, speakers=speakers, labels=labels,
                 feat_mask={r: mask.clone() for r in batch.feat_mask}, frames=frames)


def assert_valid_outputs_equal(out1, out2, batch: Batch, atol: float = 1e-5) -> None:
    """Logits at real utterances agree between two forwards (the second may be longer)."""
    T = batch.mask.shape[1]
    for name, y1 in out1.logits.items():
        y2 = out2.logits[name][:, :T]
        assert y1.shape[:2] == batch.mask.shape
        torch.testing.assert_close(y2[batch.mask], y1[batch.mask], atol=atol, rtol=0)


def assert_all_grads(model: torch.nn.Module, skip: tuple[str, ...] = ()) -> None:
    """Every trainable parameter (outside `skip` prefixes) got a finite, non-zero gradient."""
    missing, zero = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or name.startswith(skip):
            continue
        if p.grad is None:
            missing.append(name)
        elif not torch.isfinite(p.grad).all():
            raise AssertionError(f"non-finite gradient in {name}")
        elif p.grad.abs().sum() == 0:
            zero.append(name)
    assert not missing, f"no gradient: {missing}"
    assert not zero, f"zero gradient: {zero}"
