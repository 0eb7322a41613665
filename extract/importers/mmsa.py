"""MMSA processed pickles (``aligned_50.pkl``, ``unaligned_50.pkl``, SIMS ``unaligned_39.pkl``) -> ImportedCorpus.

Why it is built this way (formats.md D):

* The family is recognised by structure, never by file name: a dict whose split keys (train / valid /
  test, maybe a top-level ``config`` from MMSA-FET) hold dicts of per-sample arrays with ``id`` and
  ``regression_labels`` plus at least one of ``text`` / ``audio`` / ``vision``.
* Frames are kept with their lengths: ``audio_lengths`` / ``vision_lengths`` where the file has them
  (unaligned files), the ``text_bert`` attention mask for text, and otherwise (aligned files, which drop
  the lengths) the all-zero frames at either end are taken as padding. The utterance vector is the mean
  over the real frames only; the frames go to the store for heads such as MMoLRE.
* ``id`` is ``"<video_id>$_$<clip_id>"``: the video is the dialogue, segments are ordered by clip index
  as a number, and ids stay strings. The utterance id is the raw adapter's ``<video_id>_<clip_id>``; the
  file's own form is kept as an alias (formats.md H6). The file's ``valid`` split is the dev split ("official").
* Released COVAREP features hold ``-inf``; they are handled by a named policy (nonfinite.py), counted and
  recorded in the provenance.
* The pickle is read only through the restricted unpickler (`safe_pickle.load`), never `pickle.load`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from merc.data_manifests.adapters.mosi import (
    ID_RULE,
    ORDER_RULE,
    SPEAKER_RULE,
    check_videos_belong,
    clip_order_key,
    label_spaces,
    utterance_id,
)
from merc.data_manifests.errors import Finding, ManifestError
from merc.data_manifests.fold_lists import load_folds
from merc.data_manifests.manifest import Dialogue, Manifest, Utterance

from . import IMPORTERS, safe_pickle
from .base import ImportedCorpus, ImportedFeatures, source_record
from .nonfinite import DEFAULT_NAN_POLICY, NonFiniteReport, check_policy
from .sequences import keep_frames_option, pack

FAMILY = "mmsa"
SPLIT_KEYS = {"train": "train", "valid": "dev", "test": "test"}  # file key -> manifest split
MODALITIES = {"text": "text", "audio": "audio", "vision": "video"}  # file key -> store modality
LENGTH_KEYS = {"audio": "audio_lengths", "vision": "vision_lengths"}
ID_SEPARATOR = "$_$"
REQUIRED_KEYS = ("id", "regression_labels")
KNOWN_KEYS = {"raw_text", "text", "text_bert", "audio", "vision", "audio_lengths", "vision_lengths", "id",
              "annotations", "classification_labels", "regression_labels"}


@IMPORTERS.register("mmsa", "MMSA aligned_50.pkl / unaligned_50.pkl: features with frame lengths, sentiment")
class MmsaImporter:
    """The registry's face of this module (detect / read, see extract/importers/__init__.py)."""

    def detect(self, obj_or_path: Any) -> bool:
        """Whether the unpickled object has the MMSA structure (a Path is a non-pickle file: never MMSA)."""
        return not isinstance(obj_or_path, Path) and _structure_problem(obj_or_path) is None

    def read(self, path: str | Path, dataset: str, *, loaded: Any = None, nan_policy: str = DEFAULT_NAN_POLICY,
             keep_frames: bool | str = True, prefix: str | None = None) -> ImportedCorpus:
        """See `read`; `loaded` is the object detect() accepted, so the pickle is read once."""
        return read(path, dataset, loaded=loaded, nan_policy=nan_policy, keep_frames=keep_frames, prefix=prefix)


# --- detection ------------------------------------------------------------------------------------------


def _structure_problem(obj: Any) -> str | None:
    """None if `obj` is an MMSA dict of splits, else why not (for the error message)."""
    if not isinstance(obj, Mapping):
        return f"the file holds a {type(obj).__name__}, not a dict of splits"
    splits = [k for k in obj if k in SPLIT_KEYS]
    if not splits:
        return f"no train/valid/test key at the top level (keys: {sorted(map(str, obj))[:8]})"
    for key in splits:
        split = obj[key]
        if not isinstance(split, Mapping):
            return f"split {key!r} holds a {type(split).__name__}, not a dict of arrays"
        missing = [k for k in REQUIRED_KEYS if k not in split]
        if missing:
            return f"split {key!r} has no {', '.join(missing)}"
        if not any(m in split for m in MODALITIES):
            return f"split {key!r} has none of text, audio, vision"
        n = len(split["id"])
        for k in (*MODALITIES, "regression_labels", "raw_text", *LENGTH_KEYS.values()):
            if k in split and len(split[k]) != n:
                return f"split {key!r}: {k} has {len(split[k])} rows but id has {n}"
        for m in MODALITIES:
            if m in split and np.ndim(split[m]) != 3:
                return f"split {key!r}: {m} has shape {np.shape(split[m])}, not (samples, frames, dim)"
    return None


