"""The Zarr store: per-dialogue commit, fingerprints, packed reads, verify, and merc-free readability."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from merc.data_manifests.labels import MELD_EMOTION
from merc.data_manifests.manifest import Dialogue, Manifest, Utterance
from merc.extract.store import ArrayFiles, DamagedError, StoreError, StoreReader, StoreWriter, dialogue_key
from merc.extract.store.files import read_array


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
    with pytest.raises(StoreError, match=r"not current: 4 dialogue\(s\) not extracted.*rerun merc-extract"):
        r.load_pooled("toy", "feat")
    p = r.load_pooled("toy", "feat", allow_incomplete=True)
    assert p.valid[: len(m.dialogues[0])].all() and not p.valid[len(m.dialogues[0]):].any()
    problems = r.verify()
    assert any("not extracted yet" in x for x in problems)
    assert problems[-1].startswith("fix: rerun merc-extract --dataset toy")


def test_other_fingerprint_is_refused_and_overwrite_replaces_only_that_set(tmp_path):
    m = _manifest()
    _fill(tmp_path / "s.zarr", m, fingerprint={"encoder": "x", "layer": -1})
    _fill(tmp_path / "s.zarr", m, fs="other")
    w = StoreWriter(tmp_path / "s.zarr", "toy", "feat")
    with pytest.raises(StoreError, match=r"another fingerprint.*layer: -1 -> 3.*--overwrite"):
        w.open(m, fingerprint={"encoder": "x", "layer": 3}, info={"dim": 8, "modality": "text"})
    notes = w.open(m, fingerprint={"encoder": "x", "layer": 3}, info={"dim": 8, "modality": "text"}, overwrite=True)
    assert any("deleting toy/feat (5 committed dialogues)" in n and "layer: -1 -> 3" in n for n in notes)
    assert w.done_dialogues() == set()  # replaced, not mixed
    assert StoreReader(tmp_path / "s.zarr").load_pooled("toy", "other").pooled.shape[0] == m.n_utterances


def test_a_label_fix_updates_the_manifest_and_keeps_every_feature_set(tmp_path):
    m = _manifest()
    _, arrays = _fill(tmp_path / "s.zarr", m)
    _fill(tmp_path / "s.zarr", m, fs="other")
    u = m.dialogues[0].utterances[0]
    u.labels["emotion"] = "anger" if u.labels["emotion"] != "anger" else "joy"
    m.dialogues[1].split = "dev"
    for x in m.dialogues[1].utterances:
        x.split = "dev"
    m.dialogues[2].utterances[0].speaker = "Zed"
    w = StoreWriter(tmp_path / "s.zarr", "toy", "feat")
    notes = w.open(m, fingerprint={"encoder": "x"}, info={"dim": 8, "modality": "text", "encoder": "x"})
    assert len(notes) == 1 and "emotion of 1 utterance(s)" in notes[0] and "split of" in notes[0]
    assert "speaker of 1" in notes[0] and "Every feature set is kept" in notes[0]
    plan = w.plan(m)
    assert plan.redo == [] and plan.current == [d.id for d in m.dialogues]
    r = StoreReader(tmp_path / "s.zarr")
    assert r.manifest("toy").digest() == m.digest()
    assert r.manifest("toy").dialogues[1].split == "dev"
    p = r.load_pooled("toy", "feat")  # current: nothing a text encoder reads changed
    np.testing.assert_array_equal(p.dialogue(0)[0], arrays[m.dialogues[0].id][0])
    assert r.load_pooled("toy", "other").pooled.shape[0] == m.n_utterances
    assert r.verify() == []


def test_changed_text_makes_exactly_its_dialogue_stale_for_the_encoders_that_read_it(tmp_path):
    m = _manifest()
    _fill(tmp_path / "s.zarr", m)  # a text encoder
    w = StoreWriter(tmp_path / "s.zarr", "toy", "llm")  # reads speaker names too (an LLM prompt with them)
    w.open(m, fingerprint={"encoder": "llm"}, info={"dim": 8, "modality": "text", "inputs": ["text", "speaker"]})
    for d in m.dialogues:
        w.write_dialogue(d.id, np.zeros((len(d), 8)), np.ones(len(d), bool))
    w.finalize(m)
    m.dialogues[3].utterances[1].text = "a corrected transcript"
    m.dialogues[4].utterances[0].speaker = "Zed"
    notes = StoreWriter(tmp_path / "s.zarr", "toy", "feat").open(m, fingerprint={"encoder": "x"},
                                                                 info={"dim": 8, "modality": "text"})
    assert "text of 1 utterance(s)" in notes[0]
    r = StoreReader(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match=r"1 dialogue\(s\) extracted from other inputs.*first: test_dia3"):
        r.load_pooled("toy", "feat")
    with pytest.raises(StoreError, match=r"2 dialogue\(s\) extracted from other inputs"):
        r.load_pooled("toy", "llm")
    w = StoreWriter(tmp_path / "s.zarr", "toy", "feat")
    w.open(m, fingerprint={"encoder": "x"}, info={"dim": 8, "modality": "text"})
    plan = w.plan(m)
    assert plan.stale == ["test_dia3"] and "test_dia4" in plan.current
    w.forget(plan)
    assert "test_dia3" not in w.done_dialogues()
    w.write_dialogue("test_dia3", np.ones((len(m.dialogues[3]), 8)), np.ones(len(m.dialogues[3]), bool))
    w.finalize(m)
    assert StoreReader(tmp_path / "s.zarr").load_pooled("toy", "feat").pooled.shape[0] == m.n_utterances


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
    assert any("uncommitted (a killed run)" in p for p in StoreReader(tmp_path / "s.zarr").verify())
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
    assert r.verify() == [] or all("half" in prob or "fix:" in prob for prob in r.verify())
    # the storage dtype is part of the fingerprint: the same encoder stored at another precision is another set
    assert r.info(m.name, "full")["fingerprint"]["store_dtype"] == "float32"
    assert r.info(m.name, "half")["fingerprint_hash"] != r.info(m.name, "full")["fingerprint_hash"]


@pytest.mark.parametrize("array", [np.arange(12, dtype=np.float16).reshape(3, 4), np.array([True, False, True]),
                                   np.arange(5, dtype=np.int64), np.zeros((0, 4), np.float32),
                                   np.linspace(-1e9, 1e9, 6, dtype=np.float32).reshape(2, 3)])
def test_direct_array_files_equal_what_zarr_writes(tmp_path, array):
    """ArrayFiles writes arrays without the zarr API; zarr must read back exactly its own metadata."""
    import zarr
    from zarr.codecs import BytesCodec, ZstdCodec

    sums = ArrayFiles.write_array(tmp_path, "ours", array)
    theirs = zarr.create_array(store=str(tmp_path / "theirs"), shape=array.shape, dtype=array.dtype,
                               chunks=tuple(max(1, s) for s in array.shape), serializer=BytesCodec(endian="little"),
                               compressors=ZstdCodec(level=0, checksum=False))
    if array.size:
        theirs[...] = array
    ours = zarr.open_array(str(tmp_path / "ours"), mode="r")
    assert ours.metadata == theirs.metadata
    np.testing.assert_array_equal(ours[...], array)
    assert ours[...].dtype == array.dtype
    assert set(sums) == {"ours/zarr.json"} | ({"ours/c/" + "/".join("0" * array.ndim)} if array.size else set())
    back = read_array(tmp_path, "ours", sums)  # checked against the checksums the write returned
    assert back.dtype == array.dtype and back.flags.writeable
    np.testing.assert_array_equal(back, array)
    np.testing.assert_array_equal(read_array(tmp_path, "theirs", None), array)  # zarr's own write, no checksums


def test_arrays_stored_other_ways_go_through_zarr_and_a_missing_chunk_is_never_a_fill_value(tmp_path):
    import zarr

    data = np.arange(40, dtype=np.float32).reshape(10, 4)
    several = zarr.create_array(store=str(tmp_path / "chunked"), shape=data.shape, dtype=data.dtype, chunks=(5, 4))
    several[...] = data
    np.testing.assert_array_equal(read_array(tmp_path, "chunked", None), data)
    (tmp_path / "chunked" / "c" / "1" / "0").unlink()
    with pytest.raises(DamagedError, match="chunked/c/1/0 is missing"):
        read_array(tmp_path, "chunked", None)
    unwritten = zarr.create_array(store=str(tmp_path / "fill"), shape=(3, 4), dtype=np.float32, chunks=(3, 4),
                                  fill_value=7.0)
    assert unwritten.nchunks_initialized == 0
    with pytest.raises(DamagedError, match="is missing"):
        read_array(tmp_path, "fill", None)
    with pytest.raises(DamagedError, match="nothing/zarr.json is missing"):
        read_array(tmp_path, "nothing", None)


def _frames_store(path, m):
    w = StoreWriter(path, m.name, "feat")
    w.open(m, fingerprint={"x": 1}, info={"dim": 4, "modality": "audio", "levels": ["utterance", "frames"]})
    rng = np.random.default_rng(0)
    for d in m.dialogues:
        counts = rng.integers(1, 5, len(d.utterances))
        w.write_dialogue(d.id, rng.standard_normal((len(d.utterances), 4)), np.ones(len(d.utterances), bool),
                         frames=rng.standard_normal((int(counts.sum()), 4)),
                         offsets=np.concatenate([[0], np.cumsum(counts)]))
    w.finalize(m)


def test_frames_read_directly_and_through_zarr_agree(tmp_path, monkeypatch):
    m = _manifest(n_dialogues=3)
    _frames_store(tmp_path / "s.zarr", m)
    r = StoreReader(tmp_path / "s.zarr")
    assert r.has_level(m.name, "feat", "frames")
    direct = [r.load_frames(m.name, "feat", d.id) for d in m.dialogues]
    from merc.extract.store import files

    monkeypatch.setattr(files, "_one_chunk", lambda meta, shape: False)  # every read now through zarr-python
    for d, (frames, offsets) in zip(m.dialogues, direct, strict=True):
        zf, zo = r.load_frames(m.name, "feat", d.id)
        np.testing.assert_array_equal(frames, zf)
        np.testing.assert_array_equal(offsets, zo)
        assert frames.dtype == zf.dtype == np.float16 and offsets.dtype == zo.dtype
    with pytest.raises(StoreError, match="no dialogue 'nope'"):
        r.load_frames(m.name, "feat", "nope")


def test_frame_levels_of_older_merc_read_as_frames(tmp_path):
    """merc 0.1's extraction recorded levels ["utterance", "frame"] while heads asked for "frames"."""
    m = _manifest(n_dialogues=2)
    _frames_store(tmp_path / "s.zarr", m)
    zj = tmp_path / "s.zarr" / "toy" / "feat" / "zarr.json"
    meta = json.loads(zj.read_text())
    meta["attributes"]["levels"] = ["utterance", "frame"]
    zj.write_text(json.dumps(meta))
    r = StoreReader(tmp_path / "s.zarr")
    assert r.info("toy", "feat")["levels"] == ["utterance", "frames"]
    assert r.load_frames("toy", "feat", m.dialogues[0].id)[0].shape[1] == 4


