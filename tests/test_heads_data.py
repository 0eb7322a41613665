"""The stage-2 reader: roles, labels, speakers, splits, padding, masks, shuffling, frames, imports."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from heads_synth import EMOTIONS, shared_store

from merc.data_manifests.manifest import Dialogue, LabelSpace, Manifest, Utterance
from merc.extract.store import StoreError, StoreReader, StoreWriter
from merc.heads.data import HeadsData, HeadsError, parse_features

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    """Three dialogues with known speakers, one failed audio row and one unlabelled utterance."""
    path = tmp_path_factory.mktemp("small") / "s.zarr"
    space = LabelSpace("emotion", "categorical", ("neutral", "joy", "anger"))
    spec = [("d0", "train", [("bob", "joy"), ("amy", "neutral"), ("bob", None), ("cat", "anger")]),
            ("d1", "dev", [("zed", "anger"), ("amy", "joy")]),
            ("d2", "train", [("amy", "neutral"), ("amy", "joy"), ("bob", "anger")])]
    dialogues = [Dialogue(d, s, [Utterance(f"{d}_{i}", d, spk, f"text {i}", s, {"emotion": y} if y else {})
                                 for i, (spk, y) in enumerate(utts)]) for d, s, utts in spec]
    manifest = Manifest("small", {"emotion": space}, dialogues)
    rows = {"t": {}, "a": {}}
    for role, modality, dim in (("t", "text", 4), ("a", "audio", 3)):
        w = StoreWriter(path, "small", f"{modality}{dim}")
        w.open(manifest, fingerprint={"role": role}, info={"dim": dim, "modality": modality, "encoder": "synthetic",
                                                          "levels": ["utterance"]})
        for k, d in enumerate(dialogues):
            pooled = (np.arange(len(d) * dim).reshape(len(d), dim) + 100 * k).astype(np.float16)
            valid = np.ones(len(d), bool)
            if role == "a" and d.id == "d0":
                valid[1] = False
                pooled[1] = 7.0  # whatever the store holds at a failed row must read as zeros
            rows[role][d.id] = pooled
            w.write_dialogue(d.id, pooled, valid)
        w.finalize(manifest)
    return str(path), rows


def test_parse_features_forms():
    assert parse_features("minilm,egemaps") == [(None, "minilm"), (None, "egemaps")]
    assert parse_features("t=minilm, a=egemaps,video=clip") == [("t", "minilm"), ("a", "egemaps"), ("v", "clip")]
    with pytest.raises(HeadsError, match="unknown modality role"):
        parse_features("x=minilm")


def test_roles_from_recorded_modality_and_conflicts(small_store):
    path, _ = small_store
    data = HeadsData.load(path, "small", "audio3,text4")
    assert data.roles == {"t": "text4", "a": "audio3"} and data.dims == {"t": 4, "a": 3}
    assert set(data.fingerprints) == {"t", "a"}
    with pytest.raises(HeadsError, match="both play role"):
        HeadsData.load(path, "small", "text4,t=audio3")
    with pytest.raises(StoreError, match="feature set 'nope'"):
        HeadsData.load(path, "small", "nope")
    with pytest.raises(HeadsError, match="no label space 'sentiment'"):
        HeadsData.load(path, "small", "text4", tasks="sentiment")


def test_speakers_labels_splits(small_store):
    path, _ = small_store
    data = HeadsData.load(path, "small", "text4,audio3")
    # bob amy bob cat | zed amy | amy amy bob -> index of first appearance within each dialogue
    assert data.speakers.tolist() == [0, 1, 0, 2, 0, 1, 0, 0, 1]
    assert data.labels["emotion"].tolist() == [1, 0, -1, 2, 2, 1, 0, 1, 2]
    assert data.split_dialogues("train").tolist() == [0, 2]
    assert data.split_rows("train").tolist() == [0, 1, 2, 3, 6, 7, 8]
    assert data.split_rows("test").tolist() == []


def test_batch_padding_masks_and_values(small_store):
    path, rows = small_store
    data = HeadsData.load(path, "small", "text4,audio3", normalize="none")
    b = data.batch([1, 0])  # a 2-utterance dialogue padded to 4
    assert b.dialogue_ids == ["d1", "d0"]
    assert b.mask.tolist() == [[True, True, False, False], [True] * 4]
    assert b.feats["t"].dtype == torch.float32 and b.feats["t"].shape == (2, 4, 4)
    assert torch.equal(b.feats["t"][0, :2], torch.from_numpy(rows["t"]["d1"].astype(np.float32)))
    assert torch.equal(b.feats["t"][1], torch.from_numpy(rows["t"]["d0"].astype(np.float32)))
    assert (b.feats["t"][0, 2:] == 0).all()
    assert b.feat_mask["a"].tolist() == [[True, True, False, False], [True, False, True, True]]
    assert (b.feats["a"][1, 1] == 0).all()  # failed extraction reads as zeros
    assert b.labels["emotion"].tolist() == [[2, 1, -1, -1], [1, 0, -1, 2]]
    assert b.speakers.tolist() == [[0, 1, 0, 0], [0, 1, 0, 2]]


def test_zscore_uses_train_valid_rows_only_and_saved_stats_reproduce_it(small_store):
    path, rows = small_store
    data = HeadsData.load(path, "small", "text4,audio3")
    assert data.normalize == "zscore"
    # train = d0 and d2; audio row 1 of d0 failed, so it takes no part in the statistics
    t_train = np.concatenate([rows["t"]["d0"], rows["t"]["d2"]]).astype(np.float64)
    a_train = np.concatenate([rows["a"]["d0"][[0, 2, 3]], rows["a"]["d2"]]).astype(np.float64)
    for role, ref in (("t", t_train), ("a", a_train)):
        mean, std = data.stats[role]
        np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-6)
        np.testing.assert_allclose(std, ref.std(0), rtol=1e-6)
    b = data.batch([1, 0])
    want_dev = (rows["t"]["d1"].astype(np.float32) - data.stats["t"][0]) / data.stats["t"][1]
    torch.testing.assert_close(b.feats["t"][0, :2], torch.from_numpy(want_dev), atol=2e-3, rtol=1e-3)
    assert (b.feats["a"][1, 1] == 0).all() and (b.feats["t"][0, 2:] == 0).all()  # failed rows and pads stay zero
    train_t = data.feats["t"][:-1][data.split_rows("train")].float()
    torch.testing.assert_close(train_t.mean(0), torch.zeros(4), atol=2e-3, rtol=0)
    # a saved run's statistics give the same tensors, whatever the store's splits say now
    again = HeadsData.load(path, "small", "text4,audio3", stats=data.stats)
    assert all(torch.equal(again.feats[r], data.feats[r]) for r in data.feats)
    with pytest.raises(HeadsError, match="unknown normalize"):
        HeadsData.load(path, "small", "text4", normalize="minmax")


def test_select_roles_is_a_modality_subset(small_store):
    path, _ = small_store
    data = HeadsData.load(path, "small", "text4,audio3").select_roles(["a"])
    assert data.roles == {"a": "audio3"} and list(data.batch([0]).feats) == ["a"]
    with pytest.raises(HeadsError):
        data.select_roles(["v"])


def test_fingerprint_mismatch_is_refused(small_store):
    path, _ = small_store
    with pytest.raises(StoreError, match="fingerprint"):
        HeadsData.load(path, "small", "text4", fingerprints={"t": "0000"})


def test_batches_cover_split_in_order_and_shuffle_is_seeded():
    path, names = shared_store("planted")
    data = HeadsData.load(path, "synth", ",".join(names.values()))
    rows = []
    for b in data.batches("dev", 4):
        labels = b.labels["emotion"][b.mask]
        rows.append(labels.numpy())
    assert np.array_equal(np.concatenate(rows), data.labels["emotion"][data.split_rows("dev")])

    def order(seed):
        return [b.dialogue_ids for b in data.batches("train", 8, shuffle=True, generator=np.random.default_rng(seed))]

    assert order(3) == order(3) and order(3) != order(4)
    assert sorted(sum(order(3), [])) == sorted(data.dialogue_ids[i] for i in data.split_dialogues("train"))


def test_frames_padded_and_capped():
    path, names = shared_store("planted")
    reader = StoreReader(path)
    data = HeadsData.load(path, "synth", f"t={names['t']}", frames=True, max_frames=3, normalize="none")
    b = data.batch([0, 1])
    x, fmask = b.frames["t"]
    assert x.shape[:3] == fmask.shape and x.shape[2] <= 3 and x.shape[3] == 32
    assert not fmask[~b.mask].any()  # pads have no frames
    frames, offsets = reader.load_frames("synth", names["t"], data.dialogue_ids[0])
    n0 = min(offsets[1] - offsets[0], 3)
    assert fmask[0, 0].sum() == n0
    assert torch.equal(x[0, 0, :n0], torch.from_numpy(frames[:n0].astype(np.float32)))


def test_frames_missing_names_the_fix(small_store):
    path, _ = small_store
    with pytest.raises(HeadsError, match="--keep-frames"):
        HeadsData.load(path, "small", "text4", frames=True)


def test_mosei_labels_regression_and_multilabel():
    path, names = shared_store("mosei")
    data = HeadsData.load(path, "synth", ",".join(names.values()), tasks="all")
    assert [(t.name, t.kind) for t in data.tasks] == [("sentiment", "regression"), ("emotions", "multilabel")]
    assert data.tasks[1].classes == EMOTIONS
    manifest = StoreReader(path).manifest("synth")
    first = manifest.dialogues[0]
    b = data.batch([0, 1])
    n = len(first)
    assert torch.allclose(b.labels["sentiment"][0, :n], torch.tensor([u.labels["sentiment"] for u in first.utterances]))
    want = torch.tensor([[float(e in u.labels["emotions"]) for e in EMOTIONS] for u in first.utterances])
    assert torch.equal(b.labels["emotions"][0, :n], want)
    pads = ~b.mask
    assert torch.isnan(b.labels["sentiment"][pads]).all() and (b.labels["emotions"][pads] == -1).all()


def test_heads_import_no_encoder_or_media_library():
    code = ("import sys, merc.heads.cli, merc.heads.runs, merc.heads.trainer, merc.heads.data, "
            "merc.heads.models.baselines\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('transformers', 'av', 'soxr', 'opensmile') "
            "or (m.startswith('merc.extract.') and m.split('.')[2] != 'store')]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_frames_standardised_with_the_pooled_train_stats():
    path, names = shared_store("planted")
    data = HeadsData.load(path, "synth", f"t={names['t']}", frames=True, max_frames=None)
    frames, offsets = StoreReader(path).load_frames("synth", names["t"], data.dialogue_ids[1])
    mean, std = data.stats["t"]
    x, fmask = data.batch([1]).frames["t"]
    n0 = offsets[1] - offsets[0]
    expected = (frames[:n0].astype(np.float32) - mean) / std
    np.testing.assert_allclose(x[0, 0, :n0].numpy(), expected, rtol=1e-3, atol=1e-3)  # float16 in memory
    assert data.frames["t"].data.dtype == torch.float16


def test_max_frames_per_role():
    path, names = shared_store("planted")  # 2..4 frames per utterance
    features = ",".join(f"{r}={n}" for r, n in names.items())
    data = HeadsData.load(path, "synth", features, frames=True, max_frames={"t": 2, "audio": 3})
    assert data.max_frames == {"t": 2, "a": 3, "v": None}  # a role the dict does not name keeps every frame
    reader = StoreReader(path)
    for role, cap in (("t", 2), ("a", 3), ("v", 4)):
        stored = np.concatenate([np.diff(reader.load_frames("synth", names[role], d)[1]) for d in data.dialogue_ids])
        assert stored.max() == 4  # so that each cap below 4 really cuts
        assert np.array_equal(np.diff(data.frames[role].offsets), np.minimum(stored, cap))
    b = data.batch([0, 1, 2])
    assert b.frames["t"][0].shape[2] == 2 and b.frames["a"][0].shape[2] == 3 and b.frames["v"][0].shape[2] == 4
    assert HeadsData.load(path, "synth", features, max_frames=5).max_frames == {"t": 5, "a": 5, "v": 5}
    assert HeadsData.load(path, "synth", features, max_frames=None).max_frames == {"t": None, "a": None, "v": None}
    assert HeadsData.load(path, "synth", features, max_frames={"t": 0}).max_frames == {"t": None, "a": None, "v": None}
    for bad, needle in (({"x": 3}, "unknown modality role 'x'"), ({"t": -1}, "not a whole number"),
                        (True, "not a whole number"), ("64", "not a whole number")):
        with pytest.raises(HeadsError, match=needle):
            HeadsData.load(path, "synth", features, frames=True, max_frames=bad)
