"""`merc-extract import` of the legacy ERC pickles (formats.md F): small files of every family written here with
the documented structure, imported through the CLI, checked against what was written, verified, and trained on.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from encoder_testing import extract_cli
from legacy_pickles import (
    IEMOCAP_CLASSES,
    MELD_EMOTIONS,
    MELD_OFFICIAL,
    MELD_SENTIMENTS,
    cogmen_dumps,
    cogmen_samples,
    iemocap,
    meld,
    py2_dumps,
)
from typer.testing import CliRunner

from merc.extract.importers import find_importer
from merc.extract.store import StoreReader


def heads_cli(*args) -> str:
    from merc.heads.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


def train(store: Path, dataset: str, features: str, out: Path, head: str = "mlp", task: str | None = None) -> dict:
    heads_cli("train", "--head", head, "--store", store, "--dataset", dataset, "--features", features, "--epochs", "1",
              "--out", out, "--name", "run", "--precision", "fp32", "--preset", "none",
              *(("--task", task) if task else ()))
    return json.loads((out / "run" / "metrics.json").read_text())


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def tree_digest(folder: Path) -> str:
    """Every file under `folder` with its content: equal digests = the store was not touched."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")) if folder.exists() else []:
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def check_against_written(reader: StoreReader, dataset: str, w, *, ids: dict, classes: tuple[str, ...],
                          speaker_of, utt_ids=None) -> None:
    """Labels, splits, speakers and utterance order of the stored manifest are those the file holds."""
    m = reader.manifest(dataset)
    by_id = {d.id: d for d in m.dialogues}
    for keys in w.keys.values():
        for key in keys:
            d = by_id[ids[key]]
            assert [classes[x] for x in w.labels[key]] == [u.labels["emotion"] for u in d.utterances]
            assert [speaker_of(key, d.id, i) for i in range(len(d))] == [u.speaker for u in d.utterances]
            if utt_ids is not None:
                assert [utt_ids(key, d.id, i) for i in range(len(d))] == [u.id for u in d.utterances]
    assert sum(len(v) for v in w.keys.values()) == len(m.dialogues)


def iemocap_speaker(w):
    return lambda key, dia, i: f"Ses{key[3:5]}{w.speakers[key][i]}"


# ---------------------------------------------------------------------------------------------------
# IEMOCAP: the two files named IEMOCAP_features.pkl
# ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def iemocap_store(tmp_path_factory):
    """The conv-emotion IEMOCAP_features.pkl, written as Python 2 did, imported by the CLI."""
    root = tmp_path_factory.mktemp("iemocap")
    obj, w = iemocap("erc-9")
    path = write(root / "IEMOCAP_features.pkl", py2_dumps(obj))
    store = root / "cache.zarr"
    out = extract_cli("import", path, "--dataset", "iemocap", "--store", store)
    return store, path, w, out


def test_conv_emotion_iemocap_imports_with_its_labels_splits_and_speakers(iemocap_store, tmp_path):
    store, path, w, out = iemocap_store
    assert "family conv-emotion (erc-9)" in out and "dev split: none" in out
    assert "feature set conv-emotion-audio: audio, dim 100" in out and "dim 512" in out
    assert "imported IEMOCAP_features.pkl (conv-emotion)" in out and "13 dialogues, 51 utterances" in out
    r = StoreReader(store)
    check_against_written(r, "iemocap", w, ids={k: k for v in w.keys.values() for k in v}, classes=IEMOCAP_CLASSES,
                          speaker_of=iemocap_speaker(w), utt_ids=lambda key, dia, i: w.utt_ids[key][i])
    m = r.manifest("iemocap")
    assert {d.id for d in m.split("test")} == set(w.keys["test"]) and not m.split("dev")
    assert m.dialogue("Ses01F_impro01").utterances[0].text.endswith("café")  # Python 2 UTF-8 bytes decoded
    feats = r.load_pooled("iemocap", "conv-emotion-visual")
    i = r.dialogue_ids("iemocap").index("Ses02F_impro02")
    rows, _ = feats.dialogue(i)
    np.testing.assert_allclose(rows.astype(np.float32), w.features["visual"]["Ses02F_impro02"], atol=2e-3)
    assert r.info("iemocap", "conv-emotion-text")["encoder"] == "import:conv-emotion"
    metrics = train(store, "iemocap", "t=conv-emotion-text,a=conv-emotion-audio,v=conv-emotion-visual", tmp_path)
    assert {"train", "test"} <= set(metrics["splits"])


def test_verify_passes_and_status_shows_the_provenance(iemocap_store):
    store, path, w, _ = iemocap_store
    assert "OK" in extract_cli("verify", "--store", store)
    status = extract_cli("status", "--store", store)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert "provenance:" in status and str(path) in status and sha[:12] in status
    assert "family conv-emotion" in status and "dev split: none" in status and "0=hap 1=sad 2=neu" in status


