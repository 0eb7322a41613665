"""COGMEN/CORECT MOSEI pickles, COSMIC COMET features onto a stored dataset, and one MOSI dataset fed by both an
MMSA pickle and a CMU-MultimodalSDK .csd (ids `vid_clip` / `vid[i]` meeting through aliases). Small files written
here with the documented structure (formats.md C, D, F, H6), imported through the CLI, checked against what was
written, verified, and trained on for one epoch."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from legacy_pickles import iemocap
from test_import_erc import train as train_erc
from test_import_erc import tree_digest, write
from test_import_mmsa_csd import CLIPS, MOSEI, MOSI, cli, pick, write_csd, write_mmsa

from merc.extract.importers.comet import RELATIONS
from merc.extract.store import StoreReader

# ---------------------------------------------------------------------------------------------------
# COGMEN / CORECT MOSEI
# ---------------------------------------------------------------------------------------------------


def cogmen_mosei(tbje: bool, seed: int = 0) -> tuple[tuple, dict]:
    """categorical.p (9-tuple, 0/1 class indices) or tbje_mosei_updated.pkl (10-tuple, score vectors, per-word
    audio sequences, word lists, dev ids), keyed by real MOSEI video ids."""
    rng = np.random.default_rng(seed)
    folds = pick(MOSEI, counts=(10, 2, 2), skip=40)
    keys = {"train": folds["train"], "dev": folds["dev"], "test": folds["test"]}
    if not tbje:  # categorical.p has no dev list: the dev videos go to trainVid
        keys = {"train": folds["train"] + folds["dev"], "test": folds["test"]}
    vids = [v for ks in keys.values() for v in ks]
    ids, spk, labels, text, audio, visual, sent, truth = {}, {}, {}, {}, {}, {}, {}, {}
    for j, v in enumerate(vids):
        n = 2 + j % 3
        score = np.round(rng.uniform(-3, 3, n), 2)
        spk[v] = ["M"] * n
        sent[v] = [["word", str(i), v] for i in range(n)] if tbje else [f"line {i} of {v}" for i in range(n)]
        text[v] = rng.standard_normal((n, 768)).astype(np.float32)
        visual[v] = rng.standard_normal((n, 35)).astype(np.float32)
        if tbje:
            ids[v] = [f"{v}_{i}" for i in range(n)]
            labels[v] = [np.r_[s, np.zeros(6)] for s in score]
            audio[v] = [rng.standard_normal((int(rng.integers(2, 6)), 80)).astype(np.float32) for _ in range(n)]
        else:
            ids[v] = list(range(n))
            labels[v] = [int(s >= 0) for s in score]
            audio[v] = rng.standard_normal((n, 80)).astype(np.float32)
        text[v][:, 0] += score
        truth[v] = {"score": score, "labels": labels[v], "audio": audio[v], "sent": sent[v]}
    head = (ids, spk, labels, text, audio, visual, sent)
    obj = head + ((keys["train"], keys["dev"], keys["test"]) if tbje else (keys["train"], keys["test"]))
    return obj, {"keys": keys, "truth": truth}


def test_tbje_mosei_pickle_imports_with_sentiment_scores_and_its_dev_ids(tmp_path):
    obj, w = cogmen_mosei(tbje=True)
    path = write(tmp_path / "downloaded.pkl", pickle.dumps(obj, protocol=2))
    store = tmp_path / "s.zarr"
    out = cli("import", str(path), "--dataset", "mosei", "--store", str(store))
    assert "family cogmen-mosei (tbje-10)" in out and "the file's own dev ids (2 videos)" in out
    r = StoreReader(store)
    m = r.manifest("mosei")
    assert {s: [d.id for d in m.split(s)] for s in ("train", "dev", "test")} == w["keys"]
    assert m.label_spaces["sentiment"].kind == "regression"
    audio = r.load_pooled("mosei", "cogmen-mosei-audio")
    row = 0
    for d in m.dialogues:
        t = w["truth"][d.id]
        assert [u.id for u in d.utterances] == [f"{d.id}_{i}" for i in range(len(d))]
        assert [u.labels["sentiment"] for u in d.utterances] == pytest.approx(list(t["score"]))
        assert [u.text for u in d.utterances] == [" ".join(s) for s in t["sent"]] and d.utterances[0].speaker == d.id
        for x in t["audio"]:  # a per-word sequence, averaged as COGMEN does
            np.testing.assert_allclose(audio.pooled[row].astype(np.float32), x.mean(0), atol=2e-3)
            row += 1
    assert r.info("mosei", "cogmen-mosei-visual")["dim"] == 35 and r.info("mosei", "cogmen-mosei-text")["dim"] == 768
    prov = m.policies["import"]
    assert "Exploration-Lab/COGMEN" in prov["label_source_code"] and "[0]" in prov["label_semantics"]
    assert "OK" in cli("verify", "--store", str(store))
    metrics = train_erc(store, "mosei", "t=cogmen-mosei-text,a=cogmen-mosei-audio,v=cogmen-mosei-visual", tmp_path,
                        task="sentiment_has0")
    assert set(metrics["splits"]) == {"train", "dev", "test"}


def test_categorical_p_gets_a_cogmen_space_and_the_first_ten_percent_dev_split(tmp_path):
    obj, w = cogmen_mosei(tbje=False)
    path = write(tmp_path / "categorical.p", pickle.dumps(obj, protocol=2))
    store = tmp_path / "s.zarr"
    out = cli("import", str(path), "--dataset", "iemocap", "--store", str(store), code=2)
    assert "COGMEN/CORECT's MOSEI pickle" in out and "--dataset mosei" in out and not store.exists()
    out = cli("import", str(path), "--dataset", "mosei", "--store", str(store))
    assert "family cogmen-mosei (categorical-9)" in out and "first 10 % of trainVid" in out
    m = StoreReader(store).manifest("mosei")
    train_keys = w["keys"]["train"]
    assert [d.id for d in m.split("dev")] == train_keys[:1] and [d.id for d in m.split("train")] == train_keys[1:]
    space = m.label_spaces["cogmen_sentiment2"]
    assert space.classes == ("Negative", "Positive") and "sentiment" not in m.label_spaces
    for d in m.dialogues:
        assert [u.labels["cogmen_sentiment2"] for u in d.utterances] == [space.classes[x] for x in
                                                                         w["truth"][d.id]["labels"]]
        assert [u.id for u in d.utterances] == [f"{d.id}_pos{i}" for i in range(len(d))]  # integer ids: positions
    prov = m.policies["import"]
    assert "UNCERTAIN" in prov["label_semantics"] and prov["label_map"]["cogmen_sentiment2"] == {"0": "Negative",
                                                                                               "1": "Positive"}
    metrics = train_erc(store, "mosei", "t=cogmen-mosei-text,v=cogmen-mosei-visual", tmp_path,
                        task="cogmen_sentiment2")
    assert set(metrics["splits"]) == {"train", "dev", "test"}


# ---------------------------------------------------------------------------------------------------
# COSMIC COMET features onto the stored COSMIC roberta import
# ---------------------------------------------------------------------------------------------------

def comet_file(w, path: Path, width: int = 8, short: str | None = None) -> tuple[Path, dict]:
    rng = np.random.default_rng(3)
    keys = [k for ks in w.keys.values() for k in ks]
    rows = {rel: {k: rng.standard_normal((len(w.labels[k]) - (k == short), width)).astype(np.float32) for k in keys}
            for rel in RELATIONS}
    write(path, pickle.dumps(tuple(rows[rel] for rel in RELATIONS), protocol=2))
    return path, rows


def test_comet_features_go_onto_the_stored_cosmic_dataset(tmp_path):
    obj, w = iemocap("cosmic-roberta-10", dims={f"roberta{i}": 16 for i in range(1, 5)})
    store = tmp_path / "s.zarr"
    cli("import", str(write(tmp_path / "iemocap_features_roberta.pkl", pickle.dumps(obj))), "--dataset", "iemocap",
        "--store", str(store))
    comet, rows = comet_file(w, tmp_path / "iemocap_features_comet.pkl")
    out = cli("import", str(comet), "--dataset", "iemocap", "--store", str(store))
    assert "family cosmic-comet" in out and "features placed on the stored utterances (position)" in out
    r = StoreReader(store)
    assert {f"comet-{rel.lower()}" for rel in RELATIONS} <= set(r.feature_sets("iemocap"))
    m = r.manifest("iemocap")
    assert m.policies["import"]["family"] == "cosmic"  # the stored description is the roberta pickle's
    assert "aliases" not in r.manifest_columns("iemocap") and all(not u.aliases for u in m.utterances())
    pooled = r.load_pooled("iemocap", "comet-oreact")
    i = 0
    for d in m.dialogues:
        np.testing.assert_allclose(pooled.pooled[i:i + len(d)].astype(np.float32), rows["oReact"][d.id], atol=2e-3)
        i += len(d)
    assert r.info("iemocap", "comet-xintent")["modality"] == "text"
    assert "OK" in cli("verify", "--store", str(store))
    status = cli("status", "--store", str(store))
    assert "iemocap/comet-xintent: imported from" in status and "family cosmic-comet" in status
    metrics = train_erc(store, "iemocap", "t=comet-xintent", tmp_path)
    assert {"train", "test"} <= set(metrics["splits"])


def test_comet_that_does_not_match_the_store_writes_nothing(tmp_path):
    obj, w = iemocap("cosmic-roberta-10", dims={f"roberta{i}": 16 for i in range(1, 5)})
    comet, _ = comet_file(w, tmp_path / "c.pkl", short="Ses02F_impro02")
    out = cli("import", str(comet), "--dataset", "iemocap", "--store", str(tmp_path / "empty.zarr"), code=2)
    assert "no dataset 'iemocap' to add these features to" in out and "first import the corpus description" in out
    store = tmp_path / "s.zarr"
    cli("import", str(write(tmp_path / "roberta.pkl", pickle.dumps(obj))), "--dataset", "iemocap", "--store",
        str(store))
    before = tree_digest(store)
    out = cli("import", str(comet), "--dataset", "iemocap", "--store", str(store), code=2)
    assert "dialogue 'Ses02F_impro02' has" in out and "rows in the file but" in out
    assert tree_digest(store) == before


# ---------------------------------------------------------------------------------------------------
# one MOSI dataset from an MMSA pickle and a .csd: `vid_clip` and `vid[i]` meet
# ---------------------------------------------------------------------------------------------------

def other_label(x: float) -> float:
    """A sentiment 1 away from x, still in [-3, 3]."""
    return x + 1.0 if x < 2 else x - 1.0


def mosi_csd(folder: Path, expected: dict, videos: dict, shift: str | None = None) -> tuple[Path, Path, dict]:
    """Label csd (one sentiment per segment, rows in spoken order = clip index order) and an aligned FACET-like
    csd keyed vid[i], for the segments MMSA's file holds. `shift` changes one video's labels."""
    rng = np.random.default_rng(7)
    order = sorted(CLIPS, key=int)
    labels, facet, means = {}, {}, {}
    for v in (x for s in ("train", "dev", "test") for x in videos[s]):
        sent = np.array([[other_label(expected[f"{v}_{c}"]["label"]) if v == shift else expected[f"{v}_{c}"]["label"]]
                         for c in order])
        intervals = np.stack([np.arange(len(order)), np.arange(len(order)) + 1.0], 1)
        labels[v] = (sent, intervals)
        for i, c in enumerate(order):
            x = rng.standard_normal((int(rng.integers(1, 4)), 3)).astype(np.float32)
            facet[f"{v}[{i}]"] = (x, np.tile(intervals[i], (len(x), 1)))
            means[f"{v}_{c}"] = (f"{v}[{i}]", x.mean(0))
    lab = write_csd(folder / "CMU_MOSI_Opinion_Labels.csd", "Opinion Segment Labels", labels)
    fac = write_csd(folder / "CMU_MOSI_Visual_Facet_42.csd", "FACET 4.2", facet)
    return lab, fac, means


def test_mmsa_and_csd_features_share_one_mosi_dataset(tmp_path):
    videos = pick(MOSI, counts=(3, 1, 2), skip=5)
    pkl = tmp_path / "unaligned_50.pkl"
    expected = write_mmsa(pkl, videos, bad_value=None)
    lab, fac, means = mosi_csd(tmp_path, expected, videos)
    store = tmp_path / "s.zarr"
    cli("import", str(pkl), "--dataset", "mosi", "--store", str(store))
    out = cli("import", str(fac), "--labels", str(lab), "--dataset", "mosi", "--store", str(store))
    assert "by segment order checked by the sentiment labels" in out and "alias(es) recorded" in out
    r = StoreReader(store)
    m = r.manifest("mosi")
    assert m.policies["import"]["family"] == "mmsa"  # the first description stays
    assert set(r.feature_sets("mosi")) == {"mmsa-text", "mmsa-audio", "mmsa-video", "csd-facet-4-2"}
    facet = r.load_pooled("mosi", "csd-facet-4-2")
    for row, u in enumerate(m.utterances()):
        sdk, mean = means[u.id]
        video, clip = u.id.rsplit("_", 1)
        assert set(u.aliases) == {f"{video}$_${clip}", sdk}  # MMSA's and the SDK's names of the segment
        assert facet.valid[row]
        np.testing.assert_allclose(facet.pooled[row].astype(np.float32), mean, atol=2e-3)
    assert "OK" in cli("verify", "--store", str(store))
    metrics = train_erc(store, "mosi", "t=mmsa-text,v=csd-facet-4-2", tmp_path, task="sentiment")
    assert {"train", "dev", "test"} <= set(metrics["splits"])
    # the other order: csd first (ids vid[i]), then MMSA onto it
    other = tmp_path / "o.zarr"
    cli("import", str(fac), "--labels", str(lab), "--dataset", "mosi", "--store", str(other))
    cli("import", str(pkl), "--dataset", "mosi", "--store", str(other))
    r2 = StoreReader(other)
    audio = r2.load_pooled("mosi", "mmsa-audio")
    for row, u in enumerate(r2.manifest("mosi").utterances()):
        mmsa_id = next(a for a in u.aliases if "$_$" not in a)
        assert u.id == means[mmsa_id][0] and audio.valid[row]
        np.testing.assert_allclose(audio.pooled[row].astype(np.float32),
                                   expected[mmsa_id]["frames"]["audio"].mean(0), atol=2e-2)


def test_csd_whose_labels_disagree_is_not_paired(tmp_path):
    videos = pick(MOSI, counts=(2, 1, 1), skip=8)
    pkl = tmp_path / "unaligned_50.pkl"
    expected = write_mmsa(pkl, videos, bad_value=None)
    store = tmp_path / "s.zarr"
    cli("import", str(pkl), "--dataset", "mosi", "--store", str(store))
    # every video disagrees: a clear error, nothing written
    (tmp_path / "x").mkdir()
    before = tree_digest(store)
    lab_all, fac_all, _ = mosi_csd(tmp_path / "x", {k: {**e, "label": other_label(e["label"])}
                                                    for k, e in expected.items()}, videos)
    out = cli("import", str(fac_all), "--labels", str(lab_all), "--dataset", "mosi", "--store", str(store), code=2)
    assert "none of the file's 16 segments can be placed" in out and "--name" in out and "--overwrite" in out
    assert tree_digest(store) == before
    # one video disagrees: the others are paired, its utterances are marked missing
    shifted = videos["train"][0]
    lab, fac, _ = mosi_csd(tmp_path, expected, videos, shift=shifted)
    out = cli("import", str(fac), "--labels", str(lab), "--dataset", "mosi", "--store", str(store))
    assert f"1 video(s) could not be paired: {shifted}: segment {shifted}[0] has sentiment" in out
    r = StoreReader(store)
    m, facet = r.manifest("mosi"), r.load_pooled("mosi", "csd-facet-4-2")
    for row, u in enumerate(m.utterances()):
        assert bool(facet.valid[row]) == (u.dialogue_id != shifted)
