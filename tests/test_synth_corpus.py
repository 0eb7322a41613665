"""The synthetic corpora must match the real MELD / IEMOCAP layouts and carry emotion in words,
prosody and context, because adapter, extraction and head tests are built on them."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from merc.tools.synth_corpus import (
    IEMOCAP_STYLES,
    MELD_CAST,
    MELD_COLUMNS,
    MELD_SENTIMENT,
    MELD_STYLES,
    main,
    make_iemocap,
    make_meld,
    plan_dialogue,
)

# formats.md B
EMO_LINE = re.compile(
    r"^\[(\d+\.\d{4}) - (\d+\.\d{4})\]\t(\S+)\t(\w+)\t\[(\d+\.\d{4}), (\d+\.\d{4}), (\d+\.\d{4})\]$"
)
EVALUATOR_LINE = re.compile(
    r"^(C-E\d:\t(\w[\w ]*; )*\w[\w ]*;\t\(.*\)|A-E\d:\tval \d; act \d; dom  \d;\t\(.*\))$"
)
TRANSCRIPT_LINE = re.compile(r"^(\S+) \[([\d.]+)-([\d.]+)\]:\s*(.*)$")
SRT_TIME = re.compile(r"^\d\d:\d\d:\d\d,\d{3}$")
NESTED = {
    "train": "train/train_splits",
    "dev": "dev/dev_splits_complete",
    "test": "test/output_repeated_splits_test",
}


@pytest.fixture(scope="module")
def meld(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_meld(tmp_path_factory.mktemp("meld"), dialogues=(4, 1, 1), utterances=(4, 6), seed=0)


@pytest.fixture(scope="module")
def iemocap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("iemocap")
    return make_iemocap(out, dialogues_per_session=1, utterances=(4, 6), other_fraction=0.2, seed=0)


def _rows(root: Path, split: str) -> list[dict[str, str]]:
    with (root / f"{split}_sent_emo.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _seconds(srt: str) -> float:
    h, m, s = srt.replace(",", ".").split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def _decode_audio(path: Path) -> tuple[np.ndarray, int, str]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        audio = np.concatenate([frame.to_ndarray() for frame in container.decode(stream)], axis=1)
        return audio, stream.rate, stream.layout.name


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _repeat_fraction(dialogues: list[list[tuple[str, str]]]) -> float:
    """Share of a speaker's consecutive turns (within a dialogue) that keep the same emotion."""
    same = pairs = 0
    for turns in dialogues:
        last: dict[str, str] = {}
        for speaker, emotion in turns:
            if speaker in last:
                pairs += 1
                same += last[speaker] == emotion
            last[speaker] = emotion
    return same / pairs


def test_meld_csvs_have_the_release_columns_and_crlf(meld: Path) -> None:
    for split in NESTED:
        raw = (meld / f"{split}_sent_emo.csv").read_bytes()
        assert raw.split(b"\r\n", 1)[0].decode() == ",".join(MELD_COLUMNS)
        assert raw.count(b"\n") == raw.count(b"\r\n") > 1
        assert b',"00:' in raw  # SRT times hold a comma, so they are quoted
        rows = _rows(meld, split)
        assert [int(r["Sr No."]) for r in rows] == list(range(1, len(rows) + 1))
        for row in rows:
            assert row["Emotion"] in MELD_STYLES and row["Sentiment"] == MELD_SENTIMENT[row["Emotion"]]
            assert row["Speaker"] in MELD_CAST
            assert SRT_TIME.match(row["StartTime"]) and SRT_TIME.match(row["EndTime"])
            assert _seconds(row["StartTime"]) < _seconds(row["EndTime"])
        by_dialogue: dict[str, list[int]] = {}
        for row in rows:
            by_dialogue.setdefault(row["Dialogue_ID"], []).append(int(row["Utterance_ID"]))
        assert all(ids == list(range(len(ids))) for ids in by_dialogue.values())


def test_meld_every_row_has_a_clip(meld: Path) -> None:
    for split, folder in NESTED.items():
        rows = _rows(meld, split)
        clips = {p.name for p in (meld / folder).glob("*.mp4")}
        assert clips == {f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}.mp4" for r in rows}