def test_the_mmgcn_file_of_the_same_name_is_told_apart_by_its_widths(tmp_path):
    obj, w = iemocap("erc-9", dims={"text": 100, "audio": 1582, "visual": 342})
    path = write(tmp_path / "IEMOCAP_features.pkl", pickle.dumps(obj, protocol=2))
    out = extract_cli("import", path, "--dataset", "iemocap", "--store", tmp_path / "s.zarr")
    assert "family mmgcn (erc-9)" in out and "openSMILE IS10" in out
    r = StoreReader(tmp_path / "s.zarr")
    assert r.feature_sets("iemocap") == ["mmgcn-audio", "mmgcn-text", "mmgcn-visual"]
    assert r.info("iemocap", "mmgcn-audio")["dim"] == 1582 and r.info("iemocap", "mmgcn-visual")["dim"] == 342


def test_a_killed_import_resumes_keeping_committed_dialogues(tmp_path, monkeypatch):
    from merc.extract.store import writer as store_writer

    obj, w = iemocap("erc-9", dims={"text": 8, "audio": 4, "visual": 4})
    path = write(tmp_path / "f.pkl", pickle.dumps(obj))
    store = tmp_path / "s.zarr"
    real, calls = store_writer.StoreWriter.write_dialogue, []

    def dies_after_five(self, *a, **k):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(store_writer.StoreWriter, "write_dialogue", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        from merc.extract.importers import read_import, write_import

        write_import(store, read_import(path, "iemocap")[1], "iemocap")
    monkeypatch.undo()
    out = extract_cli("verify", "--store", store, code=1)
    assert "8 dialogue(s) not extracted yet" in out and f"merc-extract import {path.resolve()} --dataset iemocap" in out
    out = extract_cli("import", path, "--dataset", "iemocap", "--store", store)
    assert "8 dialogue(s) written, 5 already committed" in out
    assert "OK" in extract_cli("verify", "--store", store)


def test_another_file_under_the_same_name_needs_overwrite(tmp_path):
    store = tmp_path / "s.zarr"
    dims = {"text": 8, "audio": 4, "visual": 4}
    first = write(tmp_path / "a.pkl", pickle.dumps(iemocap("erc-9", dims=dims, seed=0)[0]))
    second = write(tmp_path / "b.pkl", pickle.dumps(iemocap("erc-9", dims=dims, seed=5)[0]))
    extract_cli("import", first, "--dataset", "iemocap", "--store", store)
    before = tree_digest(store)
    out = extract_cli("import", second, "--dataset", "iemocap", "--store", store, code=2)
    assert "already exists from another source" in out and "--overwrite" in out
    assert tree_digest(store) == before
    out = extract_cli("import", second, "--dataset", "iemocap", "--store", store, "--overwrite")
    assert "13 dialogue(s) written" in out
    assert "OK" in extract_cli("verify", "--store", store)


# ---------------------------------------------------------------------------------------------------
# MELD: integer keys back to official ids
# ---------------------------------------------------------------------------------------------------

def meld_speaker(w):
    def speaker(key, dia, i):
        return f"{dia}:spk{int(np.argmax(w.speakers[key][i]))}"

    return speaker


def test_meld_raw1_keys_map_back_to_official_ids_and_the_dev_split(tmp_path):
    obj, w = meld("erc-10")
    path = write(tmp_path / "MELD_features_raw1.pkl", pickle.dumps(obj, protocol=4))
    store = tmp_path / "s.zarr"
    out = extract_cli("import", path, "--dataset", "meld", "--store", store)
    assert "family mmgcn (erc-10)" in out and "official MELD dev set, recovered from the dialogue keys" in out
    r = StoreReader(store)
    check_against_written(r, "meld", w, ids=MELD_OFFICIAL, classes=MELD_EMOTIONS, speaker_of=meld_speaker(w),
                          utt_ids=lambda key, dia, i: f"{dia}_utt{i}")
    m = r.manifest("meld")
    assert {d.id for d in m.split("dev")} == {"dev_dia3", "dev_dia0"}
    assert {d.id for d in m.split("test")} == {"test_dia5", "test_dia0"}
    assert m.dialogue("train_dia0").utterances[0].text == "you’re line 0"  # cp1252 \x92 repaired
    assert "OK" in extract_cli("verify", "--store", store)
    metrics = train(store, "meld", "t=mmgcn-text,a=mmgcn-audio,v=mmgcn-visual", tmp_path, head="dialogue-gru")
    assert set(metrics["splits"]) == {"train", "dev", "test"}


def test_meld_dialoguernn_file_has_sentiment_and_no_visual(tmp_path):
    obj, w = meld("meld-9", dims={"text": 600, "audio": 300})
    path = write(tmp_path / "MELD_features_raw.pkl", pickle.dumps(obj, protocol=2))
    out = extract_cli("import", path, "--dataset", "meld", "--store", tmp_path / "s.zarr", "--dev-split", "none")
    assert "family dialoguernn (meld-9)" in out and "dev split: none" in out
    r = StoreReader(tmp_path / "s.zarr")
    assert r.feature_sets("meld") == ["dialoguernn-audio", "dialoguernn-text"]
    m = r.manifest("meld")
    assert not m.split("dev") and m.dialogue("dev_dia3").split == "train"
    got = [u.labels["sentiment"] for u in m.dialogue("test_dia5").utterances]
    assert got == [MELD_SENTIMENTS[x] for x in w.sentiment[1158]]


# ---------------------------------------------------------------------------------------------------
# SDT, COSMIC, COGMEN, CORECT: detected by structure, dev split as the file defines it
# ---------------------------------------------------------------------------------------------------

R4 = {f"roberta{i}": 16 for i in range(1, 5)}


@pytest.mark.parametrize("case", [
    ("sdt", lambda: iemocap("sdt-12", dims={**R4, "audio": 1582, "visual": 342}), "iemocap", "family sdt (sdt-12)",
     "dev split: none", {"sdt-roberta1": 16, "sdt-audio": 1582, "sdt-visual": 342}),
    ("cosmic-iemocap", lambda: iemocap("cosmic-roberta-10", dims=R4), "iemocap",
     "family cosmic (cosmic-roberta-10)", "the file's own dev list (validIds, 2 dialogues)", {"cosmic-roberta4": 16}),
    ("cosmic-meld", lambda: meld("cosmic-roberta-11", dims=R4), "meld", "family cosmic (cosmic-roberta-11)",
     "the file's own dev list (validIds, 2 dialogues)", {"cosmic-roberta1": 16}),
    ("cogmen", lambda: cogmen_samples(records=True), "iemocap", "family cogmen (cogmen-samples)",
     "the file's own dev list (\"dev\" samples, 1 dialogues); COGMEN made it", {"cogmen-text": 768, "cogmen-audio": 100}),
    ("corect", lambda: cogmen_samples(records=False), "iemocap", "family corect (corect-samples)",
     "the file's own dev list", {"corect-visual": 512}),
], ids=lambda c: c[0] if isinstance(c, tuple) else None)
def test_every_family_is_detected_and_keeps_its_splits(tmp_path, case):
    name, build, dataset, family, dev, dims = case
    obj, w = build()
    data = cogmen_dumps(obj) if name == "cogmen" else pickle.dumps(obj, protocol=4)
    path = write(tmp_path / "features.pkl", data)
    store = tmp_path / "s.zarr"
    out = extract_cli("import", path, "--dataset", dataset, "--store", store)
    assert family in out and dev in out
    r = StoreReader(store)
    for fs, dim in dims.items():
        assert r.info(dataset, fs)["dim"] == dim
    m = r.manifest(dataset)
    ids = MELD_OFFICIAL if dataset == "meld" else {k: k for v in w.keys.values() for k in v}
    for split, keys in w.keys.items():
        assert {d.id for d in m.split("dev" if split == "valid" else split)} == {ids[k] for k in keys}
    classes = MELD_EMOTIONS if dataset == "meld" else IEMOCAP_CLASSES
    check_against_written(r, dataset, w, ids=ids, classes=classes,
                          speaker_of=meld_speaker(w) if dataset == "meld" else iemocap_speaker(w))
    assert "OK" in extract_cli("verify", "--store", store)


def test_first_ten_percent_dev_split_on_request(tmp_path):
    obj, w = iemocap("erc-9", dims={"text": 8, "audio": 4, "visual": 4})
    path = write(tmp_path / "f.pkl", pickle.dumps(obj))
    out = extract_cli("import", path, "--dataset", "iemocap", "--store", tmp_path / "s.zarr", "--dev-split", "first-10%")
    assert "first 10 % of trainVid in file order (1 dialogues" in out
    m = StoreReader(tmp_path / "s.zarr").manifest("iemocap")
    assert [d.id for d in m.split("dev")] == w.keys["train"][:1]


def test_a_four_class_file_gets_the_four_class_space(tmp_path):
    obj, w = iemocap("erc-9", dims={"text": 8, "audio": 4, "visual": 4}, n_classes=4)
    path = write(tmp_path / "IEMOCAP_features_4.pkl", pickle.dumps(obj))
    out = extract_cli("import", path, "--dataset", "iemocap", "--store", tmp_path / "s.zarr")
    assert "read as the 4-class set" in out
    assert StoreReader(tmp_path / "s.zarr").label_spaces("iemocap")["emotion"].classes == ("hap", "sad", "neu", "ang")


# ---------------------------------------------------------------------------------------------------
# COSMIC text-only pickles -> manifest -> --from-store --encoder minilm -> a head
# ---------------------------------------------------------------------------------------------------

def test_cosmic_text_pickle_becomes_a_manifest_that_a_text_encoder_encodes(tmp_path):
    obj, w = meld("cosmic-text-7")
    path = write(tmp_path / "meld.pkl", pickle.dumps(obj, protocol=2))
    store = tmp_path / "cache.zarr"
    out = extract_cli("import", path, "--dataset", "meld", "--store", store)
    assert "no features: the import is a manifest" in out and "manifest only; encode it with" in out
    r = StoreReader(store)
    assert r.feature_sets("meld") == []
    check_against_written(r, "meld", w, ids=MELD_OFFICIAL, classes=MELD_EMOTIONS, speaker_of=meld_speaker(w))
    m = r.manifest("meld")
    assert m.dialogue("test_dia5").utterances[0].text == "you’re line 0"
    assert m.policies["import"]["family"] == "cosmic-text"
    assert "family cosmic-text" in extract_cli("status", "--store", store)
    out = extract_cli("--dataset", "meld", "--from-store", "--encoder", "minilm", "--store", store)
    assert "11/11 dialogues complete, dim 384" in out
    assert "OK" in extract_cli("verify", "--store", store)
    metrics = train(store, "meld", "t=minilm", tmp_path, task="emotion,sentiment")
    assert set(metrics["splits"]) == {"train", "dev", "test"}


# ---------------------------------------------------------------------------------------------------
# wrong files: a clear error naming the file and the fix, and nothing written
# ---------------------------------------------------------------------------------------------------

def test_a_truncated_file_errors_and_writes_nothing(tmp_path):
    obj, _ = iemocap("erc-9", dims={"text": 8, "audio": 4, "visual": 4})
    path = write(tmp_path / "IEMOCAP_features.pkl", pickle.dumps(obj, protocol=4)[:-200])
    out = extract_cli("import", path, "--dataset", "iemocap", "--store", tmp_path / "s.zarr", code=2)
    assert "truncated" in out and str(path) in out and "download or copy the file again" in out
    assert not (tmp_path / "s.zarr").exists()


def test_a_file_of_another_corpus_errors_and_leaves_the_store_unchanged(iemocap_store, tmp_path):
    store = iemocap_store[0]
    before = tree_digest(store)
    path = write(tmp_path / "MELD_features_raw1.pkl", pickle.dumps(meld("erc-10")[0]))
    out = extract_cli("import", path, "--dataset", "iemocap", "--name", "other", "--store", store, code=2)
    assert "outside iemocap's 6 classes" in out and "this looks like meld" in out and "--dataset meld" in out
    iem = write(tmp_path / "iemocap.pkl", pickle.dumps(iemocap("cosmic-text-6")[0]))
    out = extract_cli("import", iem, "--dataset", "meld", "--name", "other", "--store", store, code=2)
    assert "MELD dialogue keys are integers" in out and "--dataset iemocap" in out
    assert tree_digest(store) == before


def test_a_missing_split_list_errors_and_writes_nothing(tmp_path):
    obj, _ = iemocap("erc-9", dims={"text": 8, "audio": 4, "visual": 4})
    path = write(tmp_path / "f.pkl", pickle.dumps(obj[:8] + ([],)))
    out = extract_cli("import", path, "--dataset", "iemocap", "--store", tmp_path / "s.zarr", code=2)
    assert "no test split list (testVid is empty)" in out and str(path) in out
    cut = write(tmp_path / "g.pkl", pickle.dumps(obj[:8]))  # the tuple lost its last element
    out = extract_cli("import", cut, "--dataset", "iemocap", "--store", tmp_path / "s.zarr", code=2)
    assert "goes on with testVid: the file looks truncated or trimmed" in out
    assert not (tmp_path / "s.zarr").exists()


def test_an_unknown_structure_is_described_with_the_known_families(tmp_path):
    path = write(tmp_path / "x.pkl", pickle.dumps(({"a": [1, 2]}, ["a"], 3)))
    out = extract_cli("import", path, "--dataset", "iemocap", "--store", tmp_path / "s.zarr", code=2)
    assert "no importer family recognises the file" in out and "tuple of 3" in out
    assert "erc:" in out and "cosmic-text:" in out
    with pytest.raises(Exception, match="tuple of 3"):
        find_importer(path, "iemocap")
