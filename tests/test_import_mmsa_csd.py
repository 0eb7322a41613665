"""MMSA pickles and CMU-MultimodalSDK .csd files written here in their documented structure (formats.md C, D),
imported through the importer registry, `write_import` and the `merc-extract import` CLI, checked against what
was written, verified, and trained on with a baseline head."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
from heads_synth import small_overrides
from typer.testing import CliRunner

from merc.data_manifests.errors import ManifestError
from merc.data_manifests.fold_lists import load_folds
from merc.extract.cli import app as extract_app
from merc.extract.importers import read_import, safe_pickle, write_import
from merc.extract.importers.csd import CsdImporter
from merc.extract.importers.mmsa import MmsaImporter
from merc.extract.store import StoreReader
from merc.heads.cli import app as heads_app

MOSI = load_folds("mosi")
MOSEI = load_folds("mosei")
EMOTIONS = ("happy", "sad", "anger", "surprise", "disgust", "fear")


def pick(folds, counts=(3, 2, 2), skip=0):
    """Real video ids of the standard folds, so split comparison and corpus checks see real data."""
    return {s: list(folds.ids[s][skip:skip + n]) for s, n in zip(("train", "dev", "test"), counts, strict=True)}


# ---------------------------------------------------------------------------------------------------
# MMSA pickles
# ---------------------------------------------------------------------------------------------------

DIMS = {"text": 6, "audio": 5, "vision": 4}
STEPS = {"text": 8, "audio": 10, "vision": 7}
CLIPS = ["3", "1", "10", "2"]  # written out of order: the manifest orders them as numbers 1, 2, 3, 10


def write_mmsa(path: Path, videos: dict[str, list[str]], *, aligned: bool = False, seed: int = 0,
               bad_value: float | None = -np.inf) -> dict:
    """Write an MMSA dict of splits with plain pickle.dump; return what a reader must find, per utterance id.

    The first segment of the first train video gets `bad_value` in a real audio frame; padding frames hold
    garbage (NaN) that a reader must never look at.
    """
    rng = np.random.default_rng(seed)
    expected: dict[str, dict] = {}
    data: dict = {}
    steps = {m: 8 for m in STEPS} if aligned else STEPS
    for key, split in (("train", "train"), ("valid", "dev"), ("test", "test")):
        ids, labels, texts = [], [], []
        arrays = {m: [] for m in DIMS}
        lengths = {m: [] for m in DIMS}
        masks = []
        for video in videos[split]:
            for clip in CLIPS:
                label = float(np.round(rng.uniform(-3, 3) * 5) / 5)
                ids.append(f"{video}$_${clip}")
                labels.append(label)
                texts.append(f"words of {video} clip {clip}")
                real = {}
                for m, dim in DIMS.items():
                    n = int(rng.integers(2, steps[m] + 1)) if m != "text" else int(rng.integers(3, steps[m] + 1))
                    x = rng.standard_normal((n, dim)).astype(np.float32)
                    x[:, 0] += label  # a planted signal
                    pad = np.full((steps[m] - n, dim), np.nan if not aligned else 0.0, np.float32)
                    if aligned and m != "text":  # MulT/MMSA aligned files pad zeros in front
                        full = np.concatenate([np.zeros_like(pad), x])
                    else:
                        full = np.concatenate([x, pad if not aligned else np.zeros_like(pad)])
                    arrays[m].append(full)
                    lengths[m].append(n)
                    real[m] = x
                masks.append(np.arange(steps["text"]) < lengths["text"][-1])
                expected[f"{video}_{clip}"] = {"split": split, "label": label, "text": texts[-1], "frames": real,
                                               "video": video}
        part = {"id": np.array(ids), "raw_text": texts, "regression_labels": np.array(labels, np.float32),
                "classification_labels": (np.array(labels) > 0).astype(np.float32),
                "annotations": ["Positive" if x > 0 else "Negative" for x in labels]}
        for m in DIMS:
            part[m] = np.stack(arrays[m])
        # text_bert: rows input_ids, attention mask, segment ids
        mask = np.stack(masks).astype(np.float32)
        part["text_bert"] = np.stack([mask * 101, mask, np.zeros_like(mask)], axis=1)
        if not aligned:
            part["audio_lengths"] = lengths["audio"]
            part["vision_lengths"] = np.array(lengths["vision"])
        data[key] = part
    if bad_value is not None:
        first = f"{videos['train'][0]}$_${CLIPS[0]}"
        row = list(data["train"]["id"]).index(first)
        data["train"]["audio"][row, 0, 1] = bad_value
        expected[first.replace("$_$", "_")]["frames"]["audio"][0, 1] = bad_value
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return expected


def check_store_against(store: Path, dataset: str, expected: dict, prefix: str, bad_id: str | None = None) -> None:
    """Labels, splits, ids, segment order, text, pooled means and frames, as written."""
    r = StoreReader(store)
    assert r.verify() == []
    m = r.manifest(dataset)
    for d in m.dialogues:
        clips = [u.id.rsplit("_", 1)[1] for u in d.utterances]
        assert clips == sorted(clips, key=int), "segments ordered by clip index as a number"
        for u in d.utterances:
            e = expected[u.id]
            assert (u.dialogue_id, u.split, u.speaker, u.text) == (e["video"], e["split"], e["video"], e["text"])
            assert u.labels["sentiment"] == pytest.approx(e["label"], abs=1e-6)
    assert sorted(u.id for u in m.utterances()) == sorted(expected)
    for key, modality in (("text", "text"), ("audio", "audio"), ("vision", "video")):
        fs = f"{prefix}-{modality}"
        pooled = r.load_pooled(dataset, fs)
        rows = {u.id: i for i, u in enumerate(m.utterances())}
        for uid, e in expected.items():
            x = np.where(np.isfinite(e["frames"][key]), e["frames"][key], 0)
            if uid == bad_id and key == "audio":
                assert not pooled.valid[rows[uid]]
                continue
            assert pooled.valid[rows[uid]]
            np.testing.assert_allclose(pooled.pooled[rows[uid]].astype(np.float32), x.mean(0), atol=2e-2)
        d0 = m.dialogues[0]
        frames, offsets = r.load_frames(dataset, fs, d0.id)
        assert len(offsets) == len(d0) + 1
        for j, u in enumerate(d0.utterances):
            want = np.where(np.isfinite(expected[u.id]["frames"][key]), expected[u.id]["frames"][key], 0)
            if not (u.id == bad_id and key == "audio"):
                np.testing.assert_allclose(frames[offsets[j]:offsets[j + 1]].astype(np.float32), want, atol=2e-2)


def train(store: Path, dataset: str, features: str, task: str, out: Path, head: str = "mlp") -> dict:
    sets = [x for k, v in small_overrides(head).items() for x in ("--set", f"{k}={v}")]
    res = CliRunner().invoke(heads_app, ["train", "--head", head, "--store", str(store), "--dataset", dataset,
                                         "--features", features, "--task", task, "--epochs", "2", "--batch-size", "8",
                                         *sets, "--out", str(out), "--name", head, "--precision", "fp32",
                                         "--device", "cpu", "--preset", "none"])
    assert res.exit_code == 0, (res.output, res.exception)
    return json.loads((out / head / "metrics.json").read_text())


def cli(*args: str, code: int = 0) -> str:
    res = CliRunner().invoke(extract_app, list(args))
    assert res.exit_code == code, (res.output, res.exception)
    return res.output


def test_mmsa_unaligned_through_the_cli_then_verify_status_and_train(tmp_path):
    videos = pick(MOSI)
    pkl = tmp_path / "downloaded.bin"  # no telling name: the family comes from the structure
    expected = write_mmsa(pkl, videos)
    store = tmp_path / "c.zarr"
    out = cli("import", str(pkl), "--dataset", "mosi", "--store", str(store))
    assert "mmsa" in out and "mmsa-audio" in out
    check_store_against(store, "mosi", expected, "mmsa")
    m = StoreReader(store).manifest("mosi")
    assert {s: [d.id for d in m.split(s)] for s in ("train", "dev", "test")} == videos  # valid -> dev, video order
    prov = m.policies["import"]
    assert prov["family"] == "mmsa" and prov["aligned"] is False and prov["dev_split"] == "official"
    assert prov["sources"][0]["sha256"] and prov["dims"] == {"text": 6, "audio": 5, "video": 4}
    assert prov["nonfinite"][0]["neg_inf"] == 1 and prov["nan_policy"] == "zero"
    assert prov["feature_sets"]["mmsa-audio"]["lengths"] == "audio_lengths"
    assert prov["feature_sets"]["mmsa-text"]["lengths"].startswith("text_bert")
    assert cli("verify", "--store", str(store)).strip().endswith(")") and "OK" in cli("verify", "--store", str(store))
    status = cli("status", "--store", str(store))
    assert "family mmsa" in status and prov["sources"][0]["sha256"][:12] in status
    metrics = train(store, "mosi", "t=mmsa-text,a=mmsa-audio,v=mmsa-video", "sentiment_has0", tmp_path / "runs")
    test = metrics["splits"]["test"]["sentiment_has0"]
    assert test["n"] == len(videos["test"]) * len(CLIPS) and set(test["per_class"]) == {"negative", "non-negative"}
    # the frames, with their lengths, feed a frame-level head (MMoLRE: text tokens and audio frames)
    metrics = train(store, "mosi", "t=mmsa-text,a=mmsa-audio", "sentiment", tmp_path / "runs", head="mmolre")
    assert {"mae", "acc2_has0", "acc7"} <= set(metrics["splits"]["test"]["sentiment"])


def test_mmsa_aligned_strips_zero_padding_and_names_its_sets(tmp_path):
    videos = pick(MOSEI, skip=5)
    pkl = tmp_path / "aligned_50.pkl"
    expected = write_mmsa(pkl, videos, aligned=True, bad_value=None)
    family, corpus = read_import(pkl, "mosei")
    assert family == "mmsa" and corpus.provenance["aligned"] is True
    assert [f.name for f in corpus.features] == ["mmsa-aligned-text", "mmsa-aligned-audio", "mmsa-aligned-video"]
    assert "all-zero frames" in corpus.provenance["feature_sets"]["mmsa-aligned-audio"]["lengths"]
    assert "emotions" not in corpus.manifest.label_spaces  # MMSA files carry sentiment only
    store = tmp_path / "c.zarr"
    write_import(store, corpus, "mosei")
    check_store_against(store, "mosei", expected, "mmsa-aligned")


@pytest.mark.parametrize("policy", ["mask", "error"])
def test_mmsa_nonfinite_policies(tmp_path, policy):
    videos = pick(MOSI, skip=3)
    pkl = tmp_path / "unaligned_50.pkl"
    expected = write_mmsa(pkl, videos, bad_value=np.nan)
    bad = f"{videos['train'][0]}_{CLIPS[0]}"
    store = tmp_path / "c.zarr"
    if policy == "error":
        with pytest.raises(ManifestError, match=rf"NaN 1\) in 1 key\(s\): {bad}.*nan_policy=error"):
            read_import(pkl, "mosi", nan_policy="error")
        assert not store.exists()
        return
    _, corpus = read_import(pkl, "mosi", nan_policy="mask")
    write_import(store, corpus, "mosi")
    check_store_against(store, "mosi", expected, "mmsa", bad_id=bad)
    assert any("marked missing" in f.problem for f in StoreReader(store).manifest("mosi").findings)


def test_mmsa_mismatched_or_broken_files_write_nothing(tmp_path):
    store = tmp_path / "c.zarr"
    mosei_file = tmp_path / "mosei.pkl"
    write_mmsa(mosei_file, pick(MOSEI))
    out = cli("import", str(mosei_file), "--dataset", "mosi", "--store", str(store), code=2)
    assert "looks like CMU-MOSEI" in out and "--dataset mosei" in out
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(mosei_file.read_bytes()[:2000])
    out = cli("import", str(truncated), "--dataset", "mosei", "--store", str(store), code=2)
    assert "truncated.pkl" in out
    odd = tmp_path / "odd.pkl"
    with open(odd, "wb") as f:
        pickle.dump({"train": {"id": np.array(["a$_$1"]), "audio": np.zeros((1, 2, 3))}}, f)  # no labels
    assert not MmsaImporter().detect(safe_pickle.load(odd))
    with pytest.raises(ManifestError, match="not an MMSA pickle: split 'train' has no regression_labels"):
        MmsaImporter().read(odd, "mosi")
    with pytest.raises(ManifestError, match="'mmsa' family does not recognise the file"):
        read_import(odd, "mosi", family="mmsa")
    assert not store.exists()


# ---------------------------------------------------------------------------------------------------
# CMU-MultimodalSDK .csd
# ---------------------------------------------------------------------------------------------------

def write_csd(path: Path, root: str, data: dict[str, tuple[np.ndarray, np.ndarray]], meta: dict | None = None) -> Path:
    """The SDK's write_CSD layout: /<root>/data/<key>/{features, intervals}, /<root>/metadata/<key>."""
    with h5py.File(path, "w") as f:
        g = f.create_group(root)
        d = g.create_group("data")
        for key, (feats, intervals) in data.items():
            k = d.create_group(key)
            k.create_dataset("features", data=feats)
            k.create_dataset("intervals", data=intervals)
        m = g.create_group("metadata")
        for key, value in {"root name": root, **(meta or {})}.items():
            m.create_dataset(key, (1,), dtype=h5py.string_dtype(), data=[json.dumps(value)])
    return path


