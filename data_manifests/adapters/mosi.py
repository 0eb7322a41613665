"""CMU-MOSI / CMU-MOSEI raw videos in the MMSA-FET layout -> Manifest (registered as "mosi" and "mosei").

Why it is built this way (formats.md C, D):

* The layout is MMSA-FET's: ``<root>/label.csv`` with columns ``video_id, clip_id, text, label, label_T,
  label_A, label_V, annotation, mode`` and one clip per segment at ``<root>/Raw/<video_id>/<clip_id>.mp4``.
  label.csv is the source of truth; a clip it names that is missing is a finding (its text and labels are
  kept), never a crash.
* A video is a dialogue and its opinion segments are the utterances, ordered by clip index as a number
  (``2`` before ``10``), so context heads see the segments in spoken order. One person speaks per video,
  so the speaker is the video id.
* Ids stay strings exactly as written: MOSEI has purely numeric video ids (``81406``) that a float parser
  would mangle. An utterance id is ``<video_id>_<clip_id>`` (MERBench's form; MMSA writes
  ``<video_id>$_$<clip_id>``, the SDK ``<video_id>[<i>]``).
* Splits come from the ``mode`` column (train/valid/test, valid -> dev) or from the standard folds shipped
  in ``data_manifests/splits/`` (the CMU-MultimodalSDK lists); when both exist they are compared and every
  disagreement is reported.
* The sentiment is a regression space ``sentiment`` in [-3, 3], so the derived tasks ``sentiment_has0``,
  ``sentiment_non0`` and ``sentiment7`` (heads/data.py) work at once. MOSEI label files that carry the six
  emotion intensities (columns happy, sad, anger, surprise, disgust, fear, in [0, 3]) add a multi-label
  space ``emotions``: an emotion is present if its intensity is > 0 (CMU_MOSEI README).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import Finding, ManifestError
from ..fold_lists import FoldLists, load_folds
from ..labels import MOS_SENTIMENT, MOSEI_EMOTIONS
from ..manifest import Dialogue, LabelSpace, Manifest, Utterance
from . import ADAPTERS
from ._common import is_hidden, raise_problems, read_csv, require_root

CORPORA = {"mosi": "CMU-MOSI", "mosei": "CMU-MOSEI"}
REQUIRED = ("video_id", "clip_id", "text", "label")
EMOTION_COLUMNS = MOSEI_EMOTIONS.classes  # happy sad anger surprise disgust fear, the MOSEI label order
OPTIONAL = ("label_T", "label_A", "label_V", "annotation", "mode", *EMOTION_COLUMNS)
HEADER_HINT = "video_id,clip_id,text,label,label_T,label_A,label_V,annotation,mode"
MODE_ALIASES = {"train": "train", "valid": "dev", "val": "dev", "dev": "dev", "validation": "dev", "test": "test"}
SPLIT_RULES = ("auto", "mode", "standard")
MEDIA_MODALITIES = ("audio", "video")
MEDIA_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".wav", ".flac")
MAX_LISTED = 10  # ids listed in one summary finding
ID_RULE = "utterance id = <video_id>_<clip_id> (MMSA: <video_id>$_$<clip_id>; CMU-MultimodalSDK: <video_id>[<i>])"
ORDER_RULE = "dialogues (videos) in order of first appearance, segments by clip index as a number"
SPEAKER_RULE = "one speaker per video: speaker = video id"


# --- the vocabulary the MOSI/MOSEI importers share ------------------------------------------------------
def utterance_id(video_id: str, clip_id: str) -> str:
    """The manifest id of segment `clip_id` of video `video_id` (both strings, as written)."""
    return f"{video_id}_{clip_id}"


_DIGITS = re.compile(r"(\d+)")


def clip_order_key(clip_id: str) -> tuple:
    """Sort key that orders clip ids as numbers ("2" < "10"), and mixed ids ("a2" < "a10") naturally."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in _DIGITS.split(str(clip_id)) if p)


