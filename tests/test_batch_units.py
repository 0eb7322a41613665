"""Batches in the paper's unit: utterance batches (B utterances, T = 1) next to the dialogue batches."""

import dataclasses

import numpy as np
import pytest
import torch
from heads_synth import shared_store

from merc.heads.data import HeadsData, HeadsError
from merc.heads.models.base import TaskSpec
from merc.heads.registry import build_head

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def planted():
    """The planted store with frames (2..4 per utterance), plus a regression task holding each row's index."""
    path, names = shared_store("planted")
    data = HeadsData.load(path, "synth", ",".join(f"{r}={n}" for r, n in names.items()), frames=True,
                          max_frames=None, normalize="none")
    row_ids = np.arange(data.n_utterances, dtype=np.float32)
    return dataclasses.replace(data, tasks=[*data.tasks, TaskSpec("row", "regression")],
                               labels={**data.labels, "row": row_ids})


def rows_of(batch) -> np.ndarray:
    return batch.labels["row"][batch.mask].numpy().astype(np.int64)


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_unshuffled_utterance_batches_yield_split_rows_in_order(planted, split):
    batches = list(planted.batches(split, 7, unit="utterance"))
    rows = planted.split_rows(split)
    assert np.array_equal(np.concatenate([rows_of(b) for b in batches]), rows)  # each once, manifest order
    sizes = [b.mask.shape[0] for b in batches]
    assert sizes == [7] * (len(rows) // 7) + ([len(rows) % 7] if len(rows) % 7 else [])  # last batch partial
    assert len(batches) == planted.n_batches(split, 7, unit="utterance") == -(-len(rows) // 7)
    # the dialogue unit yields the same rows in the same order: predict pairs either with split_rows
    assert np.array_equal(np.concatenate([rows_of(b) for b in planted.batches(split, 4)]), rows)


def test_split_rows_is_ascending_and_partitions_the_dataset(planted):
    parts = [planted.split_rows(s) for s in ("train", "dev", "test")]
    assert all((np.diff(p) > 0).all() and p.dtype == np.int64 for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(planted.n_utterances))
    assert len(planted.split_rows("nope")) == 0 and list(planted.batches("nope", 4, unit="utterance")) == []


def test_utterance_batch_shapes_and_values(planted):
    rows = planted.split_rows("train")[[5, 0, 17, 3]]
    b = planted.utterance_batch(rows)
    assert b.mask.shape == (4, 1) and b.mask.all()
    for role, x in planted.feats.items():
        assert b.feats[role].shape == (4, 1, x.shape[1]) and b.feats[role].dtype == torch.float32
        assert torch.equal(b.feats[role][:, 0], x[torch.from_numpy(rows)].float())
        assert b.feat_mask[role][:, 0].tolist() == planted.valid[role][rows].tolist()
    assert b.speakers[:, 0].tolist() == planted.speakers[rows].tolist()  # the dialogue-level speaker index
    assert b.labels["emotion"][:, 0].tolist() == planted.labels["emotion"][rows].tolist()
    dialogue_of_row = np.repeat(np.arange(len(planted.dialogue_ids)), np.diff(planted.dialogue_offsets))
    assert b.dialogue_ids == [planted.dialogue_ids[d] for d in dialogue_of_row[rows]]
    # frames [B, 1, L, D]: each utterance's frames are the ones its dialogue batch holds
    for role, (x, fmask) in b.frames.items():
        assert x.shape[:3] == fmask.shape and x.shape[:2] == (4, 1) and x.shape[3] == planted.dims[role]
        for i, row in enumerate(rows):
            d = int(dialogue_of_row[row])
            j = int(row - planted.dialogue_offsets[d])
            dx, dmask = planted.batch([d]).frames[role]
            n = int(dmask[0, j].sum())
            assert int(fmask[i, 0].sum()) == n and torch.equal(x[i, 0, :n], dx[0, j, :n])
            assert (x[i, 0, n:] == 0).all()


def test_shuffled_utterance_batches_are_seeded_and_mix_dialogues(planted):
    def order(seed):
        batches = planted.batches("train", 8, unit="utterance", shuffle=True, generator=np.random.default_rng(seed))
        return [rows_of(b) for b in batches]

    rows = planted.split_rows("train")
    first = order(3)
    assert all(np.array_equal(a, b) for a, b in zip(first, order(3), strict=True))
    assert not np.array_equal(np.concatenate(first), np.concatenate(order(4)))
    flat = np.concatenate(first)
    assert np.array_equal(np.sort(flat), rows)  # every utterance once
    # one permutation of the split's rows per epoch, drawn from the generator as the dialogue unit does
    assert np.array_equal(flat, rows[np.random.default_rng(3).permutation(len(rows))])
    assert len({d for b in planted.batches("train", 8, unit="utterance", shuffle=True,
                                           generator=np.random.default_rng(3)) for d in b.dialogue_ids}) > 8


def test_predictions_follow_split_rows_for_either_unit(planted):
    """What trainer.predict does: logits[task][batch.mask] concatenated over batches, paired with split_rows.
    An utterance-level head gives every utterance the same logits whichever unit carried it."""
    data = planted.select_roles(["t", "a"])
    data = dataclasses.replace(data, tasks=data.tasks[:1])
    head = build_head("mlp", data.dims, data.tasks, {"hidden": 16}).eval()

    def logits(unit, batch_size):
        with torch.no_grad():
            return torch.cat([head(b).logits["emotion"][b.mask] for b in data.batches("dev", batch_size, unit=unit)])

    by_dialogue, by_utterance = logits("dialogue", 4), logits("utterance", 5)
    assert by_dialogue.shape == by_utterance.shape == (len(data.split_rows("dev")), 4)
    torch.testing.assert_close(by_utterance, by_dialogue, rtol=1e-5, atol=1e-6)
    one_row = data.utterance_batch(data.split_rows("dev")[[7]])
    with torch.no_grad():
        torch.testing.assert_close(head(one_row).logits["emotion"][0, 0], by_dialogue[7], rtol=1e-5, atol=1e-6)


def test_dialogue_unit_is_the_default_and_unknown_units_fail(planted):
    default = list(planted.batches("dev", 4, shuffle=True, generator=np.random.default_rng(0)))
    named = list(planted.batches("dev", 4, unit="dialogue", shuffle=True, generator=np.random.default_rng(0)))
    assert [b.dialogue_ids for b in default] == [b.dialogue_ids for b in named]
    assert planted.n_batches("dev", 4) == planted.n_batches("dev", 4, unit="dialogue") == len(default)
    with pytest.raises(HeadsError, match="unknown batch unit 'segment'"):
        planted.batches("dev", 4, unit="segment")
    with pytest.raises(HeadsError, match="unknown batch unit"):
        planted.n_batches("dev", 4, unit="segment")
