"""The store's vocabulary: the one place that names what the writer (stage 1) and the readers (stage 2,
verify, anything that opens the Zarr files) agree on.

    cache.zarr/                        attrs: merc_store_format
      <dataset>/                       attrs: manifest (name, root, label spaces, policies, findings),
                                              manifest_digest, manifest_checksums, n_utterances, n_dialogues
        manifest/                      the utterance table, one 1-D column per field (see table.py)
        <feature_set>/                 attrs: encoder, fingerprint, fingerprint_hash, dim, dtype, modality,
                                              levels, inputs, report
          <dialogue_key>/              attrs: dialogue_id, n_utt, failures, inputs, checksums, complete
            pooled   [n_utt, D]        float16 (float32 for openSMILE or --store-dtype float32)
            valid    [n_utt]           bool, False where the utterance was skipped
            frames   [n_frames, D]     level "frames" only (--keep-frames)
            offsets  [n_utt + 1]       int64 row offsets of each utterance in frames
          packed/                      attrs: members, checksums, complete
            pooled [N, D], valid [N], dialogue_offsets [n_dialogues + 1]

A dialogue is committed when its group's `complete` attribute is true; that zarr.json is replaced
atomically, after every array file is written. `checksums` holds the SHA-256 of every file of the
dialogue's arrays (metadata and chunks), so a missing, truncated or overwritten chunk is found, never
read as zarr's fill value. `inputs` is the digest of what the encoder read of the dialogue's
utterances (see `dialogue_inputs`): a label, split or speaker-name fix leaves it unchanged, so it
never costs a re-extraction; a changed text or clip makes exactly that dialogue stale.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable

import numpy as np

from merc.data_manifests.errors import MercError
from merc.data_manifests.manifest import Dialogue

STORE_FORMAT = 2  # 2: per-dialogue checksums and input digests, the manifest stored once (as columns)
STORE_DTYPES = ("float16", "float32")
FLOAT16_MAX = float(np.finfo(np.float16).max)

# -- levels: what a feature set holds per utterance ----------------------------------------------------
UTTERANCE = "utterance"  # one pooled vector per utterance (always)
FRAMES = "frames"  # the frame/token sequence of each utterance (--keep-frames)
LEVELS = (UTTERANCE, FRAMES)
_LEVEL_ALIASES = {"frame": FRAMES, "utterance": UTTERANCE, "frames": FRAMES}  # stores of merc <= 0.1 said "frame"

# -- array and group names -----------------------------------------------------------------------------
POOLED, VALID, FRAME_DATA, OFFSETS = "pooled", "valid", "frames", "offsets"
UTTERANCE_ARRAYS = (POOLED, VALID)
FRAME_ARRAYS = (FRAME_DATA, OFFSETS)
PACKED = "packed"
DIALOGUE_OFFSETS = "dialogue_offsets"
MANIFEST = "manifest"
RESERVED_NAMES = (PACKED, MANIFEST)

# -- modality roles of stage 2 --------------------------------------------------------------------------
ROLES = ("t", "a", "v")
MODALITY_OF_ROLE = {"t": "text", "a": "audio", "v": "video"}
ROLE_OF_MODALITY = {m: r for r, m in MODALITY_OF_ROLE.items()}

# -- what an encoder reads of an utterance (its feature-set attrs say which) -----------------------------
INPUT_FIELDS = ("text", "speaker", "media")  # media = the clip's content digest and its time span

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class StoreError(MercError):
    """The store is missing something asked for, holds something damaged, or cannot be written."""


def normalize_levels(levels: Iterable[str]) -> list[str]:
    """Levels in this vocabulary, whatever spelling the store recorded."""
    return [_LEVEL_ALIASES.get(level, level) for level in levels]


def dialogue_key(dialogue_id: str) -> str:
    """A Zarr-safe node name for a dialogue id (ids stay exact in the group's attrs)."""
    key = _KEY_UNSAFE.sub("_", dialogue_id)
    if key.startswith("__") or key in {"", ".", ".."} or key in RESERVED_NAMES:
        key = "d_" + key
    if key != dialogue_id:
        key += "-" + hashlib.sha1(dialogue_id.encode()).hexdigest()[:6]
    return key


def fingerprint_hash(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def check_inputs(fields: Iterable[str]) -> tuple[str, ...]:
    fields = tuple(fields)
    unknown = [f for f in fields if f not in INPUT_FIELDS]
    if unknown or not fields:
        raise ValueError(f"encoder inputs {fields} must be a non-empty subset of {INPUT_FIELDS}")
    return tuple(f for f in INPUT_FIELDS if f in fields)


def utterance_inputs(fields: tuple[str, ...], utterance_id: str, text: str | None, speaker: str | None,
                     media_digest: str | None, start: float | None, end: float | None) -> list:
    """What an encoder that reads `fields` sees of one utterance (the id always: rows are keyed by it)."""
    row: list = [utterance_id]
    if "text" in fields:
        row.append(text or "")
    if "speaker" in fields:
        row.append(speaker or "")
    if "media" in fields:
        row.extend([media_digest or "", _time(start), _time(end)])
    return row


def dialogue_inputs(dialogue: Dialogue, fields: tuple[str, ...]) -> str:
    """Digest of everything an encoder reading `fields` sees of a dialogue, utterances in order."""
    rows = [utterance_inputs(fields, u.id, u.text, u.speaker, u.media_digest, u.start, u.end)
            for u in dialogue.utterances]
    return inputs_digest(dialogue.id, rows)


def inputs_digest(dialogue_id: str, rows: list[list]) -> str:
    return hashlib.sha256(json.dumps([dialogue_id, rows], ensure_ascii=False).encode()).hexdigest()[:32]


def _time(value: float | None) -> float | None:
    if value is None or (isinstance(value, float) and value != value):  # NaN = no span, as the table stores it
        return None
    return round(float(value), 6)


def default_inputs(modality: str) -> tuple[str, ...]:
    """What an encoder of a modality reads when it does not say: the text, or the clip."""
    return ("text",) if modality == "text" else ("media",)


def feature_inputs(attrs: dict) -> tuple[str, ...]:
    """The input fields a feature set's encoder read, from its attributes."""
    return check_inputs(attrs.get("inputs") or default_inputs(attrs.get("modality", "")))


def members_digest(members: list[tuple[str, dict]]) -> str:
    """Names the exact dialogue arrays a packed copy was made from: ids in order + their pooled/valid checksums."""
    rows = [[i, {k: v for k, v in sorted(c.items()) if k.split("/")[0] in (POOLED, VALID)}] for i, c in members]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:32]


def check_format(path, attrs: dict) -> None:
    """A store written by another merc store format is refused, saying what to do."""
    fmt = attrs.get("merc_store_format")
    if fmt != STORE_FORMAT:
        raise StoreError(f"the store has format {fmt}, this merc reads format {STORE_FORMAT} (format 2 added "
                         "checksums and per-dialogue input digests)", file=str(path),
                         fix="extract into a new store (another --store path); the old one stays readable by the "
                             "merc that wrote it")


def finite_abs_max(values: np.ndarray) -> float:
    """The largest |value| among the finite ones (0 if none): two reductions, no copy unless NaN/inf are present."""
    if values.size == 0:
        return 0.0
    lo, hi = float(values.min()), float(values.max())  # a NaN or inf makes them non-finite
    if not (np.isfinite(lo) and np.isfinite(hi)):
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    return max(-lo, hi)