def make_mosei_csd(folder: Path, seed: int = 0) -> dict:
    """Labels (unaligned, 7 columns), COVAREP (unaligned frames, one -inf), FACET (aligned vid[i]) and words."""
    rng = np.random.default_rng(seed)
    videos = pick(MOSEI, counts=(3, 1, 1), skip=20)
    vids = [v for s in ("train", "dev", "test") for v in videos[s]] + ["notInAnyFold0"]
    labels, covarep, facet, words, expected = {}, {}, {}, {}, {}
    for v in vids:
        n = int(rng.integers(2, 5))
        bounds = np.cumsum(np.r_[0.0, rng.uniform(1.0, 2.0, n)])
        intervals = np.stack([bounds[:-1], bounds[1:]], 1)
        sent = np.round(rng.uniform(-3, 3, n) * 3) / 3
        sent[0] = 0.0  # an exact zero: unlabelled for sentiment_non0
        emo = np.clip(rng.uniform(-1.5, 3, (n, 6)), 0, 3)
        labels[v] = (np.c_[sent, emo], intervals)
        t = np.arange(0, bounds[-1], 0.1)
        frames = np.stack([t, t + 0.1], 1)
        cov = rng.standard_normal((len(t), 4)).astype(np.float32)
        covarep[v] = (cov, frames)
        words[v] = (np.array([[b"hello"], [b"sp"], [b"there"]] * 2), np.stack([t[:6], t[:6] + 0.1], 1))
        for i in range(n):
            face = rng.standard_normal((int(rng.integers(1, 4)), 3)).astype(np.float32)
            facet[f"{v}[{i}]"] = (face, np.tile(intervals[i], (len(face), 1)))
            mid = frames.mean(1)
            inside = (mid >= intervals[i, 0]) & (mid < intervals[i, 1])
            said = [w for w, m_ in zip(["hello", "sp", "there"] * 2, mid[:6], strict=True)
                    if intervals[i, 0] <= m_ < intervals[i, 1] and w != "sp"]
            expected[f"{v}[{i}]"] = {"video": v, "sentiment": float(sent[i]), "covarep": cov[inside].mean(0),
                                     "facet": face.mean(0), "text": " ".join(said),
                                     "emotions": tuple(e for e, x in zip(EMOTIONS, emo[i], strict=True) if x > 0)}
    first = f"{vids[0]}[1]"
    t0 = labels[vids[0]][1][1, 0]
    j = int(np.argmax(covarep[vids[0]][1].mean(1) >= t0))
    covarep[vids[0]][0][j, 2] = -np.inf
    e = expected[first]
    inside = (covarep[vids[0]][1].mean(1) >= t0) & (covarep[vids[0]][1].mean(1) < labels[vids[0]][1][1, 1])
    e["covarep"] = np.where(np.isfinite(covarep[vids[0]][0][inside]), covarep[vids[0]][0][inside], 0).mean(0)
    return {"labels": write_csd(folder / "CMU_MOSEI_Labels.csd", "All Labels", labels),
            "covarep": write_csd(folder / "CMU_MOSEI_COVAREP.csd", "COVAREP", covarep,
                                 {"computational sequence description": "COVAREP acoustic features"}),
            "facet": write_csd(folder / "CMU_MOSEI_VisualFacet42.csd", "FACET 4.2", facet),
            "words": write_csd(folder / "CMU_MOSEI_TimestampedWords.csd", "words", words),
            "expected": expected, "videos": videos, "bad": first}


