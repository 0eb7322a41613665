"""MELD (Friends TV dialogues) -> Manifest, driven by the three official CSVs.

Why it is built this way (formats.md A):

* Everything comes from ``{train,dev,test}_sent_emo.csv``; the clip folders hold extra files with no
  CSV row and lack at least one clip, so they are never the source of truth.
* People unpack the archive in different nestings, so CSVs and the clip folders ``train_splits``,
  ``dev_splits_complete`` and ``output_repeated_splits_test`` are found by recursive search.
* Older CSV copies hold cp1252 characters decoded as Latin-1 (``company\\x92s``); text is repaired
  so every copy gives the same text, and the number of repaired rows is recorded. Raw cp1252 bytes
  (a whole file, or a stray byte in a UTF-8 file) are decoded per line and each such line is a note.
* Utterance_IDs have gaps (train dialogue 1 is [0..5, 8]), so utterances are sorted, never assumed
  to be ``range(n)``; ids keep the original numbers.
* Clip problems that only decoding can reveal (a corrupt clip, mis-cut 300 s clips, 5.1 audio) are
  handed to extraction as recorded policies instead of being guessed at here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import Finding, ManifestError
from ..labels import MELD_EMOTION, MELD_SENTIMENT
from ..manifest import Dialogue, Manifest, Utterance
from ..text import RULE as TEXT_REPAIR_RULE
from ..text import repair_cp1252
from . import ADAPTERS
from ._common import is_hidden, raise_problems, read_csv, require_root

SPLITS = ("train", "dev", "test")
CSV_NAMES = {
    "standard": {s: f"{s}_sent_emo.csv" for s in SPLITS},
    "dyadic": {s: f"{s}_sent_emo_dya.csv" for s in SPLITS},
}
CLIP_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
CLIP_RE = re.compile(r"^(?:final_videos_test)?dia(\d+)_utt(\d+)\.mp4$", re.IGNORECASE)
SRT_RE = re.compile(r"^\s*(\d+):(\d+):(\d+)[,.](\d+)\s*$")

REQUIRED = ("Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID")
OPTIONAL = ("Sr No.", "Season", "Episode", "StartTime", "EndTime", "Old_Dialogue_ID", "Old_Utterance_ID")
HEADER_HINT = "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,StartTime,EndTime"
MEDIA_MODALITIES = ("audio", "video")
PROTOCOLS = ("emotion", "sentiment")
CHANNEL_POLICIES = ("downmix", "center", "first")  # as extract.media.AudioPolicy

# Clips known to be unusable in the official release (formats.md A, MELD issues #22 #27 #39 #52).
KNOWN_BAD_CLIPS = {
    "dev_dia110_utt7": "missing from dev_splits_complete (Sr No. 1153; MELD#22, #27)",
    "train_dia125_utt3": "present but corrupt: fails to decode (MELD#39, #52); extraction reports it",
}
# Clips cut far longer than their utterance (EmoBox lengths, MELD#20), in seconds.
KNOWN_MISCUT_CLIPS = {"test_dia38_utt4": 305.0, "test_dia220_utt0": 235.0, "train_dia309_utt0": 41.0}
KNOWN_DESYNC_DIALOGUES = {"dialogue_ids": [241, 757, 485], "source": "MELD#9 (split not stated)"}


@dataclass
class _Row:
    row: int
    dia: int
    utt: int
    text: str
    speaker: str
    emotion: str
    sentiment: str
    clip_key: tuple[int, int]  # (dia, utt) of the clip file; the dyadic variant points at the old ids
    srt_seconds: float | None  # EndTime - StartTime from the CSV, when both parse


@dataclass
class _Scan:
    csvs: dict[str, list[Path]]  # file name -> every copy found
    clip_dirs: dict[str, list[Path]]  # folder name -> every folder of that name found


@ADAPTERS.register("meld", "MELD raw release, driven by the three official CSVs")
def load_meld(root: str | Path, *, modalities: Sequence[str] = ("text", "audio"), protocol: str = "emotion",
              splits: Sequence[str] = SPLITS, variant: str = "standard", max_duration: float | None = 30.0,
              channels: str = "downmix", repair_text: bool = True) -> Manifest:
    """Build a validated MELD manifest from the folder `root` (a MELD.Raw unpack, any nesting).

    modalities: what extraction will need; with ``("text",)`` the clip folders are optional.
    protocol: the primary target, "emotion" (7 classes) or "sentiment" (3); both label spaces are stored.
    variant: "standard" (``*_sent_emo.csv``) or "dyadic" (``*_sent_emo_dya.csv``, clips by old ids).
    max_duration: seconds of audio extraction should keep per clip (None = no cap); recorded, not applied.
    channels: how extraction should reduce 6-channel / stereo audio ("downmix" or "center"); recorded.
    """
    root = require_root(root, "MELD", fix="pass the folder that holds train_sent_emo.csv and the clip folders")
    _check_options(modalities, protocol, splits, variant, max_duration, channels)
    scan = _scan(root)
    needs_media = any(m in MEDIA_MODALITIES for m in modalities)
    if needs_media and not any(scan.clip_dirs.get(CLIP_FOLDERS[s]) for s in splits):
        raise ManifestError(
            f"no MELD clip folder ({', '.join(CLIP_FOLDERS[s] for s in splits)}) found anywhere under the root",
            file=str(root),
            fix="unpack the MELD clip archives (train.tar.gz, dev.tar.gz, test.tar.gz) under this folder, or "
                "build a text-only manifest with modalities=('text',) (CLI: --modalities text)")
    problems: list[Finding] = []
    findings: list[Finding] = []
    policies = _base_policies(protocol, variant, modalities, max_duration, channels, repair_text)
    dialogues: list[Dialogue] = []
    for split in splits:
        csv_path = _pick_csv(scan, split, variant, root)
        read = _read_split(csv_path, repair_text)
        problems.extend(read.problems)
        findings.extend(read.notes)
        policies["splits"]["csv_files"][split] = str(csv_path)
        policies["splits"]["encodings"][split] = read.encoding
        policies["text_repair"]["repaired_rows"][split] = read.repaired
        clip_dirs = scan.clip_dirs.get(CLIP_FOLDERS[split], [])
        if needs_media and not clip_dirs:
            problems.append(Finding(
                file=str(root), problem=f"clip folder {CLIP_FOLDERS[split]!r} for the {split} split not found",
                fix=f"unpack {split}.tar.gz under the root, or use modalities=('text',) (CLI: --modalities text)"))
        if read.problems:
            continue
        dialogues.extend(_build_split(split, csv_path, read.rows, clip_dirs, policies, findings))
    raise_problems(problems)
    manifest = Manifest(name="meld", root=str(root), dialogues=dialogues, policies=policies, findings=findings,
                        label_spaces={"emotion": MELD_EMOTION, "sentiment": MELD_SENTIMENT})
    manifest.validate()
    return manifest


# --- options and policies -----------------------------------------------------------------------------
def _check_options(modalities: Sequence[str], protocol: str, splits: Sequence[str], variant: str,
                   max_duration: float | None, channels: str) -> None:
    def bad(what: str, value: object, allowed: Sequence[str]) -> ManifestError:
        return ManifestError(f"unknown {what} {value!r}", file="load_meld options",
                             fix=f"use one of {', '.join(allowed)}")

    if isinstance(modalities, str):
        raise ManifestError(f"modalities must be a list, got the string {modalities!r}", file="load_meld options",
                            fix=f"pass modalities=({modalities!r},)")
    for m in modalities:
        if m not in ("text", *MEDIA_MODALITIES):
            raise bad("modality", m, ("text", *MEDIA_MODALITIES))
    if protocol not in PROTOCOLS:
        raise bad("protocol", protocol, PROTOCOLS)
    for s in splits:
        if s not in SPLITS:
            raise bad("split", s, SPLITS)
    if variant not in CSV_NAMES:
        raise bad("variant", variant, tuple(CSV_NAMES))
    if channels not in CHANNEL_POLICIES:
        raise bad("channel policy", channels, CHANNEL_POLICIES)
    if max_duration is not None and max_duration <= 0:
        raise ManifestError(f"max_duration must be positive, got {max_duration}", file="load_meld options",
                            fix="pass a number of seconds such as 30, or None for no cap")


def _base_policies(protocol: str, variant: str, modalities: Sequence[str], max_duration: float | None,
                   channels: str, repair_text: bool) -> dict:
    return {
        "corpus": "MELD",
        "variant": variant,
        "protocol": {"name": protocol, "primary_label": protocol, "label_spaces": ["emotion", "sentiment"]},
        "modalities": list(modalities),
        "splits": {"rule": "official MELD train/dev/test CSVs", "csv_files": {}, "encodings": {}},
        "ordering": "dialogues by Dialogue_ID, utterances by Utterance_ID (gaps kept)",
        "text_repair": {"enabled": repair_text, "rule": TEXT_REPAIR_RULE if repair_text else None,
                        "repaired_rows": {}},
        "clips": {"folders": {}, "missing": [], "extra_files_ignored": 0, "accepted_prefixes": ["final_videos_test"]},
        "known_bad_clips": dict(KNOWN_BAD_CLIPS),
        "audio": {"source_sample_rate": 48000, "channel_policy": channels,
                  "note": "12109 clips are 6-channel (5.1) and 1597 stereo; 'downmix' averages all channels, "
                          "'center' takes channel 3 (1-based) when there are more than 2, 'first' channel 1"},
        "max_duration": {"seconds": max_duration, "action": "keep the first `seconds` of audio" if max_duration
                         else "no cap", "known_miscut_clips": dict(KNOWN_MISCUT_CLIPS), "srt_seconds": {},
                         "known_desync_dialogues": dict(KNOWN_DESYNC_DIALOGUES)},
    }


# --- finding files ------------------------------------------------------------------------------------
def _scan(root: Path) -> _Scan:
    """One walk of `root`: every copy of the split CSVs, every clip folder (not descended into)."""
    wanted_csv = {n for names in CSV_NAMES.values() for n in names.values()}  # both variants, for hints
    wanted_dirs = set(CLIP_FOLDERS.values())
    scan = _Scan(csvs={}, clip_dirs={})
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
        for d in list(dirnames):
            if d in wanted_dirs:
                scan.clip_dirs.setdefault(d, []).append(Path(folder) / d)
                dirnames.remove(d)  # thousands of clips: indexed separately, only when needed
        for f in filenames:
            if f in wanted_csv:
                scan.csvs.setdefault(f, []).append(Path(folder) / f)
    return scan


def _pick_csv(scan: _Scan, split: str, variant: str, root: Path) -> Path:
    name = CSV_NAMES[variant][split]
    found = scan.csvs.get(name, [])
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise ManifestError(f"{len(found)} copies of {name} under the root: {', '.join(map(str, found))}",
                            file=str(root), fix="pass the folder of the copy you mean as root, or remove the others")
    other = next(v for v in CSV_NAMES if v != variant)
    hint = (f"; {CSV_NAMES[other][split]} exists: pass --adapter-option variant={other}"
            if scan.csvs.get(CSV_NAMES[other][split]) else "")
    raise ManifestError(f"{name} not found anywhere under the root{hint}", file=str(root),
                        fix="pass the MELD folder that holds the train/dev/test CSVs (download MELD.Raw.tar.gz "
                            "and unpack it), or extract only the splits you have: --adapter-option splits=train,test")


def _index_clips(folders: list[Path]) -> tuple[dict[tuple[int, int], Path], int]:
    """Map (dia, utt) -> clip path over all folders; plain names win over ``final_videos_test`` ones."""
    clips: dict[tuple[int, int], Path] = {}
    prefixed: dict[tuple[int, int], Path] = {}
    n_files = 0
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not is_hidden(d))
            for f in sorted(filenames):
                m = None if is_hidden(f) else CLIP_RE.match(f)
                if not m:
                    continue
                n_files += 1
                key = (int(m.group(1)), int(m.group(2)))
                target = prefixed if f.lower().startswith("final_videos_test") else clips
                target.setdefault(key, Path(dirpath) / f)
    for key, path in prefixed.items():
        clips.setdefault(key, path)
    return clips, n_files


# --- reading the CSV ----------------------------------------------------------------------------------
@dataclass
class _SplitCsv:
    """One parsed split CSV: rows, every fatal problem, notes (lines decoded as cp1252), repair counts."""

    rows: list[_Row]
    problems: list[Finding]
    notes: list[Finding]
    repaired: int  # rows whose text held cp1252-as-Latin-1 characters
    encoding: str  # utf-8, cp1252 or "utf-8 with N line(s) decoded as cp1252"


def _read_split(path: Path, repair_text: bool) -> _SplitCsv:
    """Parse one split CSV, collecting every problem of the file so they are reported together."""
    table = read_csv(path, required=REQUIRED, optional=OPTIONAL, header_hint=HEADER_HINT)
    problems = list(table.problems)
    rows: list[_Row] = []
    first_row: dict[tuple[int, int], int] = {}
    repaired = 0
    for row_no, rec in table.rows:
        parsed, row_problems = _parse_row(path, row_no, rec)
        problems.extend(row_problems)
        if parsed is None:
            continue
        key = (parsed.dia, parsed.utt)
        if key in first_row:
            problems.append(Finding(
                file=str(path), row=row_no,
                problem=f"duplicate utterance Dialogue_ID {parsed.dia}, Utterance_ID {parsed.utt} "
                        f"(rows {first_row[key]} and {row_no})",
                fix="remove the repeated row or correct its Utterance_ID"))
            continue
        first_row[key] = row_no
        if repair_text:
            fixed = repair_cp1252(parsed.text)
            if fixed != parsed.text:
                repaired += 1
                parsed.text = fixed
            parsed.speaker = repair_cp1252(parsed.speaker)
        rows.append(parsed)
    return _SplitCsv(rows=rows, problems=problems, notes=table.notes, repaired=repaired,
                     encoding=table.encoding)


def _parse_row(path: Path, row_no: int, rec: dict[str, str]) -> tuple[_Row | None, list[Finding]]:
    problems: list[Finding] = []
    sr = rec.get("Sr No.", "").strip()
    where = f" (Sr No. {sr})" if sr else ""

    def problem(text: str, fix: str) -> None:
        problems.append(Finding(file=str(path), row=row_no, problem=text + where, fix=fix))

    ids = {}
    for col in ("Dialogue_ID", "Utterance_ID"):
        value = rec[col].strip()
        if not value.isdigit():
            problem(f"{col} {value!r} is not a non-negative integer", f"write a whole number in {col}")
        else:
            ids[col] = int(value)
    speaker = rec["Speaker"].strip()
    if not speaker:
        problem("empty Speaker", "write the speaker's name")
    emotion, sentiment = rec["Emotion"].strip().lower(), rec["Sentiment"].strip().lower()
    if emotion not in MELD_EMOTION.classes:
        problem(f"unknown emotion label {rec['Emotion']!r} (expected one of {', '.join(MELD_EMOTION.classes)})",
                "correct the Emotion cell to one of the 7 MELD emotions")
    if sentiment not in MELD_SENTIMENT.classes:
        problem(f"unknown sentiment label {rec['Sentiment']!r} (expected one of "
                f"{', '.join(MELD_SENTIMENT.classes)})", "correct the Sentiment cell")
    if problems:
        return None, problems
    dia, utt = ids["Dialogue_ID"], ids["Utterance_ID"]
    old = (rec.get("Old_Dialogue_ID", "").strip(), rec.get("Old_Utterance_ID", "").strip())
    clip_key = (int(old[0]), int(old[1])) if old[0].isdigit() and old[1].isdigit() else (dia, utt)
    return _Row(row=row_no, dia=dia, utt=utt, text=rec["Utterance"].strip(), speaker=speaker, emotion=emotion,
                sentiment=sentiment, clip_key=clip_key,
                srt_seconds=_srt_span(rec.get("StartTime", ""), rec.get("EndTime", ""))), []


def _srt_seconds(value: str) -> float | None:
    m = SRT_RE.match(value or "")
    if not m:
        return None
    h, mi, s, ms = m.groups()
    return int(h) * 3600 + int(mi) * 60 + int(s) + int(ms) / 10 ** len(ms)


def _srt_span(start: str, end: str) -> float | None:
    a, b = _srt_seconds(start), _srt_seconds(end)
    return round(b - a, 3) if a is not None and b is not None else None


# --- building dialogues -------------------------------------------------------------------------------
def _build_split(split: str, csv_path: Path, rows: list[_Row], clip_dirs: list[Path], policies: dict,
                 findings: list[Finding]) -> list[Dialogue]:
    clips, n_files = _index_clips(clip_dirs) if clip_dirs else ({}, 0)
    policies["clips"]["folders"][split] = [str(p) for p in clip_dirs]
    by_dia: dict[int, list[_Row]] = {}
    for r in rows:
        by_dia.setdefault(r.dia, []).append(r)
    dialogues = []
    used = set()
    for dia in sorted(by_dia):
        utterances = []
        for r in sorted(by_dia[dia], key=lambda r: r.utt):
            uid = f"{split}_dia{r.dia}_utt{r.utt}"
            clip = clips.get(r.clip_key)
            if clip is not None:
                used.add(r.clip_key)
            elif clip_dirs:
                _missing_clip(split, csv_path, r, uid, clip_dirs, policies, findings)
            if uid in KNOWN_MISCUT_CLIPS and r.srt_seconds is not None:
                policies["max_duration"]["srt_seconds"][uid] = r.srt_seconds
            utterances.append(Utterance(
                id=uid, dialogue_id=f"{split}_dia{dia}", speaker=r.speaker, text=r.text, split=split,
                labels={"emotion": r.emotion, "sentiment": r.sentiment},
                media=str(clip) if clip else None, source_file=str(csv_path), source_row=r.row))
        dialogues.append(Dialogue(id=f"{split}_dia{dia}", split=split, utterances=utterances))
    policies["clips"]["extra_files_ignored"] += n_files - len(used)
    return dialogues


def _missing_clip(split: str, csv_path: Path, r: _Row, uid: str, clip_dirs: list[Path], policies: dict,
                  findings: list[Finding]) -> None:
    name = f"dia{r.clip_key[0]}_utt{r.clip_key[1]}.mp4"
    known = " (a known gap in the MELD release)" if uid in KNOWN_BAD_CLIPS else ""
    policies["clips"]["missing"].append(uid)
    findings.append(Finding(
        file=str(csv_path), row=r.row, utterance_id=uid,
        problem=f"clip {name} not found in {CLIP_FOLDERS[split]}{known}; the audio/video features will be "
                f"missing for this utterance (its text is kept)",
        fix=f"restore {name} into {clip_dirs[0]} if you need its audio, or leave it: extraction skips it"))