def label_spaces(corpus: str, emotions: bool) -> dict[str, LabelSpace]:
    """sentiment [-3, 3], plus the MOSEI multi-label emotions when the source has them."""
    spaces = {"sentiment": MOS_SENTIMENT}
    if emotions:
        spaces["emotions"] = MOSEI_EMOTIONS
    return spaces


def present_emotions(intensities: Sequence[float]) -> tuple[str, ...]:
    """The MOSEI emotions whose intensity (in the label order) is > 0."""
    return tuple(name for name, value in zip(EMOTION_COLUMNS, intensities, strict=True) if value > 0)


def check_corpus(corpus: str) -> str:
    key = corpus.strip().lower()
    if key not in CORPORA:
        raise ManifestError(f"unknown MOSI/MOSEI corpus {corpus!r}", file="--dataset", fix="use mosi or mosei")
    return key


def check_videos_belong(corpus: str, videos: Sequence[str], file: str, what: str = "file") -> None:
    """Refuse ids that are another corpus's: most videos are in the other corpus's standard folds and
    few in `corpus`'s (e.g. MOSEI labels imported as --dataset mosi). Silent when no fold lists ship."""
    others = [c for c in CORPORA if c != corpus]
    if corpus not in CORPORA or not videos:
        return
    try:
        own = load_folds(corpus)
        other = {c: load_folds(c) for c in others}
    except ManifestError:
        return
    unique = list(dict.fromkeys(videos))
    mine = sum(own.split_of(v) is not None for v in unique)
    for name, folds in other.items():
        theirs = sum(folds.split_of(v) is not None for v in unique)
        if theirs > len(unique) / 2 and mine < theirs:
            raise ManifestError(
                f"this {what} looks like {CORPORA[name]}, not {CORPORA[corpus]}: {theirs} of its {len(unique)} "
                f"video ids are in the {CORPORA[name]} standard folds, {mine} in the {CORPORA[corpus]} ones",
                file=file, fix=f"pass --dataset {name}, or the {CORPORA[corpus]} file")


# --- the adapters ---------------------------------------------------------------------------------------
@ADAPTERS.register("mosi", "CMU-MOSI raw videos, MMSA-FET layout (label.csv + Raw/<video>/<clip>.mp4)")
def load_mosi(root: str | Path, *, splits: str = "auto", modalities: Sequence[str] | None = None,
              label_file: str = "label.csv") -> Manifest:
    """Build a validated CMU-MOSI manifest from an MMSA-FET folder; see `load_mos` for the options."""
    return load_mos("mosi", root, splits=splits, modalities=modalities, label_file=label_file)


@ADAPTERS.register("mosei", "CMU-MOSEI raw videos, MMSA-FET layout (label.csv + Raw/<video>/<clip>.mp4)")
def load_mosei(root: str | Path, *, splits: str = "auto", modalities: Sequence[str] | None = None,
               label_file: str = "label.csv") -> Manifest:
    """Build a validated CMU-MOSEI manifest from an MMSA-FET folder; see `load_mos` for the options."""
    return load_mos("mosei", root, splits=splits, modalities=modalities, label_file=label_file)


