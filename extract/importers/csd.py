"""CMU-MultimodalSDK computational sequences (``.csd``, HDF5) + the label csd -> ImportedCorpus.

Why it is built this way (formats.md C):

* A ``.csd`` is one top-level group (named for the sequence, e.g. "COVAREP", "All Labels") holding
  ``data/<key>/features`` (steps x dim) and ``data/<key>/intervals`` (steps x 2, seconds) plus ``metadata``.
  The family is recognised by that structure (h5py), never by the file name.
* The label csd (``--labels``) defines the segments. Its keys are either video ids with one row per
  segment (as downloaded) or ``<video_id>[<i>]`` after the SDK's ``align``; either way segment ``i`` of
  video ``vid`` becomes utterance ``vid[i]`` of dialogue ``vid`` (the SDK's own name), ordered by ``i``.
  MOSI labels have one column (sentiment in [-3, 3]); MOSEI "All Labels" seven: sentiment, then the
  intensities of happy, sad, anger, surprise, disgust, fear (present if > 0).
* A feature csd keyed by video is cut by the label intervals (a frame belongs to the segment that holds its
  midpoint); one keyed ``vid[i]`` already holds each segment's frames. The utterance vector is the mean of
  the segment's frames, and the frames are kept. A csd of words (string features, e.g. TimestampedWords)
  gives the utterances their text instead of a feature set.
* Imported into a dataset the store already holds (from MMSA or the raw adapter, ids ``<video>_<clip>``),
  the segments go onto the stored utterances instead (attach.py): by alias, else by order within the video
  when the counts and every sentiment label agree; ``vid[i]`` becomes the stored utterance's alias.
* -inf / NaN values (COVAREP has -inf) are counted per key and handled by a named policy (nonfinite.py).
* A csd carries no split: the standard folds shipped in data_manifests/splits decide (a missing list is an
  error naming it); videos in no fold are left out and counted.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from merc.data_manifests.adapters.mosi import CORPORA, EMOTION_COLUMNS, check_videos_belong, label_spaces
from merc.data_manifests.errors import Finding, ManifestError
from merc.data_manifests.fold_lists import FoldLists, load_folds
from merc.data_manifests.manifest import Dialogue, Manifest, Utterance

from . import IMPORTERS
from .base import ImportedCorpus, source_record
from .nonfinite import DEFAULT_NAN_POLICY, NonFiniteReport, check_policy
from .sequences import keep_frames_option, pack

FAMILY = "csd"
KEY_RE = re.compile(r"^(.*)\[(\d+)\]$")
LABEL_WIDTHS = {1: "sentiment", 7: "sentiment + 6 emotion intensities (MOSEI All Labels)"}
MODALITY_WORDS = (("audio", ("covarep", "opensmile", "audio", "acoustic", "librosa", "wav2vec", "hubert")),
                  ("video", ("facet", "openface", "visual", "vision", "video", "face")),
                  ("text", ("glove", "word", "vector", "bert", "text", "language")))
SEGMENT_RULE = "a frame belongs to the segment that holds its interval's midpoint (start <= mid < end)"
ID_RULE = "utterance id = <video_id>[<i>] (the SDK's segment key); i = the segment's row in the label csd"
SKIP_WORDS = {"sp", "sil", ""}  # silence tokens of the SDK's word alignments


class CsdError(ManifestError):
    """A .csd file cannot be read as a computational sequence, or does not match its labels."""


@IMPORTERS.register("csd", "CMU-MultimodalSDK computational sequences (.csd, HDF5), labels from a label csd")
class CsdImporter:
    """The registry's face of this module (detect / read, see extract/importers/__init__.py)."""

    def detect(self, obj_or_path: Any) -> bool:
        """An HDF5 file shaped like a computational sequence, or one too damaged to open (read() then says
        exactly what is wrong; csd is the only HDF5 family, so nothing else would claim it)."""
        if not isinstance(obj_or_path, Path):
            return False
        problem = structure_problem(obj_or_path)
        return problem is None or problem.startswith("unreadable HDF5")

    def read(self, path: str | Path, dataset: str, *, labels: str | Path | None = None,
             features: str | Path | Sequence[str | Path] = (), nan_policy: str = DEFAULT_NAN_POLICY,
             keep_frames: bool | str = True, modality: str | Sequence[str] | None = None,
             fold: str = "standard") -> ImportedCorpus:
        return read(path, dataset, labels=labels, features=features, nan_policy=nan_policy,
                    keep_frames=keep_frames, modality=modality, fold=fold)