# --- reading --------------------------------------------------------------------------------------------
def read(path: str | Path, dataset: str, *, loaded: Any = None, nan_policy: str = DEFAULT_NAN_POLICY,
         keep_frames: bool | str = True, prefix: str | None = None) -> ImportedCorpus:
    """Read an MMSA pickle into an ImportedCorpus for `dataset` (mosi, mosei, sims ...).

    nan_policy: zero | mask | error (nonfinite.py). keep_frames: store the real frames with the vectors.
    prefix: feature-set names are ``<prefix>-text`` etc. [default: "mmsa" or "mmsa-aligned"].
    """
    path = Path(path)
    obj = _load(path) if loaded is None else loaded
    corpus = from_object(obj, dataset, source=path, nan_policy=nan_policy, keep_frames=keep_frames_option(keep_frames),
                         prefix=prefix)
    corpus.provenance["sources"] = [{**source_record(path), "role": "features and labels"}]
    return corpus


def _load(path: Path) -> Any:
    """The restricted unpickler: never pickle.load on a downloaded file."""
    if not path.is_file():
        raise ManifestError("file not found", file=str(path), fix="pass the path of aligned_50.pkl / unaligned_50.pkl")
    return safe_pickle.load(path)


def from_object(obj: Any, dataset: str, *, source: str | Path, nan_policy: str = DEFAULT_NAN_POLICY,
                keep_frames: bool = True, prefix: str | None = None) -> ImportedCorpus:
    """Turn an already unpickled MMSA dict into an ImportedCorpus (`source` names the file in messages)."""
    file = str(source)
    dataset = dataset.strip().lower()
    check_policy(nan_policy, f"{file} (nan_policy)")
    problem = _structure_problem(obj)
    if problem is not None:
        raise ManifestError(f"not an MMSA pickle: {problem}", file=file,
                            fix="pass MMSA's aligned_50.pkl / unaligned_50.pkl (a dict of train/valid/test "
                                "splits), or the importer of this file's family")
    splits = {SPLIT_KEYS[k]: obj[k] for k in SPLIT_KEYS if k in obj}
    samples = _samples(splits, file)
    videos = [v for v, _, _, _ in samples]
    check_videos_belong(dataset, videos, file, "MMSA pickle")
    findings: list[Finding] = []
    dialogues, order = _dialogues(samples, file)
    _fill_labels_and_text(dialogues, splits)
    aligned = _is_aligned(splits)
    prefix = prefix or (f"{FAMILY}-aligned" if aligned else FAMILY)
    features, lengths_rule, reports = [], {}, []
    for key, modality in MODALITIES.items():
        if not all(key in s for s in splits.values()):
            continue
        feats, rule, report = _modality(key, modality, splits, order, dialogues, prefix, file, nan_policy,
                                        keep_frames)
        features.append(feats)
        lengths_rule[modality] = rule
        reports.append(report)
    for report in reports:
        report.raise_if_error("nan_policy=")
        if (f := report.finding()) is not None:
            findings.append(f)
    split_policy = _compare_splits(dataset, dialogues, file, findings)
    manifest = Manifest(
        name=dataset, root=str(Path(file).parent), dialogues=dialogues, findings=findings,
        label_spaces=label_spaces(dataset, emotions=False),
        policies={"source": {"family": FAMILY, "file": file, "aligned": aligned},
                  "ids": ID_RULE, "ordering": ORDER_RULE, "speaker": SPEAKER_RULE,
                  "splits": split_policy, "labels": {"sentiment": "regression_labels, regression in [-3, 3]"}})
    manifest.validate()
    ignored = sorted({str(k) for s in splits.values() for k in s} - KNOWN_KEYS)
    dims = {f.modality: int(next(iter(f.pooled.values())).shape[1]) for f in features if f.pooled}
    provenance = {
        "family": FAMILY,
        "layout": "aligned: every modality on the text's steps" if aligned else "unaligned: frames with lengths",
        "description": f"MMSA processed pickle ({'aligned' if aligned else 'unaligned'}), "
                       f"{sum(len(d) for d in dialogues)} segments of {len(dialogues)} videos",
        "aligned": aligned,
        "sources": [],  # read() fills in the file and its SHA-256
        "feature_sets": {f.name: {"modality": f.modality, "dim": dims.get(f.modality), "frames": keep_frames,
                                  "lengths": lengths_rule[f.modality]} for f in features},
        "dims": dims,
        "label_map": {"sentiment": {"regression_labels": "regression in [-3, 3]"}},
        "dev_split": "official",
        "split_map": {k: v for k, v in SPLIT_KEYS.items() if k in obj},
        "ids": ID_RULE,
        "nan_policy": nan_policy,
        "nonfinite": [r.to_dict() for r in reports if r.total],
        "notes": [str(f) for f in findings],
        "has_config": "config" in obj,
        "ignored_keys": ignored,
    }
    # a dataset the store already holds (the raw adapter's, or a .csd import's) gets these features on its
    # utterances (attach.py): by id / alias, else by segment order checked by the sentiment labels
    return ImportedCorpus(manifest=manifest, features=features, provenance=provenance, attach="if-stored")