def load_mos(corpus: str, root: str | Path, *, splits: str = "auto", modalities: Sequence[str] | None = None,
             label_file: str = "label.csv") -> Manifest:
    """Build a validated MOSI/MOSEI manifest from `root` (a folder holding label.csv and Raw/, or label.csv).

    splits: "auto" (the ``mode`` column when every row has one, else the standard folds), "mode", or
    "standard" (the CMU-MultimodalSDK folds shipped in data_manifests/splits; videos in no fold are left out
    and reported).
    modalities: what extraction will need. None: clips are attached where found (a missing Raw/ folder is a
    note); naming audio or video makes a missing Raw/ folder an error; ("text",) skips the clips.
    label_file: the label CSV's name (or path) relative to root.
    """
    corpus = check_corpus(corpus)
    name = CORPORA[corpus]
    if splits not in SPLIT_RULES:
        raise ManifestError(f"unknown split rule {splits!r}", file=f"load_{corpus} options",
                            fix=f"use one of {', '.join(SPLIT_RULES)}")
    modalities = _check_modalities(corpus, modalities)
    csv_path, base = _find_label_file(Path(root), name, label_file)
    table = read_csv(csv_path, required=REQUIRED, optional=OPTIONAL, header_hint=HEADER_HINT)
    emotion_cols = [c for c in EMOTION_COLUMNS if c in table.header]
    with_emotions = corpus == "mosei" and bool(emotion_cols)
    if with_emotions and len(emotion_cols) < len(EMOTION_COLUMNS):
        missing = [c for c in EMOTION_COLUMNS if c not in table.header]
        raise ManifestError(f"label file has emotion column(s) {emotion_cols} but not {missing}", file=str(csv_path),
                            fix=f"give all six intensity columns ({', '.join(EMOTION_COLUMNS)}) or none")
    problems = list(table.problems)
    findings = list(table.notes)
    rows = _parse_rows(csv_path, table.rows, with_emotions, problems)
    raise_problems(problems)
    if not rows:
        raise ManifestError("the label file has no segment rows", file=str(csv_path),
                            fix=f"write one row per segment under the header {HEADER_HINT}")
    check_videos_belong(corpus, [r.video for r in rows], str(csv_path), "label file")
    policies = _base_policies(name, csv_path, table.encoding, modalities, with_emotions, table.header)
    video_split = _choose_splits(corpus, csv_path, rows, splits, policies, findings, problems)
    raise_problems(problems)
    clips = _ClipIndex.find(base, corpus, modalities, policies, findings)
    dialogues = _build(rows, video_split, clips, csv_path, policies, findings)
    if not dialogues:
        raise ManifestError("no segment of the label file is in any split", file=str(csv_path),
                            fix="check that the video ids are this corpus's (or use --adapter-option splits=mode)")
    manifest = Manifest(name=corpus, root=str(base), dialogues=dialogues, policies=policies, findings=findings,
                        label_spaces=label_spaces(corpus, with_emotions))
    manifest.validate()
    return manifest


def _check_modalities(corpus: str, modalities: Sequence[str] | None) -> tuple[str, ...] | None:
    if modalities is None:
        return None
    if isinstance(modalities, str):
        modalities = tuple(m.strip() for m in modalities.split(",") if m.strip())
    for m in modalities:
        if m not in ("text", *MEDIA_MODALITIES):
            raise ManifestError(f"unknown modality {m!r}", file=f"load_{corpus} options",
                                fix=f"use some of text, {', '.join(MEDIA_MODALITIES)}")
    return tuple(modalities)


def _find_label_file(root: Path, name: str, label_file: str) -> tuple[Path, Path]:
    """(label CSV, corpus folder). `root` may be the folder or the CSV itself."""
    if root.is_file():
        return root.resolve(), root.resolve().parent
    base = require_root(root, name, fix="pass the MMSA-FET folder that holds label.csv and Raw/")
    path = base / label_file
    if path.is_file():
        return path, base
    found = sorted(p for p in base.rglob(Path(label_file).name) if not is_hidden(p.name))
    if len(found) == 1:
        return found[0], found[0].parent
    where = f"; copies found: {', '.join(map(str, found))}" if found else ""
    raise ManifestError(f"{label_file} not found in the {name} folder{where}", file=str(base),
                        fix=f"pass the folder that holds {label_file} (MMSA-FET layout: label.csv + Raw/<video>/"
                            "<clip>.mp4), or the label file itself")