# --- structure ------------------------------------------------------------------------------------------
def structure_problem(path: Path) -> str | None:
    """None if `path` is an HDF5 file shaped like a computational sequence, else why not."""
    import h5py

    try:
        if not h5py.is_hdf5(path):
            return "not an HDF5 file"
        with h5py.File(path, "r") as f:
            roots = [k for k in f if isinstance(f[k], h5py.Group)]
            if not roots:
                return "no top-level group"
            group = f[roots[0]]
            if "data" not in group or not isinstance(group["data"], h5py.Group):
                return f"group {roots[0]!r} has no data/ group"
            for key in group["data"]:
                entry = group["data"][key]
                if not isinstance(entry, h5py.Group) or "features" not in entry or "intervals" not in entry:
                    return f"data/{key} has no features and intervals"
                break
            return None
    except OSError as exc:
        return f"unreadable HDF5 ({exc})"


@dataclass
class _Sequence:
    """One open computational sequence."""

    path: Path
    root: str
    data: Any  # the h5py data/ group
    metadata: dict[str, str]
    aligned: bool  # keys are <video>[<i>]
    videos: dict[str, list[tuple[int | None, str]]]  # video -> [(segment index or None, key)]

    def arrays(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(features [n, ...], intervals [n, 2]) of one key, checked as the SDK's integrity check does."""
        entry = self.data[key]
        try:
            feats, intervals = entry["features"][()], entry["intervals"][()]
        except (OSError, KeyError) as exc:
            raise CsdError(f"data/{key} cannot be read ({exc})", file=str(self.path),
                           fix="the file is truncated or damaged: download it again") from None
        if intervals.ndim != 2 or intervals.shape[1] != 2 or feats.ndim < 2 or len(feats) != len(intervals):
            raise CsdError(f"data/{key}: features {feats.shape} and intervals {intervals.shape} do not match "
                           "(intervals must be [n, 2], features [n, ...])", file=str(self.path),
                           fix="the file is damaged, or not a computational sequence: download it again")
        return feats, intervals.astype(np.float64)


def _open(stack: contextlib.ExitStack, path: Path, role: str) -> _Sequence:
    import h5py

    if not path.is_file():
        raise CsdError("file not found", file=str(path), fix=f"pass the path of the {role} .csd")
    problem = structure_problem(path)
    if problem is not None:
        raise CsdError(f"not a CMU-MultimodalSDK computational sequence: {problem}", file=str(path),
                       fix=f"pass the {role} .csd as downloaded by the SDK (a truncated download cannot be read: "
                           "fetch it again)")
    f = stack.enter_context(h5py.File(path, "r"))
    root = next(k for k in f if isinstance(f[k], h5py.Group))
    data = f[root]["data"]
    videos: dict[str, list[tuple[int | None, str]]] = {}
    kinds = set()
    for key in data:
        m = KEY_RE.match(key)
        kinds.add(m is not None)
        video, index = (m.group(1), int(m.group(2))) if m else (key, None)
        videos.setdefault(video, []).append((index, key))
    if len(kinds) > 1:
        raise CsdError("some keys are <video>[<i>] segments and some whole videos", file=str(path),
                       fix="use a file written in one piece by the SDK (all aligned or none)")
    for entries in videos.values():
        entries.sort(key=lambda e: -1 if e[0] is None else e[0])
    return _Sequence(path, root, data, _metadata(f[root]), aligned=kinds == {True}, videos=videos)


def _metadata(group: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    meta = group.get("metadata")
    if meta is None:
        return out
    for key in list(meta)[:20]:
        try:
            value = meta[key][()]
            value = value[0] if getattr(value, "shape", ()) == (1,) else value
            out[str(key)] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        except Exception:  # noqa: BLE001 - metadata is informative only (the SDK warns, never fails)
            continue
    return out


# --- labels ---------------------------------------------------------------------------------------------
@dataclass
class _Segment:
    video: str
    index: int
    start: float
    end: float
    sentiment: float
    emotions: tuple[str, ...] | None


def _read_labels(seq: _Sequence, corpus: str) -> tuple[dict[str, list[_Segment]], int]:
    """video -> segments ordered by index, and the label width (1 or 7)."""
    width = None
    out: dict[str, list[_Segment]] = {}
    for video, entries in seq.videos.items():
        for index, key in entries:
            feats, intervals = seq.arrays(key)
            feats = feats.reshape(len(feats), -1).astype(np.float64)
            if width is None:
                width = feats.shape[1]
                if width not in LABEL_WIDTHS:
                    raise CsdError(f"label rows have {width} columns; a label csd has 1 (MOSI sentiment) or 7 "
                                   "(MOSEI: sentiment, happy, sad, anger, surprise, disgust, fear)",
                                   file=str(seq.path), fix="pass the corpus's label csd as --labels (e.g. "
                                                           "CMU_MOSEI_Labels.csd), not a feature file")
                if corpus == "mosi" and width == 7:
                    raise CsdError("these are MOSEI labels (7 columns: sentiment + 6 emotions), not MOSI's",
                                   file=str(seq.path), fix="pass --dataset mosei, or the MOSI label csd "
                                                           "(CMU_MOSI_Opinion_Labels.csd)")
            elif feats.shape[1] != width:
                raise CsdError(f"data/{key} has {feats.shape[1]} label columns, other keys {width}",
                               file=str(seq.path), fix="the label file is damaged: download it again")
            if not np.isfinite(feats).all():
                raise CsdError(f"data/{key} holds NaN or infinite labels", file=str(seq.path),
                               fix="labels must be numbers: download the label csd again")
            if index is not None and len(feats) != 1:
                raise CsdError(f"segment key data/{key} has {len(feats)} label rows, not 1", file=str(seq.path),
                               fix="pass the label csd as downloaded, or as aligned by the SDK to itself")
            rows = range(len(feats))
            for r in rows:
                i = index if index is not None else r
                emotions = tuple(n for n, v in zip(EMOTION_COLUMNS, feats[r, 1:], strict=True) if v > 0) \
                    if width == 7 else None
                out.setdefault(video, []).append(_Segment(video, i, float(intervals[r, 0]), float(intervals[r, 1]),
                                                          float(feats[r, 0]), emotions))
    if not out:
        raise CsdError("the label csd holds no segment", file=str(seq.path), fix="pass the corpus's label csd")
    for segs in out.values():
        segs.sort(key=lambda s: s.index)
    return out, int(width or 1)


# --- features -------------------------------------------------------------------------------------------
@dataclass
class _FeatureFile:
    seq: _Sequence
    name: str
    modality: str
    is_text: bool
    dim: int
    frames: dict[str, list[np.ndarray | None]] = field(default_factory=dict)  # video -> one array per segment
    words: dict[str, list[str | None]] = field(default_factory=dict)  # text files: video -> text per segment


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "features"


def _guess_modality(seq: _Sequence, given: str | None) -> str:
    if given:
        if given not in ("text", "audio", "video"):
            raise CsdError(f"unknown modality {given!r}", file=str(seq.path), fix="use text, audio or video")
        return given
    words = f"{seq.root} {seq.path.stem} {seq.metadata.get('computational sequence description', '')}".lower()
    for modality, keys in MODALITY_WORDS:
        if any(k in words for k in keys):
            return modality
    raise CsdError(f"cannot tell whether {seq.root!r} holds text, audio or video features", file=str(seq.path),
                   fix="say it with --option modality=audio (one value per file: the FILE first, then "
                       "--option features=...)")


def _first_features(seq: _Sequence) -> np.ndarray:
    for entries in seq.videos.values():
        return seq.arrays(entries[0][1])[0]
    raise CsdError("the feature csd holds no key", file=str(seq.path), fix="pass a feature csd that holds data")


def _cut(seq: _Sequence, video: str, segments: list[_Segment]) -> list[tuple[np.ndarray, np.ndarray] | None]:
    """The rows (features, intervals) of each segment of `video` in this file, or None when it has none."""
    entries = seq.videos.get(video)
    if not entries:
        return [None] * len(segments)
    if seq.aligned:
        by_index = {i: key for i, key in entries}
        return [seq.arrays(by_index[s.index]) if s.index in by_index else None for s in segments]
    feats, intervals = seq.arrays(entries[0][1])
    mid = intervals.mean(axis=1)
    cuts: list[tuple[np.ndarray, np.ndarray] | None] = []
    for s in segments:
        inside = (mid >= s.start) & (mid < s.end)
        cuts.append((feats[inside], intervals[inside]))
    return cuts


def _read_features(ff: _FeatureFile, segments: dict[str, list[_Segment]], report: NonFiniteReport,
                   usable: dict[str, list[bool]]) -> int:
    """Fill ff.frames / ff.words for every labelled segment; returns how many segments found rows."""
    found = 0
    for video, segs in segments.items():
        cuts = _cut(ff.seq, video, segs)
        frames, words, ok = [], [], []
        for seg, cut in zip(segs, cuts, strict=True):
            if cut is None or len(cut[0]) == 0:
                frames.append(None)
                words.append(None)
                ok.append(False)
                continue
            found += 1
            feats = cut[0]
            if ff.is_text:
                words.append(" ".join(w for w in (_word(x) for x in feats.reshape(-1)) if w.lower() not in SKIP_WORDS))
                continue
            x = feats.reshape(len(feats), -1).astype(np.float32)
            x, good = report.apply(f"{video}[{seg.index}]", x)
            frames.append(x)
            ok.append(good)
        if ff.is_text:
            ff.words[video] = words
        else:
            ff.frames[video] = frames
            usable[video] = ok
    return found


def _word(value: Any) -> str:
    return value.decode("utf-8", "replace").strip() if isinstance(value, bytes) else str(value).strip()


# --- reading --------------------------------------------------------------------------------------------
def read(path: str | Path, dataset: str, *, labels: str | Path | None = None,
         features: str | Path | Sequence[str | Path] = (), nan_policy: str = DEFAULT_NAN_POLICY,
         keep_frames: bool | str = True, modality: str | Sequence[str] | None = None,
         fold: str = "standard") -> ImportedCorpus:
    """Read feature csd `path` (and any `features`) with the label csd `labels` as corpus `dataset`.

    nan_policy: zero | mask | error (nonfinite.py). keep_frames: store each segment's frames too.
    modality: text/audio/video per feature file (path first), when the sequence's name does not say.
    fold: the split lists to use (data_manifests/splits/<dataset>_<fold>_<split>.txt).
    """
    corpus = dataset.strip().lower()
    files = [Path(path)] + [Path(p) for p in ([features] if isinstance(features, (str, Path)) else features) if p]
    check_policy(nan_policy, f"{path} (nan_policy)")
    keep = keep_frames_option(keep_frames)
    if labels is None:
        raise CsdError("a .csd holds features only: the labels are in their own csd", file=str(path),
                       fix=f"pass --labels <the label csd> (e.g. {'CMU_MOSEI_Labels.csd' if corpus == 'mosei' else 'CMU_MOSI_Opinion_Labels.csd'})")
    modalities = [modality] * len(files) if isinstance(modality, str) or modality is None else list(modality)
    if len(modalities) != len(files):
        raise CsdError(f"{len(modalities)} modalities for {len(files)} feature files", file=str(path),
                       fix="give one modality per feature file (the FILE first, then --option features=...)")
    folds = load_folds(corpus, fold)  # a csd carries no split: the lists must exist (the error names the file)
    with contextlib.ExitStack() as stack:
        label_seq = _open(stack, Path(labels), "label")
        all_segments, width = _read_labels(label_seq, corpus)
        check_videos_belong(corpus, list(all_segments), str(labels), "label csd")
        segments, left_out = _in_folds(all_segments, folds, label_seq.path)
        feature_files = [_open(stack, p, "feature") for p in files]
        findings: list[Finding] = []
        built = [_build_file(seq, m, segments, nan_policy, findings)
                 for seq, m in zip(feature_files, modalities, strict=True)]
    manifest = _manifest(corpus, label_seq.path, segments, folds, width, built, left_out, findings)
    feats = []
    for ff, report, usable in built:
        if ff.is_text:
            continue
        order = {d.id: ff.frames[d.id] for d in manifest.dialogues}
        fs = pack(ff.name, ff.modality, order, ff.dim, keep_frames=keep, usable=usable,
                  description=f"{ff.seq.root} from {ff.seq.path.name}, {ff.dim}-d; pooled = mean of the segment's "
                              f"frames ({'keys vid[i]' if ff.seq.aligned else SEGMENT_RULE})")
        fs.policies = {"nonfinite": nan_policy, "nonfinite_values": report.total,
                       "segments": "keys vid[i]" if ff.seq.aligned else SEGMENT_RULE}
        feats.append(fs)
    provenance = _provenance(corpus, label_seq, width, built, folds, left_out, nan_policy, manifest, keep)
    # into a dataset the store already holds (MMSA's or the raw adapter's ids <video>_<clip>), the segments are
    # placed on the stored utterances by segment order checked by the sentiment labels (attach.py), since the
    # SDK index i is the label row, not the clip id; the SDK key is then recorded as the utterance's alias
    return ImportedCorpus(manifest=manifest, features=feats, provenance=provenance, attach="if-stored")


def _in_folds(segments: dict[str, list[_Segment]], folds: FoldLists,
              path: Path) -> tuple[dict[str, list[_Segment]], list[str]]:
    kept = {v: s for v, s in segments.items() if folds.split_of(v) is not None}
    left_out = [v for v in segments if v not in kept]
    if not kept:
        raise CsdError(f"none of the {len(segments)} labelled videos is in the {folds.corpus} {folds.fold} folds",
                       file=str(path), fix=f"pass the {CORPORA.get(folds.corpus, folds.corpus)} label csd, or the "
                                           "--dataset these labels belong to")
    return kept, left_out


def _build_file(seq: _Sequence, modality: str | None, segments: dict[str, list[_Segment]], nan_policy: str,
                findings: list[Finding]) -> tuple[_FeatureFile, NonFiniteReport, dict]:
    sample = _first_features(seq)
    is_text = sample.dtype.kind in "SUO"
    ff = _FeatureFile(seq=seq, name=f"csd-{_slug(seq.root)}", modality="text" if is_text else
                      _guess_modality(seq, modality), is_text=is_text,
                      dim=int(np.prod(sample.shape[1:])) if not is_text else 0)
    shared = [v for v in segments if v in seq.videos]
    if not shared:
        raise CsdError(f"the feature csd shares no video with the labels ({len(seq.videos)} videos here, e.g. "
                       f"{next(iter(seq.videos), '-')!r}; labels e.g. {next(iter(segments))!r})", file=str(seq.path),
                       fix="pass feature and label files of the same corpus")
    report = NonFiniteReport(file=str(seq.path), policy=nan_policy, array=seq.root)
    usable: dict[str, list[bool]] = {}
    found = _read_features(ff, segments, report, usable)
    report.raise_if_error("--option nan_policy=")
    total = sum(len(s) for s in segments.values())
    if found < total:
        lacking = "words: their text is empty" if is_text else f"frames: their {ff.modality} vector is marked missing"
        findings.append(Finding(file=str(seq.path), problem=f"{total - found} of {total} labelled segments have no "
                                                            f"{seq.root!r} {lacking}",
                                fix="nothing to do if the release lacks them; heads skip missing vectors"))
    if (f := report.finding()) is not None:
        findings.append(f)
    extra = len([v for v in seq.videos if v not in segments])
    if extra:
        findings.append(Finding(file=str(seq.path), problem=f"{extra} video(s) of this file have no label in the "
                                                            "standard folds and are not imported",
                                fix="nothing to do: only labelled videos of the folds are imported"))
    return ff, report, usable


def _manifest(corpus: str, labels: Path, segments: dict[str, list[_Segment]], folds: FoldLists, width: int,
              built: list[tuple[_FeatureFile, NonFiniteReport, dict]], left_out: list[str],
              findings: list[Finding]) -> Manifest:
    texts = next((ff.words for ff, _, _ in built if ff.is_text), {})
    by_split: dict[str, list[Dialogue]] = {"train": [], "dev": [], "test": []}
    rank = {v: i for ids in folds.ids.values() for i, v in enumerate(ids)}
    for video, segs in sorted(segments.items(), key=lambda item: rank[item[0]]):
        split = folds.split_of(video)
        assert split is not None
        words = texts.get(video) or [None] * len(segs)
        utts = []
        for seg, text in zip(segs, words, strict=True):
            labels_of: dict = {"sentiment": seg.sentiment}
            if seg.emotions is not None:
                labels_of["emotions"] = seg.emotions
            utts.append(Utterance(id=f"{video}[{seg.index}]", dialogue_id=video, speaker=video, text=text or "",
                                  split=split, labels=labels_of, start=seg.start, end=seg.end,
                                  source_file=str(labels)))
        by_split[split].append(Dialogue(id=video, split=split, utterances=utts))
    if left_out:
        findings.append(Finding(file=str(labels), problem=f"{len(left_out)} labelled video(s) are in no {folds.fold} "
                                                          f"fold and are left out: {', '.join(left_out[:10])}"
                                                          + (" ..." if len(left_out) > 10 else ""),
                                fix="nothing to do for the standard protocol"))
    manifest = Manifest(
        name=corpus, root=str(labels.parent), findings=findings,
        dialogues=[d for s in ("train", "dev", "test") for d in by_split[s]],
        label_spaces=label_spaces(corpus, emotions=width == 7),
        policies={"source": {"family": FAMILY, "labels": str(labels)}, "ids": ID_RULE,
                  "ordering": "videos in the order of the fold lists, segments by index i",
                  "speaker": "one speaker per video: speaker = video id",
                  "splits": {"rule": f"{folds.fold} folds", "folds": folds.describe(), "videos_left_out": left_out},
                  "text": "joined words of the word csd" if texts else "none (no word csd imported)"})
    manifest.validate()
    return manifest


def _provenance(corpus: str, labels: _Sequence, width: int, built: list, folds: FoldLists, left_out: list[str],
                nan_policy: str, manifest: Manifest, keep_frames: bool) -> dict:
    label_map = {"sentiment": {"0": "sentiment (regression, [-3, 3])"}}
    if width == 7:  # label columns 1..6: intensities, an emotion is present if > 0
        label_map["emotions"] = {str(i + 1): name for i, name in enumerate(EMOTION_COLUMNS)}
    files = {ff.seq.path.name: {"root": ff.seq.root, "feature_set": None if ff.is_text else ff.name,
                                "modality": ff.modality, "dim": ff.dim, "keys": "vid[i]" if ff.seq.aligned else "vid",
                                "metadata": {k: v[:200] for k, v in ff.seq.metadata.items()}}
             for ff, _, _ in built}
    return {
        "family": FAMILY,
        "layout": ", ".join(sorted({"aligned (keys vid[i])" if ff.seq.aligned else "unaligned (keys = video ids)"
                                    for ff, _, _ in built})),
        "description": f"CMU-MultimodalSDK computational sequences {', '.join(repr(ff.seq.root) for ff, _, _ in built)}"
                       f" with labels {labels.root!r}: {manifest.n_utterances} segments of "
                       f"{len(manifest.dialogues)} videos",
        "sources": [{**source_record(labels.path), "role": "labels"}]
                   + [{**source_record(ff.seq.path), "role": "text" if ff.is_text else "features"}
                      for ff, _, _ in built],
        "dev_split": f"official: CMU-MultimodalSDK {folds.fold} folds ({folds.files['dev']})",
        "label_map": label_map,
        "label_rule": "emotions: present if the column's intensity is > 0" if width == 7 else None,
        "files": files,
        "frames": keep_frames,
        "nan_policy": nan_policy,
        "nonfinite": [r.to_dict() for _, r, _ in built if r.total],
        "videos_left_out": len(left_out),
        "ids": ID_RULE,
        "segments": SEGMENT_RULE,
        "notes": [str(f) for f in manifest.findings],
        "labels_metadata": json.loads(json.dumps(labels.metadata)),
    }