# --- samples and dialogues ------------------------------------------------------------------------------
Sample = tuple[str, str, str, int]  # video, clip, split, row in that split


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        return _text(value.item())
    return str(value)


def _samples(splits: dict[str, Mapping], file: str) -> list[Sample]:
    out: list[Sample] = []
    seen: dict[tuple[str, str], str] = {}
    for split, data in splits.items():
        for i, raw in enumerate(data["id"]):
            text = _text(raw).strip()
            video, sep, clip = text.rpartition(ID_SEPARATOR)
            if not sep or not video or not clip:
                raise ManifestError(f"sample {i} of split {split!r} has id {text!r}, not '<video_id>$_$<clip_id>'",
                                    file=file, fix="pass an MMSA pickle written by MMSA / MMSA-FET")
            if (video, clip) in seen:
                raise ManifestError(f"segment {text!r} appears twice (in {seen[(video, clip)]} and {split})", file=file,
                                    fix="the file is damaged or hand-edited; download it again")
            seen[(video, clip)] = split
            out.append((video, clip, split, i))
    return out


def _dialogues(samples: list[Sample], file: str) -> tuple[list[Dialogue], dict[str, list[tuple[str, int]]]]:
    """Dialogues (videos) with ordered utterances, and dialogue id -> [(split, row)] in utterance order."""
    by_video: dict[str, list[Sample]] = {}
    for s in samples:
        by_video.setdefault(s[0], []).append(s)
    dialogues: dict[str, list[Dialogue]] = {"train": [], "dev": [], "test": []}
    order: dict[str, list[tuple[str, int]]] = {}
    for video, segs in by_video.items():
        splits = sorted({s[2] for s in segs})
        if len(splits) > 1:
            raise ManifestError(f"video {video!r} has segments in several splits ({', '.join(splits)})", file=file,
                                fix="a video is one dialogue and must sit in one split; use a file split by video "
                                    "(the MMSA releases are)")
        segs = sorted(segs, key=lambda s: clip_order_key(s[1]))
        order[video] = [(s[2], s[3]) for s in segs]
        dialogues[splits[0]].append(Dialogue(id=video, split=splits[0], utterances=[
            Utterance(id=utterance_id(video, clip), dialogue_id=video, speaker=video, text="", split=split,
                      source_file=file, source_row=row, aliases=(f"{video}{ID_SEPARATOR}{clip}",))
            for _, clip, split, row in segs]))
    return [d for s in ("train", "dev", "test") for d in dialogues[s]], order


def _fill_labels_and_text(dialogues: list[Dialogue], splits: dict[str, Mapping]) -> None:
    """Sentiment from regression_labels and text from raw_text, per utterance (rows via source_row)."""
    for d in dialogues:
        for u in d.utterances:
            data = splits[u.split]
            value = float(np.asarray(data["regression_labels"][u.source_row]).reshape(-1)[0])
            u.labels = {"sentiment": value}
            if "raw_text" in data:
                u.text = _text(data["raw_text"][u.source_row]).strip()


def _is_aligned(splits: dict[str, Mapping]) -> bool:
    """Aligned files carry no frame lengths and give every modality the same number of steps."""
    any_split = next(iter(splits.values()))
    if any(k in any_split for k in LENGTH_KEYS.values()):
        return False
    steps = {np.shape(any_split[m])[1] for m in MODALITIES if m in any_split}
    return len(steps) == 1


