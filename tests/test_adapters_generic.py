"""The generic CSV/JSONL manifest adapter: label inference and declaration, order, media, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from merc.data_manifests import Manifest, ManifestError, load_manifest
from merc.data_manifests.adapters.generic import load_generic

HEADER = ["dialogue_id", "utterance_id", "speaker", "text", "split", "audio", "start", "end", "emotion", "valence"]
ROWS = [
    ["d1", "d1_u0", "A", "hello", "train", "clips/a.wav", "0", "1.5", "joy", "0.5"],
    ["d1", "d1_u1", "B", "hi", "train", "clips/a.wav", "1.5", "3", "neutral", "-1"],
    ["d2", "d2_u0", "A", "bye", "valid", "", "", "", "anger", ""],
    ["d3", "d3_u0", "7", "ok", "test", "/nowhere/b.wav", "", "", "", "2"],
]


def write_csv(path: Path, rows: list[list], header: list[str] = HEADER) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def make_csv(tmp_path: Path, rows: list[list] = ROWS, header: list[str] = HEADER) -> Path:
    (tmp_path / "clips").mkdir(exist_ok=True)
    sf.write(tmp_path / "clips" / "a.wav", np.zeros(160, dtype=np.float32), 16000)
    return write_csv(tmp_path / "corpus.csv", [list(r) for r in rows], header)


def message(exc: pytest.ExceptionInfo) -> str:
    return str(exc.value)


def test_csv_with_inferred_labels(tmp_path: Path) -> None:
    m = load_generic(make_csv(tmp_path))
    assert m.name == "corpus" and [d.id for d in m.dialogues] == ["d1", "d2", "d3"]
    assert [d.split for d in m.dialogues] == ["train", "dev", "test"]
    emo, val = m.label_spaces["emotion"], m.label_spaces["valence"]
    assert (emo.kind, emo.classes) == ("categorical", ("anger", "joy", "neutral"))
    assert val.kind == "regression"
    u = m.dialogue("d1").utterances[1]
    assert (u.speaker, u.start, u.end, u.labels) == ("B", 1.5, 3.0, {"emotion": "neutral", "valence": -1.0})
    assert u.media == str(tmp_path / "clips" / "a.wav") and u.source_row == 2
    assert m.dialogue("d2").utterances[0].labels == {"emotion": "anger", "valence": None}
    assert m.dialogue("d3").utterances[0].speaker == "7"
    assert m.policies["label_inference"]["emotion"]["kind"] == "categorical"
    assert m.policies["encodings"] == {str(tmp_path / "corpus.csv"): "utf-8"}
    emo_note, val_note, finding = m.findings  # what was inferred, then /nowhere/b.wav
    assert "'emotion' holds words: inferred categorical" in emo_note.problem and emo_note.row is None
    assert "'valence' holds numbers: inferred regression" in val_note.problem
    assert f"{tmp_path / 'corpus.csv'}.labels.json" in emo_note.fix
    assert finding.row == 4 and "features will be missing" in finding.problem
    assert load_manifest("manifest", tmp_path / "corpus.csv").digest() == m.digest()


def test_sidecar_declares_spaces_and_multilabel(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    lines = [{"dialogue_id": "v1", "utterance_id": "v1_b", "speaker": "s", "text": "b", "split": "dev",
              "position": 2, "label:emotions": "fear|happy", "sentiment": 1.5, "note": "x"},
             {"dialogue_id": "v1", "utterance_id": "v1_a", "speaker": "s", "text": "a", "split": "dev",
              "position": 1, "label:emotions": ["happy"], "sentiment": -3, "note": "y"},
             {"dialogue_id": "v2", "utterance_id": "v2_a", "speaker": 3, "text": "c", "split": "train",
              "position": 0, "label:emotions": [], "sentiment": 0}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    (tmp_path / "manifest.jsonl.labels.json").write_text(json.dumps({
        "emotions": {"kind": "multilabel", "classes": ["happy", "sad", "fear"]},
        "sentiment": {"kind": "regression", "value_range": [-3, 3]}}))
    m = load_manifest("manifest", tmp_path)
    assert m.label_spaces["emotions"].classes == ("happy", "sad", "fear")
    assert [u.id for u in m.dialogue("v1").utterances] == ["v1_a", "v1_b"]
    assert m.dialogue("v1").utterances[1].labels == {"emotions": ("fear", "happy"), "sentiment": 1.5}
    assert m.dialogue("v2").utterances[0].labels["emotions"] == ()
    assert m.policies["ignored_columns"] == ["note"] and m.policies["label_spec"].endswith("labels.json")
    assert Manifest.from_json(m.to_json()).digest() == m.digest()


def test_declared_classes_reject_unknown_values(tmp_path: Path) -> None:
    path = make_csv(tmp_path)
    labels = {"emotion": {"kind": "categorical", "classes": ["neutral", "joy"]}}
    with pytest.raises(ManifestError) as err:
        load_generic(path, labels=labels)
    msg = message(err)
    assert f"{path}, row 3" in msg and "'anger'" in msg and "Fix" in msg
    m = load_generic(path, labels={"emotion": {"kind": "categorical", "classes": ["neutral", "joy", "anger"]}})
    assert m.label_spaces["emotion"].classes == ("neutral", "joy", "anger") and "valence" not in m.label_spaces


def test_missing_required_column(tmp_path: Path) -> None:
    path = make_csv(tmp_path, [r[:2] + r[3:] for r in ROWS], HEADER[:2] + HEADER[3:])
    with pytest.raises(ManifestError) as err:
        load_generic(path)
    msg = message(err)
    assert str(path) in msg and "'speaker'" in msg and "columns found: dialogue_id, utterance_id, text" in msg
    assert "Fix" in msg and "dialogue_id,utterance_id,speaker,text,split" in msg


@pytest.mark.parametrize(("row", "col", "value", "expected"), [
    (1, 2, "", "empty required cell 'speaker'"),
    (2, 6, "4", "start 4.0 is not before end 3.0"),
    (3, 4, "holdout", "unknown split 'holdout'"),
    (4, 9, "high", "valence value 'high' is not a number"),
])
def test_bad_cells_name_file_and_row(tmp_path: Path, row: int, col: int, value: str, expected: str) -> None:
    rows = [list(r) for r in ROWS]
    rows[row - 1][col] = value
    path = make_csv(tmp_path, rows)
    labels = {"emotion": {"kind": "categorical"}, "valence": {"kind": "regression"}}
    with pytest.raises(ManifestError) as err:
        load_generic(path, labels=labels)
    msg = message(err)
    assert f"{path}, row {row}" in msg and expected in msg and "Fix" in msg


def test_duplicate_utterance_id_names_both_rows(tmp_path: Path) -> None:
    path = make_csv(tmp_path, [*ROWS, ["d3", "d1_u1", "C", "again", "test", "", "", "", "joy", ""]])
    with pytest.raises(ManifestError) as err:
        load_generic(path)
    msg = message(err)
    assert f"{path}, row 5" in msg and "rows 2 and 5" in msg and "Fix" in msg


def test_dialogue_spread_across_splits(tmp_path: Path) -> None:
    path = make_csv(tmp_path, [*ROWS, ["d2", "d2_u1", "C", "again", "test", "", "", "", "joy", ""]])
    with pytest.raises(ManifestError) as err:
        load_generic(path)
    msg = message(err)
    assert f"{path}, row 5" in msg and "'dev' at row 3" in msg and "Fix" in msg


def test_index_column_orders_and_ties_are_errors(tmp_path: Path) -> None:
    header = [*HEADER[:5], "index"]
    rows = [["d1", "u2", "A", "second", "train", "1"], ["d1", "u1", "B", "first", "train", "0"]]
    m = load_generic(write_csv(tmp_path / "m.csv", rows, header))
    assert [u.id for u in m.dialogue("d1").utterances] == ["u1", "u2"] and m.label_spaces == {}
    rows[1][5] = "1"
    with pytest.raises(ManifestError, match=r"m\.csv, row 2.*rows 1 and 2 share position 1.*Fix"):
        load_generic(write_csv(tmp_path / "m.csv", rows, header))


def test_missing_labels_file_names_a_real_option(tmp_path: Path) -> None:
    path = make_csv(tmp_path)
    with pytest.raises(ManifestError) as err:
        load_generic(path, labels=tmp_path / "nope.json")
    msg = message(err)
    assert "nope.json" in msg and "--adapter-option labels=<file>" in msg


def test_declared_kind_without_classes_notes_the_inferred_classes(tmp_path: Path) -> None:
    path = make_csv(tmp_path)
    (tmp_path / "corpus.csv.labels.json").write_text('{"emotion": {"kind": "categorical"}}')
    m = load_generic(path)
    assert m.label_spaces["emotion"].classes == ("anger", "joy", "neutral")
    note = next(f for f in m.findings if "declares no classes" in f.problem)
    assert note.file == str(tmp_path / "corpus.csv.labels.json")
    assert "took 3 class(es) from the values, sorted by name (anger, joy, neutral)" in note.problem
    assert '{"emotion": {"kind": "categorical", "classes": ["anger", "joy", "neutral"]}}' in note.fix
    assert not [f for f in m.findings if "inferred" in f.problem]