# --- rows -----------------------------------------------------------------------------------------------
@dataclass
class _Row:
    row: int
    video: str
    clip: str
    text: str
    sentiment: float
    mode: str | None  # train | dev | test, or None when the file has no mode
    emotions: tuple[str, ...] | None


def _number(value: str) -> float | None:
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _parse_rows(path: Path, records: list[tuple[int, dict[str, str]]], with_emotions: bool,
                problems: list[Finding]) -> list[_Row]:
    rows: list[_Row] = []
    first: dict[tuple[str, str], int] = {}
    for row_no, rec in records:
        def problem(text: str, fix: str, row_no: int = row_no) -> None:
            problems.append(Finding(file=str(path), row=row_no, problem=text, fix=fix))

        video, clip = rec["video_id"].strip(), rec["clip_id"].strip()
        if not video or not clip:
            problem("empty video_id or clip_id", "write the video id and the segment's clip id")
            continue
        key = (video, clip)
        if key in first:
            problem(f"duplicate segment video_id {video!r}, clip_id {clip!r} (rows {first[key]} and {row_no})",
                    "remove the repeated row or correct its clip_id")
            continue
        first[key] = row_no
        sentiment = _number(rec["label"].strip())
        if sentiment is None or not -3.0 <= sentiment <= 3.0:
            problem(f"label {rec['label']!r} is not a sentiment in [-3, 3]",
                    "write the segment's sentiment score, a number from -3 to 3")
            continue
        mode = None
        raw_mode = (rec.get("mode") or "").strip()
        if raw_mode:
            mode = MODE_ALIASES.get(raw_mode.lower())
            if mode is None:
                problem(f"unknown mode {raw_mode!r}", "write train, valid or test in the mode column")
                continue
        emotions = None
        if with_emotions:
            values = [_number(rec[c].strip()) for c in EMOTION_COLUMNS]
            bad = [c for c, v in zip(EMOTION_COLUMNS, values, strict=True) if v is None or v < 0]
            if bad:
                problem(f"emotion intensity column(s) {bad} are not numbers >= 0",
                        "write each intensity as a number from 0 to 3")
                continue
            emotions = present_emotions(values)  # type: ignore[arg-type]
        rows.append(_Row(row_no, video, clip, rec["text"].strip(), sentiment, mode, emotions))
    return rows


# --- splits ---------------------------------------------------------------------------------------------
def _choose_splits(corpus: str, path: Path, rows: list[_Row], rule: str, policies: dict, findings: list[Finding],
                   problems: list[Finding]) -> dict[str, str]:
    """video id -> split; videos in no split are absent (and reported)."""
    by_mode = _mode_splits(path, rows, problems) if any(r.mode for r in rows) else None
    complete_mode = by_mode is not None and all(r.mode for r in rows)
    if rule == "mode" and not complete_mode:
        empty = next((r.row for r in rows if not r.mode), None)
        raise ManifestError("the mode column is missing or empty" + (f" (first empty at row {empty})" if empty else ""),
                            file=str(path), row=empty,
                            fix="fill the mode column with train/valid/test, or use --adapter-option splits=standard")
    use_mode = rule == "mode" or (rule == "auto" and complete_mode)
    folds = None
    if not use_mode:
        folds = load_folds(corpus)  # raises, naming the missing list
    elif by_mode is not None:
        try:
            folds = load_folds(corpus)
        except ManifestError:
            folds = None  # nothing to compare with
    videos = list(dict.fromkeys(r.video for r in rows))
    if use_mode:
        assert by_mode is not None
        policies["splits"] = {"rule": "the label file's mode column (valid -> dev)", "file": str(path)}
        if folds is not None:
            _compare_with_folds(path, by_mode, folds, policies, findings)
        return by_mode
    assert folds is not None
    if by_mode is not None and not complete_mode:
        empty = next(r.row for r in rows if not r.mode)
        findings.append(Finding(file=str(path), row=empty, problem="the mode column is empty on some rows (the first "
                                                                   "here), so the standard folds decide every split",
                                fix="fill the mode column on every row to use it, or leave it empty everywhere"))
    split = {v: s for v in videos if (s := folds.split_of(v)) is not None}
    left_out = [v for v in videos if v not in split]
    policies["splits"] = {"rule": f"standard folds ({folds.fold})", "folds": folds.describe(),
                          "videos_left_out": left_out}
    if left_out:
        findings.append(Finding(
            file=str(path), problem=f"{len(left_out)} video(s) are in no {folds.fold} fold list and are left out: "
                                    f"{_some(left_out)}",
            fix="nothing to do for the standard protocol; use --adapter-option splits=mode to keep them"))
    return split