def test_csd_import_features_labels_text_and_train(tmp_path):
    f = make_mosei_csd(tmp_path)
    store = tmp_path / "c.zarr"
    out = cli("import", str(f["covarep"]), "--labels", str(f["labels"]), "--dataset", "mosei", "--store",
              str(store), "--option", f"features={f['facet']},{f['words']}")
    assert "csd" in out
    r = StoreReader(store)
    assert r.verify() == []
    m = r.manifest("mosei")
    assert {s: [d.id for d in m.split(s)] for s in ("train", "dev", "test")} == f["videos"]  # standard folds
    assert "notInAnyFold0" not in {d.id for d in m.dialogues}
    assert m.label_spaces["emotions"].kind == "multilabel"
    rows = {u.id: i for i, u in enumerate(m.utterances())}
    assert set(rows) == {k for k, e in f["expected"].items() if e["video"] != "notInAnyFold0"}
    cov, face = r.load_pooled("mosei", "csd-covarep"), r.load_pooled("mosei", "csd-facet-4-2")
    for d in m.dialogues:
        assert [u.id for u in d.utterances] == [f"{d.id}[{i}]" for i in range(len(d))]  # segment order by i
        for u in d.utterances:
            e = f["expected"][u.id]
            assert u.labels["sentiment"] == pytest.approx(e["sentiment"]) and u.labels["emotions"] == e["emotions"]
            assert u.text == e["text"] and u.speaker == d.id
            np.testing.assert_allclose(cov.pooled[rows[u.id]].astype(np.float32), e["covarep"], atol=2e-2)
            np.testing.assert_allclose(face.pooled[rows[u.id]].astype(np.float32), e["facet"], atol=2e-2)
    prov = m.policies["import"]
    assert prov["family"] == "csd" and len(prov["sources"]) == 4 and prov["videos_left_out"] == 1
    assert prov["nonfinite"][0]["neg_inf"] == 1 and list(prov["nonfinite"][0]["keys"]) == [f["bad"]]
    assert r.info("mosei", "csd-covarep")["modality"] == "audio" and r.info("mosei", "csd-facet-4-2")["modality"] == "video"
    metrics = train(store, "mosei", "a=csd-covarep,v=csd-facet-4-2", "sentiment_non0", tmp_path / "runs")
    assert set(metrics["splits"]["test"]["sentiment_non0"]["per_class"]) == {"negative", "positive"}


