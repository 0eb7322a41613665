"""Faults users hit while building manifests: stray cp1252 bytes in UTF-8 files, guessed label kinds.

Each test writes the faulty file the way the user had it and checks that (1) correct text is never
re-decoded, (2) every repair or guess is a note naming the file, the row and the fix, and (3) a
column whose kind cannot be told is an error naming rows of each kind and the sidecar to write.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_adapters_iemocap import make_iemocap
from test_adapters_meld import HEADER as MELD_HEADER
from test_adapters_meld import make_meld
from test_adapters_meld import write_csv as write_meld_csv

from merc.data_manifests import ManifestError
from merc.data_manifests.adapters._common import MAX_LINE_NOTES, read_csv, read_lines
from merc.data_manifests.adapters.generic import load_generic
from merc.data_manifests.adapters.iemocap import load_iemocap
from merc.data_manifests.adapters.meld import load_meld

HEADER = ["dialogue_id", "utterance_id", "speaker", "text", "split"]
GOOD = "That’s what she said — “quoted” café"
BAD_ROW = 30  # the data row that holds the raw 0x92 byte


def write_rows(path: Path, rows: list[list], header: list[str] = HEADER) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def put_raw_byte(path: Path, marker: str, raw: bytes) -> None:
    """Replace `marker` (ASCII, once) by `raw` bytes: how one cp1252 byte gets pasted into a UTF-8 file."""
    data = path.read_bytes()
    assert data.count(marker.encode()) == 1
    path.write_bytes(data.replace(marker.encode(), raw))


def encoding_notes(findings) -> list:
    return [f for f in findings if "not valid UTF-8" in f.problem]


def inference_notes(findings) -> list:
    return [f for f in findings if "inferred" in f.problem]


# --- 1. one stray cp1252 byte -------------------------------------------------------------------------
def stray_byte_csv(tmp_path: Path) -> Path:
    """52 rows of UTF-8 ’ — (row 2 spans two lines) and, at row BAD_ROW, one raw 0x92 byte."""
    rows = [[f"d{i // 4}", f"u{i}", "Ann", f"{GOOD} {i}", "train"] for i in range(1, 53)]
    rows[1][3] = f"{GOOD} 2\nsecond line"
    rows[BAD_ROW - 1][3] = "BAD-MARKER"
    path = write_rows(tmp_path / "corpus.csv", rows)
    put_raw_byte(path, "BAD-MARKER", b"That\x92s it")
    return path


def test_stray_cp1252_byte_repairs_only_its_row(tmp_path: Path) -> None:
    path = stray_byte_csv(tmp_path)
    m = load_generic(path)
    texts = {u.source_row: u.text for u in m.utterances()}
    assert texts[BAD_ROW] == "That’s it"
    assert texts[2] == f"{GOOD} 2\nsecond line"
    assert all(texts[r] == f"{GOOD} {r}" for r in texts if r not in (2, BAD_ROW)) and len(texts) == 52
    [note] = m.findings
    assert note.file == str(path) and note.row == BAD_ROW
    # line = row + 1 (header) + 1 (row 2 takes two lines)
    assert f"line {BAD_ROW + 2} is not valid UTF-8; decoded as cp1252 (byte 0x92 -> ’)" in note.problem
    assert "UTF-8" in note.fix and str(note).startswith(f"{path}, row {BAD_ROW}: line {BAD_ROW + 2}")
    assert m.policies["encodings"] == {str(path): "utf-8 with 1 line(s) decoded as cp1252"}


def test_stray_byte_next_to_valid_utf8_keeps_both(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "m.csv", [["d1", "u1", "Ann", "MARK", "train"]])
    put_raw_byte(path, "MARK", "It’s “fine”".encode() + b" \x93really\x94")
    m = load_generic(path)
    assert m.dialogue("d1").utterances[0].text == "It’s “fine” “really”"
    [note] = m.findings
    assert note.row == 1 and "line 2" in note.problem and "bytes 0x93 -> “, 0x94 -> ”" in note.problem


def test_stray_byte_in_meld_csv(tmp_path: Path) -> None:
    root = make_meld(tmp_path, clips=False)
    rows = [[i + 1, f"{GOOD} {i}", "Ross", "neutral", "neutral", i // 5, i % 5, 1, 1, "00:00:01,000",
             "00:00:02,500"] for i in range(52)]
    rows[BAD_ROW - 1][1] = "BAD-MARKER"
    path = write_meld_csv(root / "train" / "train_sent_emo.csv", rows)
    put_raw_byte(path, "BAD-MARKER", b"It\x92s the company\x92s fault")
    m = load_meld(root, modalities=("text",))
    train = [u for u in m.utterances() if u.split == "train"]
    assert len(train) == 52
    for u in train:
        expected = "It’s the company’s fault" if u.source_row == BAD_ROW else f"{GOOD} {u.source_row - 1}"
        assert u.text == expected
    [note] = m.findings
    assert note.file == str(path) and note.row == BAD_ROW and f"line {BAD_ROW + 1}" in note.problem
    assert "byte 0x92 -> ’" in note.problem
    assert m.policies["splits"]["encodings"] == {"train": "utf-8 with 1 line(s) decoded as cp1252",
                                                 "dev": "utf-8", "test": "utf-8"}
    assert m.policies["text_repair"]["repaired_rows"]["train"] == 0  # raw bytes are not the C1 mojibake


def test_meld_header_line_in_cp1252_is_named_as_the_header(tmp_path: Path) -> None:
    root = make_meld(tmp_path, clips=False)
    rows = [[1, "Fine.", "Joey", "sadness", "negative", 0, 0]]
    path = write_meld_csv(root / "test" / "test_sent_emo.csv", rows, header=MELD_HEADER[:7])
    put_raw_byte(path, "Sr No.", b"Sr No.\xa0")  # a cp1252 no-break space after the name
    m = load_meld(root, modalities=("text",))
    assert m.dialogue("test_dia0").utterances[0].source_row == 1
    [note] = m.findings
    assert note.file == str(path) and note.row is None
    assert "line 1 (the header) is not valid UTF-8; decoded as cp1252 (byte 0xA0 -> U+00A0 NO-BREAK SPACE)" \
        in note.problem


def test_wholly_cp1252_file_reads_as_before(tmp_path: Path) -> None:
    rows = [["d1", f"u{i}", "Zoë", f"{GOOD} {i}", "train"] for i in range(MAX_LINE_NOTES + 5)]
    path = tmp_path / "cp.csv"
    with open(path, "w", newline="", encoding="cp1252") as f:
        csv.writer(f).writerows([HEADER, *rows])
    m = load_generic(path)
    assert [u.text for u in m.utterances()] == [f"{GOOD} {i}" for i in range(len(rows))]
    assert {u.speaker for u in m.utterances()} == {"Zoë"}
    assert m.policies["encodings"][str(path)] == "cp1252"
    notes = encoding_notes(m.findings)
    assert [n.row for n in notes[:MAX_LINE_NOTES]] == list(range(1, MAX_LINE_NOTES + 1))
    assert "5 more line(s)" in notes[-1].problem and f"lines {MAX_LINE_NOTES + 2}-{MAX_LINE_NOTES + 6}" \
        in notes[-1].problem and len(notes) == MAX_LINE_NOTES + 1
    assert read_csv(path, required=HEADER, header_hint="").rows[0][1]["text"] == f"{GOOD} 0"


def test_utf8_bom_and_crlf_are_kept_apart_from_repairs(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "dialogue_id,utterance_id,speaker,text,split\r\n"
                     "d1,u1,A,caf\u00e9,train\r\n".encode() + b"d1,u2,A,caf\xe9,train\r\n")
    source = read_lines(path)
    assert source.lines[0].startswith("dialogue_id") and source.lines[1].endswith("\r\n")
    assert source.encoding == "utf-8 with 1 line(s) decoded as cp1252"
    m = load_generic(path)
    assert [u.text for u in m.utterances()] == ["café", "café"]
    assert [n.row for n in m.findings if "UTF-8" in n.problem] == [2]


def test_jsonl_and_sidecar_lines_are_named(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    recs = [{"dialogue_id": "d1", "utterance_id": f"u{i}", "speaker": "A", "split": "train", "emotion": "joy",
             "text": "MARK" if i == 2 else "It’s"} for i in range(4)]
    lines = [json.dumps(r, ensure_ascii=False) for r in recs]
    path.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n", encoding="utf-8")
    put_raw_byte(path, "MARK", b"It\x92s")
    sidecar = tmp_path / "m.jsonl.labels.json"
    sidecar.write_bytes(b'{"emotion": {"kind": "categorical",\n "classes": ["joy", "caf\xe9"]}}')
    m = load_generic(path)
    assert [u.text for u in m.utterances()] == ["It’s"] * 4
    assert m.label_spaces["emotion"].classes == ("joy", "café")
    data_note, sidecar_note = encoding_notes(m.findings)
    assert (data_note.file, data_note.row) == (str(path), 4) and "line 4" in data_note.problem
    assert (sidecar_note.file, sidecar_note.row) == (str(sidecar), 2) and "0xE9 -> é" in sidecar_note.problem
    assert m.policies["encodings"] == {str(path): "utf-8 with 1 line(s) decoded as cp1252",
                                       str(sidecar): "cp1252"}


def test_iemocap_transcript_and_evaluation_lines_are_named(tmp_path: Path) -> None:
    release = make_iemocap(tmp_path, wavs=False)
    dialog = release / "Session1" / "dialog"
    transcript = dialog / "transcriptions" / "Ses01F_impro01.txt"
    put_raw_byte(transcript, "words of Ses01F_impro01_F001", b"I don\x92t know")
    evaluation = dialog / "EmoEvaluation" / "Ses01F_impro01.txt"
    put_raw_byte(evaluation, "% [START_TIME", b"% \x93[START_TIME")
    m = load_iemocap(release, modalities=("text",))
    utt = next(u for u in m.utterances() if u.id == "Ses01F_impro01_F001")
    assert utt.text == "I don’t know"
    neighbour = next(u for u in m.utterances() if u.id == "Ses01F_impro01_F000")
    assert neighbour.text == "words of Ses01F_impro01_F000"
    notes = encoding_notes(m.findings)
    assert [(n.file, n.row) for n in notes] == [(str(evaluation), 1), (str(transcript), 5)]
    assert "line 5 is not valid UTF-8; decoded as cp1252 (byte 0x92 -> ’)" in notes[1].problem
    assert m.policies["encodings"]["other_files"] == {str(evaluation): "cp1252", str(transcript): "cp1252"}


# --- 2. guessed label kinds -----------------------------------------------------------------------------
def labelled(tmp_path: Path, column: str, values: list[str], name: str = "corpus.csv") -> Path:
    rows = [[f"d{i}", f"u{i}", "A", "hi", "train", v] for i, v in enumerate(values, start=1)]
    return write_rows(tmp_path / name, rows, [*HEADER, column])


def test_numbers_mixed_with_words_is_an_error(tmp_path: Path) -> None:
    path = labelled(tmp_path, "emotion", ["anger", "joy", "3", "joy", "fear", "", "7", "joy"])
    with pytest.raises(ManifestError) as err:
        load_generic(path)
    msg = str(err.value)
    assert "column 'emotion' mixes numbers (rows 3, 7) and words (rows 1, 2, 4, 5, 8)" in msg
    assert "row 3 holds '3'" in msg and "row 1 holds 'anger'" in msg
    assert f"{path}.labels.json" in msg
    assert '{"emotion": {"kind": "categorical", "classes": ["3", "7", "anger", "fear", "joy"]}}' in msg
    example = json.loads(re.search(r'e\.g\. (\{"emotion".*?\}\})', msg).group(1))
    Path(f"{path}.labels.json").write_text(json.dumps(example))
    m = load_generic(path)  # the suggested fix works as written
    assert m.label_spaces["emotion"].kind == "categorical" and inference_notes(m.findings) == []


def test_lists_mixed_with_scalars_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    recs = [{"dialogue_id": "d", "utterance_id": f"u{i}", "speaker": "A", "text": "t", "split": "train",
             "emotions": v} for i, v in enumerate([["joy"], "anger", ["joy", "fear"]])]
    path.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    pattern = r"column 'emotions' mixes words \(row 2\) and JSON lists \(rows 1, 3\).*m\.jsonl\.labels\.json"
    with pytest.raises(ManifestError, match=pattern + r'.*"kind": "multilabel"'):
        load_generic(path)


def test_all_integer_column_is_regression_with_a_note(tmp_path: Path) -> None:
    path = labelled(tmp_path, "label", ["0", "2", "1", "2", ""])
    m = load_generic(path)
    assert m.label_spaces["label"].kind == "regression"
    assert m.policies["label_inference"]["label"]["kind"] == "regression"
    [note] = inference_notes(m.findings)
    assert note.file == str(path) and note.row is None
    assert "column 'label' holds only integers: inferred regression; if these are class ids declare kind " \
           "categorical" in note.problem
    expected = '{"label": {"kind": "categorical", "classes": ["0", "1", "2"]}}'
    assert f"{path}.labels.json: {expected}" in note.fix
    Path(f"{path}.labels.json").write_text(expected)
    declared = load_generic(path)
    assert declared.label_spaces["label"].classes == ("0", "1", "2") and declared.findings == []
    assert [u.labels["label"] for u in declared.utterances()] == ["0", "2", "1", "2", None]


def test_float_column_note(tmp_path: Path) -> None:
    m = load_generic(labelled(tmp_path, "valence", ["0.5", "-1", "2.25"]))
    [note] = m.findings
    assert "column 'valence' holds numbers: inferred regression" in note.problem
    assert '{"valence": {"kind": "regression"}}' in note.fix and "class ids" not in note.problem


def test_string_column_note_and_none_with_a_sidecar(tmp_path: Path) -> None:
    path = labelled(tmp_path, "label:emotion", ["joy", "anger", "joy"])
    m = load_generic(path)
    [note] = m.findings
    assert "column 'label:emotion' holds words: inferred categorical with 2 class(es) sorted by name " \
           "(anger, joy)" in note.problem
    expected = '{"emotion": {"kind": "categorical", "classes": ["anger", "joy"]}}'
    assert f"{path}.labels.json: {expected}" in note.fix
    assert "declare your other label columns" in note.fix
    Path(f"{path}.labels.json").write_text(expected.replace('"anger", "joy"', '"joy", "anger"'))
    declared = load_generic(path)
    assert declared.findings == [] and declared.label_spaces["emotion"].classes == ("joy", "anger")
    assert declared.policies["label_inference"] == {}


# --- end to end through merc-extract ----------------------------------------------------------------------
def test_cli_prints_the_notes(tmp_path: Path) -> None:
    """Text only, so the run is quick: the notes must reach stdout before extraction."""
    rows = [[f"d{i // 2}", f"u{i}", "A", f"{GOOD} {i}", "train" if i < 4 else "test", str(i % 3)]
            for i in range(6)]
    rows[3][3] = "MARK"
    path = write_rows(tmp_path / "c.csv", rows, [*HEADER, "emotion"])
    put_raw_byte(path, "MARK", b"It\x92s")
    start = time.monotonic()
    command = [str(Path(sys.executable).parent / "merc-extract"), "--dataset", "manifest", "--root",
               str(path), "--encoder", "minilm", "--store", str(tmp_path / "x.zarr")]
    env = {**os.environ, "COLUMNS": "400"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    notes = [line for line in proc.stdout.splitlines() if line.startswith("note:")]
    assert any(f"{path}, row 4: line 5 is not valid UTF-8" in n for n in notes)
    integers = "integers: inferred regression; if these are class ids declare kind categorical"
    assert any(integers in n for n in notes)
    assert time.monotonic() - start < 60
