"""The Zarr store: per-dialogue commit, fingerprints, packed reads, verify, and merc-free readability."""

import json
import subprocess
import sys

import numpy as np
import pytest

from merc.data_manifests.labels import MELD_EMOTION
from merc.data_manifests.manifest import Dialogue, Manifest, Utterance
from merc.extract.store import StoreError, StoreReader, StoreWriter, dialogue_key


def _manifest(n_dialogues=5, n_utts=3):
    dialogues = []
    for d in range(n_dialogues):
        split = "train" if d < 3 else "test"
        utts = [Utterance(f"{split}_dia{d}_utt{u}", f"{split}_dia{d}", "AB"[u % 2], f"line {u}", split,
                          {"emotion": MELD_EMOTION.classes[(d + u) % 7]}) for u in range(n_utts + d % 2)]
        dialogues.append(Dialogue(f"{split}_dia{d}", split, utts))
    return Manifest("toy", {"emotion": MELD_EMOTION}, dialogues)


def _fill(path, manifest, fs="feat", dim=8, fingerprint=None, finalize=True):
    w = StoreWriter(path, manifest.name, fs)
    w.open(manifest, fingerprint=fingerprint or {"encoder": "x"}, info={"dim": dim, "modality": "text", "encoder": "x"})
    rng = np.random.default_rng(0)
    arrays = {}
    for d in manifest.dialogues:
        pooled = rng.standard_normal((len(d), dim)).astype(np.float16)
        valid = np.ones(len(d), bool)
        valid[0] = d.id != "train_dia1"
        w.write_dialogue(d.id, pooled, valid)
        arrays[d.id] = (pooled, valid)
    if finalize:
        w.finalize(manifest)
    return w, arrays


def test_roundtrip_packed_and_unpacked(tmp_path):
    m = _manifest()
    _, arrays = _fill(tmp_path / "s.zarr", m)
    r = StoreReader(tmp_path / "s.zarr")
    assert r.datasets() == ["toy"] and r.feature_sets("toy") == ["feat"]
    p = r.load_pooled("toy", "feat")
    assert p.dialogue_ids == [d.id for d in m.dialogues]
    for i, d in enumerate(m.dialogues):
        pooled, valid = p.dialogue(i)
        np.testing.assert_array_equal(pooled, arrays[d.id][0])
        np.testing.assert_array_equal(valid, arrays[d.id][1])
    assert r.manifest("toy").digest() == m.digest()
    cols = r.manifest_columns("toy")
    assert list(cols["utterance_id"]) == [u.id for u in m.utterances()]
    assert cols["label_emotion"][0] == MELD_EMOTION.index(m.dialogues[0].utterances[0].labels["emotion"])
    assert r.verify() == []


def test_unpacked_incomplete_store_is_an_error_unless_allowed(tmp_path):
    m = _manifest()
    w = StoreWriter(tmp_path / "s.zarr", "toy", "feat")
    w.open(m, fingerprint={"e": 1}, info={"dim": 4, "modality": "text"})
    w.write_dialogue(m.dialogues[0].id, np.ones((len(m.dialogues[0]), 4)), np.ones(len(m.dialogues[0]), bool))
    w.finalize(m)  # not every dialogue is there: no packed copy
    r = StoreReader(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="incomplete.*rerun the same merc-extract"):
        r.load_pooled("toy", "feat")
    p = r.load_pooled("toy", "feat", allow_incomplete=True)
    assert p.valid[: len(m.dialogues[0])].all() and not p.valid[len(m.dialogues[0]):].any()
    problems = r.verify()
    assert any("not extracted yet" in x for x in problems)


def test_other_fingerprint_is_refused_without_overwrite(tmp_path):
    m = _manifest()
    _fill(tmp_path / "s.zarr", m, fingerprint={"encoder": "x", "layer": -1})
    w = StoreWriter(tmp_path / "s.zarr", "toy", "feat")
    with pytest.raises(StoreError, match=r"another fingerprint.*layer: -1 -> 3.*--overwrite"):
        w.open(m, fingerprint={"encoder": "x", "layer": 3}, info={"dim": 8, "modality": "text"})
    w.open(m, fingerprint={"encoder": "x", "layer": 3}, info={"dim": 8, "modality": "text"}, overwrite=True)
    assert w.done_dialogues() == set()  # replaced, not mixed


def test_changed_manifest_is_refused(tmp_path):
    m = _manifest()
    _fill(tmp_path / "s.zarr", m)
    m.dialogues[0].utterances[0].labels["emotion"] = "anger" if m.dialogues[0].utterances[0].labels["emotion"] != "anger" else "joy"
    with pytest.raises(StoreError, match="another manifest"):
        StoreWriter(tmp_path / "s.zarr", "toy", "feat").open(m, fingerprint={"encoder": "x"}, info={"dim": 8})