def _mode_splits(path: Path, rows: list[_Row], problems: list[Finding]) -> dict[str, str]:
    """video -> split from the mode column; a video whose segments disagree is a problem (one split a video)."""
    split: dict[str, tuple[str, int]] = {}
    for r in rows:
        if r.mode is None:
            continue
        if r.video in split and split[r.video][0] != r.mode:
            problems.append(Finding(
                file=str(path), row=r.row, utterance_id=utterance_id(r.video, r.clip),
                problem=f"video {r.video!r} is in {split[r.video][0]} at row {split[r.video][1]} but in {r.mode} here",
                fix="keep every segment of a video in one split (the standard folds split by video)"))
            continue
        split.setdefault(r.video, (r.mode, r.row))
    return {v: s for v, (s, _) in split.items()}


def _compare_with_folds(path: Path, by_mode: dict[str, str], folds: FoldLists, policies: dict,
                        findings: list[Finding]) -> None:
    differ = {v: (s, folds.split_of(v)) for v, s in by_mode.items() if folds.split_of(v) not in (None, s)}
    outside = [v for v in by_mode if folds.split_of(v) is None]
    policies["splits"]["standard_folds"] = {"compared_with": folds.describe(), "videos_in_another_split":
                                            {v: {"mode": a, "standard": b} for v, (a, b) in differ.items()},
                                            "videos_in_no_fold": outside}
    if differ:
        shown = ", ".join(f"{v} ({a} here, {b} in the standard folds)" for v, (a, b) in list(differ.items())[:5])
        findings.append(Finding(
            file=str(path), problem=f"{len(differ)} video(s) sit in another split than in the standard folds: {shown}",
            fix="numbers on this split are not comparable with the standard protocol; use --adapter-option "
                "splits=standard to follow the CMU-MultimodalSDK folds"))
    if outside:
        findings.append(Finding(file=str(path), problem=f"{len(outside)} video(s) are in no standard fold list: "
                                                        f"{_some(outside)}",
                                fix="check that this label file is the corpus you named (--dataset)"))


def _some(ids: Sequence[str]) -> str:
    return ", ".join(ids[:MAX_LISTED]) + (f" ... (+{len(ids) - MAX_LISTED})" if len(ids) > MAX_LISTED else "")


