"""`--labels-from`: the raw IEMOCAP release aligned with a community pickle's set, labels and dev split.

The pickles written here differ from EmoEvaluation consensus the way the real ones do: a turn without
consensus (xxx) is labelled hap, a turn of another class (sur) is absent, and one line of the pickle has
no turn in the release (it must be reported, not guessed).
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from encoder_testing import extract_cli
from test_adapters_iemocap import TURNS, dialogs, make_iemocap

from merc.data_manifests import load_manifest
from merc.extract.importers import read_import
from merc.extract.store import StoreReader

CLASSES = ("hap", "sad", "neu", "ang", "exc", "fru")
DEV = ["Ses01M_script01_1"]
EXTRA = "Ses02F_impro01"  # the dialog whose pickle holds one line the release does not have


def reference(with_ids: bool):
    """A COSMIC text pickle (no utterance ids: aligned by text) or a conv-emotion 9-tuple (aligned by id)."""
    speakers, labels, sentences, ids = {}, {}, {}, {}
    for n in range(1, 6):
        for dialog in dialogs(n):
            turns = sorted((t for t in TURNS if t[2] != "sur"), key=lambda t: t[1])
            utts = [f"{dialog}_{last}" for last, _, _ in turns]
            codes = ["hap" if code == "xxx" else code for _, _, code in turns]
            texts = [f"Words of {u}!" for u in utts]  # case and punctuation differ from the transcript
            if dialog == EXTRA:
                utts.insert(2, f"{dialog}_F099")
                codes.insert(2, "neu")
                texts.insert(2, "a line the release does not have")
            speakers[dialog] = [u.rsplit("_", 1)[1][0] for u in utts]
            labels[dialog] = [CLASSES.index(c) for c in codes]
            sentences[dialog] = texts
            ids[dialog] = utts
    test = [d for d in speakers if d.startswith("Ses05")]
    train = [d for d in speakers if d not in test and d not in DEV]
    if with_ids:
        feats = {d: np.zeros((len(v), 4), np.float32) for d, v in labels.items()}
        return (ids, speakers, labels, feats, feats, feats, sentences, train + DEV, test)
    return [speakers, labels, sentences, train, test, DEV]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return make_iemocap(tmp_path_factory.mktemp("iemocap"), wavs=False)


@pytest.mark.parametrize("with_ids", [False, True], ids=["by-text", "by-id"])
def test_the_release_takes_the_files_set_labels_and_dev_split(release, tmp_path, with_ids):
    path = tmp_path / "iemocap.pkl"
    path.write_bytes(pickle.dumps(reference(with_ids), protocol=2))
    ref = read_import(path, "iemocap")[1].manifest
    ref.root = str(path)
    m = load_manifest("iemocap", release, modalities=("text",), labels_from=ref)
    assert m.n_utterances == 11 * 7  # 8 turns per dialog, sur left out
    u = m.dialogue("Ses01F_impro01").utterances
    assert [x.id.rsplit("_", 1)[1] for x in u] == ["M000", "F000", "F001", "M001", "F002", "M002", "F003"]
    assert [x.labels["emotion"] for x in u] == ["hap", "neu", "exc", "sad", "ang", "fru", "hap"]  # xxx -> hap
    assert u[0].text == "words of Ses01F_impro01_M000" and u[0].speaker == "Ses01M"  # the release's text
    assert {d.id for d in m.split("test")} == set(dialogs(5))
    if with_ids:  # the 9-tuple has no dev list: the adapter's seeded rule, said so
        assert "no dev split" in m.policies["splits"]["dev"]["note"]
        assert [d.id for d in m.split("dev")] == m.policies["splits"]["dev"]["dialogues"]
    else:
        assert [d.id for d in m.split("dev")] == DEV
        assert m.policies["splits"]["dev"] == {"rule": "the labels file's dev split", "dialogues": DEV}
    report = m.policies["labels_from"]
    assert report["file"] == str(path) and report["relabelled"] == {"xxx->hap": 11}
    assert report["release_turns_left_out"] == 11  # the sur turns
    if with_ids:
        assert report["aligned_by_id"] == 77 and report["unaligned"] == [f"{EXTRA}_F099"]
    else:
        assert report["aligned_by_text"] == 77 and report["unaligned_total"] == 1
    assert any(f.utterance_id == report["unaligned"][0] and "not aligned" in f.problem for f in m.findings)
    assert m.policies["protocol"]["name"] == "6-erc:labels-from"
    assert str(path) in m.policies["protocol"]["label_source"]


def test_labels_from_on_the_command_line_is_recorded_in_the_store(release, tmp_path):
    path = tmp_path / "iemocap.pkl"
    path.write_bytes(pickle.dumps(reference(False), protocol=2))
    store = tmp_path / "s.zarr"
    out = extract_cli("--dataset", "iemocap", "--root", release, "--protocol", "6-erc", "--labels-from", path,
                      "--modalities", "text", "--encoder", "minilm", "--store", store)
    assert "labels from" in out and "not aligned with the release" in out and "11/11 dialogues complete" in out
    r = StoreReader(store)
    meta = r.dataset_attrs("iemocap")
    assert meta["source"]["options"]["labels_from"] == str(path)
    assert meta["manifest"]["policies"]["labels_from"]["relabelled"] == {"xxx->hap": 11}
    assert r.manifest("iemocap").n_utterances == 77
    assert "OK" in extract_cli("verify", "--store", store)


def test_a_labels_file_of_another_corpus_is_refused(release, tmp_path):
    from legacy_pickles import meld

    path = tmp_path / "meld.pkl"
    path.write_bytes(pickle.dumps(meld("cosmic-text-7")[0]))
    out = extract_cli("--dataset", "iemocap", "--root", release, "--labels-from", path, "--modalities", "text",
                      "--encoder", "minilm", "--store", tmp_path / "s.zarr", code=2)
    assert "this looks like meld" in out and not (tmp_path / "s.zarr").exists()