def test_csd_nan_policy_error_and_mask(tmp_path):
    f = make_mosei_csd(tmp_path)
    with pytest.raises(ManifestError, match=r"-inf 1.*" + f["bad"].replace("[", r"\[").replace("]", r"\]")):
        read_import(f["covarep"], "mosei", labels=f["labels"], nan_policy="error")
    _, corpus = read_import(f["covarep"], "mosei", labels=f["labels"], nan_policy="mask")
    fs = corpus.features[0]
    dia, i = f["bad"].split("[")
    assert not fs.valid[dia][int(i[:-1])] and fs.valid[dia].sum() == len(fs.valid[dia]) - 1
    assert corpus.provenance["nan_policy"] == "mask"


def test_csd_mismatches_and_missing_lists_write_nothing(tmp_path, monkeypatch):
    f = make_mosei_csd(tmp_path)
    store = tmp_path / "c.zarr"
    out = cli("import", str(f["covarep"]), "--labels", str(f["labels"]), "--dataset", "mosi", "--store", str(store),
              code=2)
    assert "MOSEI labels" in out and "--dataset mosei" in out
    with pytest.raises(ManifestError, match="labels are in their own csd"):
        read_import(f["covarep"], "mosei")
    other = write_csd(tmp_path / "other.csd", "COVAREP", {"someVideo": (np.zeros((3, 2)), np.zeros((3, 2)))})
    with pytest.raises(ManifestError, match="shares no video with the labels"):
        read_import(other, "mosei", labels=f["labels"])
    with pytest.raises(ManifestError, match=r"sims_standard_train\.txt"):
        read_import(f["covarep"], "sims", labels=f["labels"])
    truncated = tmp_path / "cut.csd"
    truncated.write_bytes(f["covarep"].read_bytes()[:1500])
    assert CsdImporter().detect(truncated)
    out = cli("import", str(truncated), "--labels", str(f["labels"]), "--dataset", "mosei", "--store", str(store),
              code=2)
    assert "cut.csd" in out and "download" in out
    assert not store.exists()