def test_meld_clip_is_51_aac_at_48k_with_speech_in_the_center(meld: Path) -> None:
    row = _rows(meld, "train")[0]
    path = meld / NESTED["train"] / "dia0_utt0.mp4"
    audio, rate, layout = _decode_audio(path)
    assert (audio.shape[0], rate, layout) == (6, 48_000, "5.1")
    levels = [_rms(channel) for channel in audio]
    assert levels[2] > 0.01 and levels[2] == max(levels)
    span = _seconds(row["EndTime"]) - _seconds(row["StartTime"])
    assert audio.shape[1] / rate == pytest.approx(span, abs=0.1)
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        assert (video.codec_context.name, video.width, video.height) == ("h264", 64, 64)


def test_meld_prosody_carries_emotion(meld: Path) -> None:
    """Louder and faster for anger/joy than for sadness, measured on the decoded center channel."""
    level: dict[str, list[float]] = {}
    pace: dict[str, list[float]] = {}  # seconds per character
    for split, folder in NESTED.items():
        for row in _rows(meld, split):
            audio, rate, _ = _decode_audio(
                meld / folder / f"dia{row['Dialogue_ID']}_utt{row['Utterance_ID']}.mp4"
            )
            level.setdefault(row["Emotion"], []).append(_rms(audio[2]))
            pace.setdefault(row["Emotion"], []).append(audio.shape[1] / rate / len(row["Utterance"]))
    assert {"anger", "joy", "sadness"} <= level.keys(), (
        "seed 0 no longer yields these emotions; pick sizes that do"
    )
    for loud in ("anger", "joy"):
        assert np.mean(level[loud]) > 1.5 * np.mean(level["sadness"])
        assert np.mean(pace[loud]) < 0.8 * np.mean(pace["sadness"])


def test_meld_speakers_keep_their_mood(meld: Path) -> None:
    dialogues = []
    for split in NESTED:
        by_dialogue: dict[str, list[tuple[str, str]]] = {}
        for row in _rows(meld, split):
            by_dialogue.setdefault(row["Dialogue_ID"], []).append((row["Speaker"], row["Emotion"]))
        dialogues += by_dialogue.values()
    assert _repeat_fraction(dialogues) > 0.6  # mood_persistence 0.8 on ~20 pairs


@pytest.mark.parametrize("persistence", [0.3, 0.8])
def test_planner_mood_persistence_rate(persistence: float) -> None:
    rng = np.random.default_rng(1)
    cast = {name: MELD_CAST[name] for name in ("Joey", "Rachel", "Ross")}
    dialogues = [
        [
            (t.speaker, t.emotion)
            for t in plan_dialogue(rng, cast, 40, MELD_STYLES, text_signal=0.5, mood_persistence=persistence)
        ]
        for _ in range(100)
    ]
    assert _repeat_fraction(dialogues) == pytest.approx(persistence, abs=0.04)


@pytest.mark.parametrize("text_signal", [0.0, 0.3, 1.0])
def test_planner_text_signal_is_the_share_of_emotional_sentences(text_signal: float) -> None:
    turns = plan_dialogue(
        np.random.default_rng(2), {"F": "en-us+f1", "M": "en-gb+m1"}, 3000, IEMOCAP_STYLES,
        text_signal=text_signal, mood_persistence=0.5,
    )  # fmt: skip
    all_words = {w for style in IEMOCAP_STYLES.values() for w in style.words}
    emotional = [set(re.findall(r"[a-z]+", t.text.lower())) & all_words for t in turns]
    assert all(
        not found or found <= set(IEMOCAP_STYLES[t.emotion].words)
        for t, found in zip(turns, emotional, strict=True)
    )
    assert np.mean([bool(found) for found in emotional]) == pytest.approx(text_signal, abs=0.03)