def test_uncommitted_dialogue_is_redone_and_reported(tmp_path):
    m = _manifest()
    w, _ = _fill(tmp_path / "s.zarr", m, finalize=False)
    # simulate a kill between the arrays and the commit marker
    key = dialogue_key(m.dialogues[2].id)
    zj = tmp_path / "s.zarr" / "toy" / "feat" / key / "zarr.json"
    meta = json.loads(zj.read_text())
    meta["attributes"].pop("complete")
    zj.write_text(json.dumps(meta))
    assert m.dialogues[2].id not in w.done_dialogues()
    assert any("uncommitted" in p for p in StoreReader(tmp_path / "s.zarr").verify())
    w.write_dialogue(m.dialogues[2].id, np.zeros((len(m.dialogues[2]), 8)), np.ones(len(m.dialogues[2]), bool))
    w.finalize(m)
    assert StoreReader(tmp_path / "s.zarr").verify() == []


def test_dialogue_keys_are_safe_and_distinct():
    ids = ["a/b", "a_b", "__x", "packed", "ok-1.2"]
    keys = [dialogue_key(i) for i in ids]
    assert len(set(keys)) == len(keys)
    assert all("/" not in k and not k.startswith("__") and k != "packed" for k in keys)
    assert dialogue_key("ok-1.2") == "ok-1.2"