# --- clips ----------------------------------------------------------------------------------------------
@dataclass
class _ClipIndex:
    """(video id, clip id) -> clip file under Raw/<video_id>/<clip_id>.<ext>."""

    folder: Path | None
    clips: dict[tuple[str, str], Path]
    n_files: int

    @classmethod
    def find(cls, base: Path, corpus: str, modalities: tuple[str, ...] | None, policies: dict,
             findings: list[Finding]) -> _ClipIndex:
        wanted = modalities is None or any(m in MEDIA_MODALITIES for m in modalities)
        raw = next((base / d for d in sorted(os.listdir(base)) if d.lower() == "raw" and (base / d).is_dir()), None)
        policies["clips"] = {"folder": str(raw) if raw and wanted else None, "missing": [], "extra_files_ignored": 0}
        if not wanted:
            return cls(None, {}, 0)
        if raw is None:
            if modalities is not None:
                raise ManifestError(
                    "no Raw/ clip folder next to the label file", file=str(base),
                    fix="unpack the clips as Raw/<video_id>/<clip_id>.mp4 here, or build a text-only manifest with "
                        "--adapter-option modalities=text")
            findings.append(Finding(file=str(base), problem="no Raw/ clip folder next to the label file: the manifest "
                                                            "has text and labels only",
                                    fix="unpack the clips as Raw/<video_id>/<clip_id>.mp4 to extract audio or video"))
            return cls(None, {}, 0)
        clips: dict[tuple[str, str], Path] = {}
        n_files = 0
        for video_dir in sorted(raw.iterdir()):
            if is_hidden(video_dir.name) or not video_dir.is_dir():
                continue
            for f in sorted(video_dir.iterdir()):
                if is_hidden(f.name) or f.suffix.lower() not in MEDIA_SUFFIXES:
                    continue
                n_files += 1
                clips.setdefault((video_dir.name, f.stem), f)  # .mp4 sorts before most others
        return cls(raw, clips, n_files)


# --- building -------------------------------------------------------------------------------------------
def _build(rows: list[_Row], video_split: dict[str, str], clips: _ClipIndex, csv_path: Path, policies: dict,
           findings: list[Finding]) -> list[Dialogue]:
    by_video: dict[str, list[_Row]] = {}
    for r in rows:
        if r.video in video_split:
            by_video.setdefault(r.video, []).append(r)
    dialogues: dict[str, list[Dialogue]] = {"train": [], "dev": [], "test": []}
    used = 0
    for video, video_rows in by_video.items():
        split = video_split[video]
        utterances = []
        for r in sorted(video_rows, key=lambda r: clip_order_key(r.clip)):
            uid = utterance_id(video, r.clip)
            clip = clips.clips.get((video, r.clip))
            if clip is not None:
                used += 1
            elif clips.folder is not None:
                policies["clips"]["missing"].append(uid)
                findings.append(Finding(
                    file=str(csv_path), row=r.row, utterance_id=uid,
                    problem=f"clip Raw/{video}/{r.clip}.mp4 not found; the audio/video features will be missing for "
                            "this segment (its text and labels are kept)",
                    fix=f"restore {r.clip}.mp4 into {clips.folder / video} if you need its audio or video"))
            labels: dict = {"sentiment": r.sentiment}
            if r.emotions is not None:
                labels["emotions"] = r.emotions
            utterances.append(Utterance(id=uid, dialogue_id=video, speaker=video, text=r.text, split=split,
                                        labels=labels, media=str(clip) if clip else None,
                                        source_file=str(csv_path), source_row=r.row))
        dialogues[split].append(Dialogue(id=video, split=split, utterances=utterances))
    policies["clips"]["extra_files_ignored"] = clips.n_files - used
    return [d for s in ("train", "dev", "test") for d in dialogues[s]]


def _base_policies(name: str, csv_path: Path, encoding: str, modalities: tuple[str, ...] | None,
                   with_emotions: bool, header: list[str]) -> dict:
    ignored = [c for c in ("label_T", "label_A", "label_V", "annotation") if c in header]
    return {
        "corpus": name,
        "layout": "MMSA-FET (label.csv + Raw/<video_id>/<clip_id>.mp4)",
        "label_file": str(csv_path),
        "encoding": encoding,
        "modalities": list(modalities) if modalities is not None else "text, plus audio/video where clips exist",
        "ids": ID_RULE,
        "ordering": ORDER_RULE,
        "speaker": SPEAKER_RULE,
        "labels": {"sentiment": "column label, regression in [-3, 3]; derived tasks sentiment_has0, "
                                "sentiment_non0, sentiment7 are computed by merc-heads",
                   "emotions": ("columns " + ", ".join(EMOTION_COLUMNS) + ": present if intensity > 0")
                   if with_emotions else None,
                   "ignored_columns": ignored},
    }