@pytest.mark.parametrize("damage", ["delete", "overwrite", "truncate"])
def test_damaged_chunks_are_refused_named_verified_and_redone(tmp_path, damage):
    m = _manifest()
    _, arrays = _fill(tmp_path / "s.zarr", m)
    bad = m.dialogues[1]
    chunk = tmp_path / "s.zarr" / "toy" / "feat" / dialogue_key(bad.id) / "pooled" / "c" / "0" / "0"
    if damage == "delete":
        chunk.unlink()
    elif damage == "overwrite":
        raw = bytearray(chunk.read_bytes())
        raw[len(raw) // 2:] = np.random.default_rng(0).bytes(len(raw) - len(raw) // 2)
        chunk.write_bytes(bytes(raw))
    else:
        chunk.write_bytes(chunk.read_bytes()[:5])
    r = StoreReader(tmp_path / "s.zarr")
    # packed is intact and was made from the same arrays: readers use it, and it holds the real values
    p = r.load_pooled("toy", "feat")
    np.testing.assert_array_equal(p.dialogue(1)[0], arrays[bad.id][0])
    problems = r.verify()
    assert any(f"dialogue {bad.id!r} is damaged: pooled/c/0/0" in x for x in problems), problems
    assert problems[-1].startswith("fix: rerun merc-extract")
    # without packed, the per-dialogue read is refused, never zeros
    shutil.rmtree(tmp_path / "s.zarr" / "toy" / "feat" / "packed")
    with pytest.raises(StoreError, match=rf"dialogue {bad.id!r} is damaged: pooled/c/0/0.*rerun merc-extract"):
        StoreReader(tmp_path / "s.zarr").load_pooled("toy", "feat")
    w = StoreWriter(tmp_path / "s.zarr", "toy", "feat")
    w.open(m, fingerprint={"encoder": "x"}, info={"dim": 8, "modality": "text", "encoder": "x"})
    plan = w.plan(m)
    assert list(plan.damaged) == [bad.id] and "pooled/c/0/0" in plan.damaged[bad.id]
    w.forget(plan)
    w.write_dialogue(bad.id, arrays[bad.id][0], arrays[bad.id][1])
    w.finalize(m)
    assert StoreReader(tmp_path / "s.zarr").verify() == []


def test_a_damaged_packed_copy_is_never_read_and_is_rebuilt(tmp_path):
    m = _manifest()
    _, arrays = _fill(tmp_path / "s.zarr", m)
    (tmp_path / "s.zarr" / "toy" / "feat" / "packed" / "pooled" / "c" / "0" / "0").unlink()
    r = StoreReader(tmp_path / "s.zarr")
    p = r.load_pooled("toy", "feat")  # from the per-dialogue arrays, whose checksums hold
    for i, d in enumerate(m.dialogues):
        np.testing.assert_array_equal(p.dialogue(i)[0], arrays[d.id][0])
    assert any("packed: does not match" in x for x in r.verify())
    w = StoreWriter(tmp_path / "s.zarr", "toy", "feat")
    w.open(m, fingerprint={"encoder": "x"}, info={"dim": 8, "modality": "text", "encoder": "x"})
    w.finalize(m)
    assert StoreReader(tmp_path / "s.zarr").verify() == []


def test_a_damaged_manifest_table_is_an_error_and_the_writer_rewrites_it(tmp_path):
    m = _manifest()
    _fill(tmp_path / "s.zarr", m)
    chunk = next((tmp_path / "s.zarr" / "toy" / "manifest" / "text").rglob("c/*"))
    chunk.unlink()
    with pytest.raises(StoreError, match="manifest table is damaged: manifest/text/c/0 is missing"):
        StoreReader(tmp_path / "s.zarr").manifest_columns("toy")
    assert "manifest table is damaged" in StoreReader(tmp_path / "s.zarr").verify()[0]
    StoreWriter(tmp_path / "s.zarr", "toy", "feat").open(m, fingerprint={"encoder": "x"},
                                                         info={"dim": 8, "modality": "text", "encoder": "x"})
    assert StoreReader(tmp_path / "s.zarr").verify() == []


def test_dialogue_groups_commit_atomically(tmp_path):
    m = _manifest(n_dialogues=2)
    _fill(tmp_path / "s.zarr", m)
    for d in m.dialogues:
        attrs = json.loads((tmp_path / "s.zarr" / "toy" / "feat" / dialogue_key(d.id) / "zarr.json").read_text())
        attrs = attrs["attributes"]
        assert attrs["complete"] is True and set(attrs["checksums"]) >= {"pooled/zarr.json", "valid/zarr.json"}
    assert not list((tmp_path / "s.zarr").rglob("*.tmp"))  # the atomic replace leaves nothing behind
