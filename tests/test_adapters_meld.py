"""MELD adapter on tiny corpora written here: layouts, text repair, gaps, clips and located errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from merc.data_manifests import ManifestError, load_manifest
from merc.data_manifests.adapters.meld import load_meld
from merc.data_manifests.text import repair_cp1252

HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID", "Season",
          "Episode", "StartTime", "EndTime"]

# (text, speaker, emotion, sentiment, dialogue, utterance); train dialogue 1 has a gap and is written unordered.
ROWS = {
    "train": [("Oh my God!", "Monica", "surprise", "positive", 0, 0),
              ("What?", "Ross", "neutral", "neutral", 0, 1),
              ("It's the company\x92s fault", "Chandler", "Anger", "Negative", 1, 8),
              ("Hi.", "Joey", "joy", "positive", 1, 0),
              ("Hey\xa0there.", "Rachel", "neutral", "neutral", 1, 1)],
    "dev": [("Okay.", "Phoebe", "neutral", "neutral", 0, 0),
            ("No way!", "Ross", "disgust", "negative", 0, 1),
            ("Sure.", "Monica", "fear", "negative", 110, 7)],
    "test": [("Fine.", "Joey", "sadness", "negative", 0, 0),
             ("Yes!", "Rachel", "joy", "positive", 0, 1)],
}
CLIP_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}


def write_csv(path: Path, rows: list[list], header: list[str] = HEADER, newline: str = "\r\n",
              bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        writer = csv.writer(f, lineterminator=newline)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def csv_rows(split: str) -> list[list]:
    return [[i + 1, text, spk, emo, sent, d, u, 1, 1, "00:00:01,000", "00:00:02,500"]
            for i, (text, spk, emo, sent, d, u) in enumerate(ROWS[split])]


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def make_meld(root: Path, layout: str = "nested", clips: bool = True, newline: str = "\r\n",
              bom: bool = False) -> Path:
    """Write the three CSVs and placeholder clips; the dev clip dia110_utt7 is missing, as in the release."""
    for split in ("train", "dev", "test"):
        base = root / split if layout == "nested" else root / "train" if split == "train" and layout == "emobox" \
            else root
        write_csv(base / f"{split}_sent_emo.csv", csv_rows(split), newline=newline, bom=bom)
        if not clips:
            continue
        folder = base / CLIP_FOLDERS[split]
        folder.mkdir(parents=True, exist_ok=True)
        for *_, d, u in ROWS[split]:
            if (split, d, u) == ("dev", 110, 7):
                continue
            name = f"dia{d}_utt{u}.mp4"
            touch(folder / (f"final_videos_test{name}" if (split, d, u) == ("test", 0, 1) else name))
        touch(folder / "dia99_utt0.mp4")  # an extra clip with no CSV row
        touch(folder / "._dia0_utt0.mp4")  # AppleDouble
    return root


@pytest.mark.parametrize("layout", ["nested", "emobox", "flat"])
def test_layouts_load_the_same_manifest(tmp_path: Path, layout: str) -> None:
    m = load_meld(make_meld(tmp_path / "MELD.Raw", layout))
    assert [d.id for d in m.dialogues] == ["train_dia0", "train_dia1", "dev_dia0", "dev_dia110", "test_dia0"]
    assert m.n_utterances == 10
    utt = m.dialogue("train_dia0").utterances[1]
    assert (utt.id, utt.speaker, utt.split, utt.labels) == (
        "train_dia0_utt1", "Ross", "train", {"emotion": "neutral", "sentiment": "neutral"})
    assert utt.media and Path(utt.media).name == "dia0_utt1.mp4"
    assert utt.source_file and utt.source_file.endswith("train_sent_emo.csv") and utt.source_row == 2
    assert set(m.label_spaces) == {"emotion", "sentiment"}
    assert m.policies["clips"]["extra_files_ignored"] == 3  # dia99_utt0 in each split
    assert m.policies["audio"]["channel_policy"] == "downmix"
    assert m.policies["max_duration"]["seconds"] == 30.0
    assert "test_dia38_utt4" in m.policies["max_duration"]["known_miscut_clips"]
    assert set(m.policies["known_bad_clips"]) == {"dev_dia110_utt7", "train_dia125_utt3"}


def test_registry_and_options(tmp_path: Path) -> None:
    root = make_meld(tmp_path)
    m = load_manifest("meld", root, protocol="sentiment", max_duration=12.0)
    assert m.policies["protocol"]["primary_label"] == "sentiment"
    assert m.policies["max_duration"]["seconds"] == 12.0
    with pytest.raises(ManifestError, match="iemocap, manifest, meld"):
        load_manifest("meld2", root)
    with pytest.raises(ManifestError, match="dev_seed"):
        load_manifest("meld", root, dev_seed=1)


def test_gaps_are_sorted_and_kept(tmp_path: Path) -> None:
    m = load_meld(make_meld(tmp_path))
    assert [u.id for u in m.dialogue("train_dia1").utterances] == [
        "train_dia1_utt0", "train_dia1_utt1", "train_dia1_utt8"]


def test_cp1252_mojibake_is_repaired(tmp_path: Path) -> None:
    m = load_meld(make_meld(tmp_path))
    assert m.dialogue("train_dia1").utterances[2].text == "It's the company’s fault"
    assert m.dialogue("train_dia1").utterances[1].text == "Hey there."
    assert m.policies["text_repair"]["repaired_rows"] == {"train": 2, "dev": 0, "test": 0}
    assert repair_cp1252("\x93Hi\x94 \x85") == "“Hi” …"


def test_raw_cp1252_bytes_are_read(tmp_path: Path) -> None:
    root = make_meld(tmp_path)
    path = root / "dev" / "dev_sent_emo.csv"
    path.write_bytes(path.read_text(encoding="utf-8").replace("Okay.", "Okay\u2019s").encode("cp1252"))
    m = load_meld(root)
    assert m.dialogue("dev_dia0").utterances[0].text == "Okay’s"
    assert m.policies["splits"]["encodings"] == {"train": "utf-8", "dev": "cp1252", "test": "utf-8"}
    note = next(f for f in m.findings if f.file == str(path))
    assert note.row == 1 and "line 2 is not valid UTF-8; decoded as cp1252 (byte 0x92 -> ’)" in note.problem
    assert "save the file as UTF-8" in note.fix


@pytest.mark.parametrize(("newline", "bom"), [("\n", False), ("\r\n", False), ("\r\n", True)])
def test_line_endings_and_bom(tmp_path: Path, newline: str, bom: bool) -> None:
    m = load_meld(make_meld(tmp_path, newline=newline, bom=bom))
    assert m.n_utterances == 10
    assert m.dialogue("test_dia0").utterances[1].text == "Yes!"


def test_text_only_needs_no_clips(tmp_path: Path) -> None:
    root = make_meld(tmp_path, clips=False)
    m = load_meld(root, modalities=("text",))
    assert all(u.media is None for u in m.utterances())
    assert m.findings == []
    with pytest.raises(ManifestError, match="--modalities text"):
        load_meld(root)


def test_missing_clip_is_a_finding(tmp_path: Path) -> None:
    m = load_meld(make_meld(tmp_path))
    utt = m.dialogue("dev_dia110").utterances[0]
    assert utt.media is None
    [finding] = m.findings
    assert finding.utterance_id == "dev_dia110_utt7"
    assert finding.file.endswith("dev_sent_emo.csv") and finding.row == 3
    assert "audio" in finding.problem and "known gap" in finding.problem
    assert m.policies["clips"]["missing"] == ["dev_dia110_utt7"]


def test_final_videos_test_prefix_is_accepted(tmp_path: Path) -> None:
    m = load_meld(make_meld(tmp_path))
    assert Path(m.dialogue("test_dia0").utterances[1].media).name == "final_videos_testdia0_utt1.mp4"


def test_dyadic_variant_without_sr_no(tmp_path: Path) -> None:
    root = make_meld(tmp_path)
    header = [h for h in HEADER if h != "Sr No."]
    header[6:6] = ["Old_Dialogue_ID", "Old_Utterance_ID"]
    for split in ("train", "dev", "test"):
        rows = [r[1:7] + [r[5], r[6]] + r[7:] for r in csv_rows(split)]
        write_csv(root / split / f"{split}_sent_emo_dya.csv", rows, header=header)
    m = load_meld(root, variant="dyadic")
    assert m.n_utterances == 10 and m.dialogue("train_dia1").utterances[2].text == "It's the company’s fault"


def test_csv_missing_a_column(tmp_path: Path) -> None:
    root = make_meld(tmp_path)
    rows = [r[:3] + r[4:] for r in csv_rows("dev")]
    path = write_csv(root / "dev" / "dev_sent_emo.csv", rows, header=HEADER[:3] + HEADER[4:])
    with pytest.raises(ManifestError) as err:
        load_meld(root)
    msg = str(err.value)
    assert str(path) in msg and "'Emotion'" in msg and "Fix" in msg and "Sr No.,Utterance" in msg


def test_unknown_emotion_names_file_and_row(tmp_path: Path) -> None:
    root = make_meld(tmp_path)
    rows = csv_rows("test")
    rows[1][3] = "happy"
    path = write_csv(root / "test" / "test_sent_emo.csv", rows)
    with pytest.raises(ManifestError) as err:
        load_meld(root)
    msg = str(err.value)
    assert f"{path}, row 2" in msg and "'happy'" in msg and "Fix" in msg


def test_duplicate_utterance_names_both_rows(tmp_path: Path) -> None:
    root = make_meld(tmp_path)
    rows = csv_rows("train")
    rows.append(rows[0][:])
    path = write_csv(root / "train" / "train_sent_emo.csv", rows)
    with pytest.raises(ManifestError) as err:
        load_meld(root)
    msg = str(err.value)
    assert f"{path}, row 6" in msg and "rows 1 and 6" in msg and "Fix" in msg


def test_all_problems_of_a_file_are_reported_together(tmp_path: Path) -> None:
    root = make_meld(tmp_path)
    rows = csv_rows("train")
    rows[0][5] = "x"
    rows[3][4] = "meh"
    write_csv(root / "train" / "train_sent_emo.csv", rows)
    with pytest.raises(ManifestError) as err:
        load_meld(root)
    assert "row 1" in str(err.value) and "row 4" in str(err.value) and "2 problem(s)" in str(err.value)