# --- features -------------------------------------------------------------------------------------------
def _lengths(key: str, data: Mapping, arr: np.ndarray) -> tuple[np.ndarray, str, np.ndarray | None]:
    """(start, end) frame index per sample, the rule used, and an optional per-frame mask (text_bert)."""
    n, steps = arr.shape[0], arr.shape[1]
    if key in LENGTH_KEYS and LENGTH_KEYS[key] in data:
        ends = np.clip(np.asarray(data[LENGTH_KEYS[key]]).reshape(n).astype(np.int64), 0, steps)
        return np.stack([np.zeros(n, np.int64), ends], 1), LENGTH_KEYS[key], None
    if key == "text" and "text_bert" in data and np.shape(data["text_bert"])[1:] == (3, steps):
        mask = np.asarray(data["text_bert"])[:, 1, :] > 0.5
        return np.stack([np.zeros(n, np.int64), mask.sum(1)], 1), "text_bert attention mask (row 1)", mask
    nonzero = np.any(np.asarray(arr) != 0, axis=2)  # [n, steps]
    first = np.where(nonzero.any(1), nonzero.argmax(1), 0)
    last = np.where(nonzero.any(1), steps - nonzero[:, ::-1].argmax(1), 0)
    return np.stack([first, last], 1), "no lengths in the file: all-zero frames at either end are padding", None


def _modality(key: str, modality: str, splits: dict[str, Mapping], order: dict[str, list[tuple[str, int]]],
              dialogues: list[Dialogue], prefix: str, file: str, nan_policy: str,
              keep_frames: bool) -> tuple[ImportedFeatures, str, NonFiniteReport]:
    report = NonFiniteReport(file=file, policy=nan_policy, array=key)
    spans, masks, rule = {}, {}, ""
    dims = set()
    for split, data in splits.items():
        arr = data[key]
        dims.add(int(np.shape(arr)[2]))
        spans[split], rule, masks[split] = _lengths(key, data, arr)
    if len(dims) != 1:
        raise ManifestError(f"{key} has different widths across splits: {sorted(dims)}", file=file,
                            fix="the file is not one consistent MMSA release; download it again")
    dim = dims.pop()
    per_dialogue: dict[str, list[np.ndarray | None]] = {}
    usable: dict[str, list[bool]] = {}
    for d in dialogues:
        frames_list, ok_list = [], []
        for u, (split, row) in zip(d.utterances, order[d.id], strict=True):
            start, end = spans[split][row]
            x = np.asarray(splits[split][key][row], dtype=np.float32)
            x = x[masks[split][row]] if masks[split] is not None else x[start:end]
            x, ok = report.apply(u.id, x)
            frames_list.append(x)
            ok_list.append(ok)
        per_dialogue[d.id] = frames_list
        usable[d.id] = ok_list
    description = {"text": "BERT token features (MMSA)", "audio": "COVAREP / librosa frames (MMSA)",
                   "vision": "FACET / OpenFace frames (MMSA)"}[key]
    feats = pack(f"{prefix}-{modality}", modality, per_dialogue, dim, keep_frames=keep_frames, usable=usable,
                 description=f"{description}, {dim}-d; pooled = mean over the real frames ({rule})")
    feats.policies = {"nonfinite": nan_policy, "nonfinite_values": report.total, "frame_lengths": rule}
    return feats, rule, report


def _compare_splits(dataset: str, dialogues: list[Dialogue], file: str, findings: list[Finding]) -> dict:
    """The file's splits are used as they are ("official"); compared with the standard folds if shipped."""
    policy: dict = {"rule": "the file's train/valid/test (valid -> dev)", "dev_split": "official"}
    try:
        folds = load_folds(dataset)
    except ManifestError:
        return policy
    differ = [(d.id, d.split, folds.split_of(d.id)) for d in dialogues if folds.split_of(d.id) != d.split]
    policy["standard_folds"] = {"compared_with": folds.describe(),
                                "videos_differing": {v: {"file": a, "standard": b} for v, a, b in differ}}
    if differ:
        shown = ", ".join(f"{v} ({a} here, {b or 'no fold'} in the standard folds)" for v, a, b in differ[:5])
        findings.append(Finding(file=file, problem=f"{len(differ)} video(s) differ from the {dataset} standard "
                                                   f"folds: {shown}",
                                fix="numbers on these splits are not comparable with the standard protocol"))
    return policy