def test_meld_same_seed_same_bytes_any_layout_or_workers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = {"dialogues": (1, 1, 1), "utterances": (1, 2), "video": False}
    a = make_meld(tmp_path / "a", seed=0, **tiny)
    b = make_meld(tmp_path / "b", seed=0, layout="flat", workers=2, **tiny)
    main(
        [
            "meld",
            "--out",
            str(tmp_path / "c"),
            "--dialogues",
            "1,1,1",
            "--utterances",
            "1,2",
            "--no-video",
            "--seed",
            "1",
        ]
    )
    assert re.fullmatch(r"meld: \d+ utterances written to .* in [\d.]+ s\n", capsys.readouterr().out)
    for split, folder in NESTED.items():
        csv_name = f"{split}_sent_emo.csv"
        assert (a / csv_name).read_bytes() == (b / csv_name).read_bytes()
        clips = sorted((b / folder.split("/")[1]).glob("*.mp4"))
        assert len(clips) == len(_rows(b, split))
        with av.open(str(clips[0])) as container:
            assert not container.streams.video
    assert any(
        (a / f"{s}_sent_emo.csv").read_bytes() != (tmp_path / "c" / f"{s}_sent_emo.csv").read_bytes()
        for s in NESTED
    )


def test_iemocap_files_parse_with_the_release_formats(iemocap: Path) -> None:
    codes = []
    for emo_file in sorted(iemocap.glob("Session*/dialog/EmoEvaluation/*.txt")):
        dialog, session = emo_file.stem, emo_file.parts[-4]
        assert session == f"Session{int(dialog[3:5])}"
        lines = emo_file.read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("% [START_TIME - END_TIME]")
        turns = {}
        for line in lines[1:]:
            if line.startswith("["):
                start, end, utt, code, *vad = EMO_LINE.match(line).groups()
                turns[utt] = (start, end)
                codes.append(code)
                assert all(1.0 <= float(x) <= 5.0 for x in vad)
            else:
                assert line == "" or EVALUATOR_LINE.match(line), line
        transcript = (iemocap / session / "dialog" / "transcriptions" / f"{dialog}.txt").read_text(
            encoding="utf-8"
        )
        spans = {}
        for line in transcript.splitlines():
            utt, start, end, text = TRANSCRIPT_LINE.match(line).groups()
            assert text and re.fullmatch(r"\d{3}\.\d{4}", start)
            spans[utt] = (float(start), float(end))
        assert spans == {utt: (float(s), float(e)) for utt, (s, e) in turns.items()}
        for utt, (start, end) in spans.items():
            name, last = utt.rsplit("_", 1)
            assert name == dialog and re.fullmatch(r"[FM]\d{3}", last)
            info = sf.info(iemocap / session / "sentences" / "wav" / dialog / f"{utt}.wav")
            assert (info.samplerate, info.channels, info.subtype) == (16_000, 1, "PCM_16")
            assert info.duration == pytest.approx(end - start, abs=1e-3)
    assert set(codes) <= {*IEMOCAP_STYLES, "xxx", "oth"}
    assert {"xxx", "oth"} & set(codes), "other_fraction=0.2 should leave some unusable labels"
    assert list(iemocap.glob("Session*/dialog/EmoEvaluation/Categorical/*.txt")), (
        "decoy subfolder for readers"
    )


def test_iemocap_prosody_carries_emotion(iemocap: Path) -> None:
    level: dict[str, list[float]] = {}
    for emo_file in iemocap.glob("Session*/dialog/EmoEvaluation/*.txt"):
        for match in filter(None, map(EMO_LINE.match, emo_file.read_text(encoding="utf-8").splitlines())):
            utt, code = match.group(3), match.group(4)
            audio, _ = sf.read(emo_file.parents[2] / "sentences" / "wav" / emo_file.stem / f"{utt}.wav")
            level.setdefault(code, []).append(_rms(audio))
    aroused = [x for code in ("ang", "exc", "fru") for x in level.get(code, [])]
    assert aroused and "sad" in level, "seed 0 no longer yields these emotions; pick sizes that do"
    assert np.mean(aroused) > 1.5 * np.mean(level["sad"])


def test_iemocap_same_seed_same_bytes(tmp_path: Path) -> None:
    def texts(name: str, seed: int) -> bytes:
        out = make_iemocap(tmp_path / name, dialogues_per_session=1, utterances=(2, 2), seed=seed)
        files = sorted(out.glob("Session*/dialog/*/*.txt"))
        assert len(files) == 10
        return b"".join(f.relative_to(out).as_posix().encode() + f.read_bytes() for f in files)

    assert texts("a", 0) == texts("b", 0) != texts("c", 1)