def test_store_opens_without_merc_and_reads_as_dask(tmp_path):
    m = _manifest()
    _, arrays = _fill(tmp_path / "s.zarr", m)
    key = dialogue_key(m.dialogues[0].id)
    code = f"""
import sys, zarr, dask.array as da, numpy as np
assert not any(k.startswith("merc") for k in sys.modules)
g = zarr.open_group({str(tmp_path / "s.zarr")!r}, mode="r")
x = da.from_zarr({str(tmp_path / "s.zarr")!r}, component="toy/feat/{key}/pooled")
print(x.shape[0], x.shape[1], float(x.astype("float32").sum().compute()))
print(list(g["toy/manifest/utterance_id"][:2]))
print(da.from_zarr({str(tmp_path / "s.zarr")!r}, component="toy/feat/packed/pooled").shape[0])
assert not any(k.startswith("merc") for k in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path).stdout.split("\n")
    pooled = arrays[m.dialogues[0].id][0]
    n, d, total = out[0].split()
    assert (int(n), int(d)) == pooled.shape
    assert abs(float(total) - float(pooled.astype(np.float32).sum())) < 1e-2
    assert out[1] == str([u.id for u in m.dialogues[0].utterances[:2]])
    assert int(out[2]) == m.n_utterances


def test_float16_overflow_is_refused_and_float32_sets_keep_wide_values(tmp_path):
    m = _manifest(n_dialogues=2)
    big = np.full((len(m.dialogues[0]), 8), 1.0, np.float32)
    big[0, 3] = 1.3e11  # an openSMILE ComParE spectral variance
    w = StoreWriter(tmp_path / "s.zarr", m.name, "half")
    w.open(m, fingerprint={"encoder": "x"}, info={"dim": 8, "modality": "audio", "encoder": "x"})
    with pytest.raises(StoreError, match="do not fit float16.*--store-dtype float32"):
        w.write_dialogue(m.dialogues[0].id, big, np.ones(len(big), bool))
    assert m.dialogues[0].id not in w.done_dialogues()  # nothing half-written is left committed

    w32 = StoreWriter(tmp_path / "s.zarr", m.name, "full")
    w32.open(m, fingerprint={"encoder": "x"}, info={"dim": 8, "modality": "audio", "encoder": "x", "dtype": "float32"})
    for d in m.dialogues:
        w32.write_dialogue(d.id, big[: len(d)] if d is m.dialogues[0] else np.ones((len(d), 8)), np.ones(len(d), bool))
    w32.finalize(m)
    r = StoreReader(tmp_path / "s.zarr")
    p = r.load_pooled(m.name, "full")
    assert p.pooled.dtype == np.float32 and p.pooled[0, 3] == np.float32(1.3e11)
    assert r.verify() == [] or all("half" in prob for prob in r.verify())
    # the storage dtype is part of the fingerprint: the same encoder stored at another precision is another set
    assert r.info(m.name, "full")["fingerprint"]["store_dtype"] == "float32"
    assert r.info(m.name, "half")["fingerprint_hash"] != r.info(m.name, "full")["fingerprint_hash"]


@pytest.mark.parametrize("array", [np.arange(12, dtype=np.float16).reshape(3, 4), np.array([True, False, True]),
                                   np.arange(5, dtype=np.int64), np.zeros((0, 4), np.float32),
                                   np.linspace(-1e9, 1e9, 6, dtype=np.float32).reshape(2, 3)])
def test_direct_array_files_equal_what_zarr_writes(tmp_path, array):
    """DialogueFiles writes per-dialogue arrays without the zarr API; zarr must read back exactly its own metadata."""
    import zarr

    from merc.extract.store_files import DialogueFiles

    files = DialogueFiles()
    assert files.supported([(array.dtype, array.ndim)])
    files.write_array(tmp_path / "ours", array)
    theirs = zarr.create_array(store=str(tmp_path / "theirs"), shape=array.shape, dtype=array.dtype,
                               chunks=tuple(max(1, s) for s in array.shape))
    if array.size:
        theirs[...] = array
    ours = zarr.open_array(str(tmp_path / "ours"), mode="r")
    assert ours.metadata == theirs.metadata
    np.testing.assert_array_equal(ours[...], array)
    assert ours[...].dtype == array.dtype
    # and the direct reader reads both back without zarr, writable
    for folder in ("ours", "theirs"):
        back = files.read_array(tmp_path / folder)
        assert back.dtype == array.dtype and back.flags.writeable
        np.testing.assert_array_equal(back, array)


def test_direct_reads_leave_arrays_stored_other_ways_to_zarr(tmp_path):
    import zarr

    from merc.extract.store_files import DialogueFiles

    data = np.arange(40, dtype=np.float32).reshape(10, 4)
    several = zarr.create_array(store=str(tmp_path / "chunked"), shape=data.shape, dtype=data.dtype, chunks=(5, 4))
    several[...] = data
    unwritten = zarr.create_array(store=str(tmp_path / "fill"), shape=(3, 4), dtype=np.float32, chunks=(3, 4),
                                  fill_value=7.0)
    assert unwritten.nchunks_initialized == 0
    assert DialogueFiles.read_array(tmp_path / "chunked") is None  # several chunks
    assert DialogueFiles.read_array(tmp_path / "fill") is None  # no chunk file: zarr knows the fill value
    assert DialogueFiles.read_array(tmp_path / "nothing") is None


def test_frames_read_directly_and_through_zarr_agree(tmp_path, monkeypatch):
    m = _manifest(n_dialogues=3)
    w = StoreWriter(tmp_path / "s.zarr", m.name, "feat")
    w.open(m, fingerprint={"x": 1}, info={"dim": 4})
    rng = np.random.default_rng(0)
    for d in m.dialogues:
        counts = rng.integers(1, 5, len(d.utterances))
        w.write_dialogue(d.id, rng.standard_normal((len(d.utterances), 4)), np.ones(len(d.utterances), bool),
                         frames=rng.standard_normal((int(counts.sum()), 4)),
                         offsets=np.concatenate([[0], np.cumsum(counts)]))
    w.finalize(m)
    r = StoreReader(tmp_path / "s.zarr")
    direct = [r.load_frames(m.name, "feat", d.id) for d in m.dialogues]
    from merc.extract import store_files

    monkeypatch.setattr(store_files.DialogueFiles, "read_array", staticmethod(lambda folder: None))
    for d, (frames, offsets) in zip(m.dialogues, direct, strict=True):
        zf, zo = r.load_frames(m.name, "feat", d.id)  # now through zarr-python
        np.testing.assert_array_equal(frames, zf)
        np.testing.assert_array_equal(offsets, zo)
        assert frames.dtype == zf.dtype == np.float16 and offsets.dtype == zo.dtype
    with pytest.raises(StoreError, match="no dialogue 'nope'"):
        r.load_frames(m.name, "feat", "nope")


def test_dialogue_groups_commit_atomically_and_fallback_writes_the_same(tmp_path, monkeypatch):
    m = _manifest(n_dialogues=2)
    _fill(tmp_path / "fast.zarr", m)
    from merc.extract import store_files

    monkeypatch.setattr(store_files.DialogueFiles, "supported", lambda self, dtypes: False)  # the zarr API path
    _fill(tmp_path / "slow.zarr", m)
    fast, slow = StoreReader(tmp_path / "fast.zarr"), StoreReader(tmp_path / "slow.zarr")
    for d in m.dialogues:
        key = dialogue_key(d.id)
        a, b = fast.root[f"toy/feat/{key}"], slow.root[f"toy/feat/{key}"]
        assert dict(a.attrs) == dict(b.attrs) and a.attrs["complete"] is True
        for name in ("pooled", "valid"):
            np.testing.assert_array_equal(a[name][...], b[name][...])
            assert a[name].metadata == b[name].metadata
    assert fast.verify() == [] and slow.verify() == []
    assert not list((tmp_path / "fast.zarr").rglob("*.tmp"))  # the atomic replace leaves nothing behind
