"""Per-utterance frame sequences of unequal length -> one ImportedFeatures (pooled + frames + offsets).

MOSI/MOSEI releases ship sequences, not vectors: MMSA pickles pad every segment to 50/500/375 frames and
give the real lengths, `.csd` files hold one row per frame. Heads need both levels: an utterance vector
(pooled = the mean over the real frames only, so padding never dilutes it) and, for MMoLRE-style heads,
the frames themselves in the store's packed form (frames [F, D] + offsets [n_utterances + 1]).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from merc.data_manifests.errors import ManifestError

from .base import ImportedFeatures

Frames = np.ndarray | None  # [L, D] real frames of one utterance (L may be 0), or None: no data


def pack(name: str, modality: str, dialogues: Mapping[str, Sequence[Frames]], dim: int, *,
         keep_frames: bool = True, usable: Mapping[str, Sequence[bool]] | None = None,
         description: str = "") -> ImportedFeatures:
    """Build an ImportedFeatures from dialogue id -> one frame array per utterance (manifest order).

    An utterance with no frames (None or L = 0), or marked unusable, gets a zero vector with valid = False.
    """
    pooled: dict[str, np.ndarray] = {}
    valid: dict[str, np.ndarray] = {}
    frames: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for dia, utts in dialogues.items():
        flags = usable.get(dia) if usable else None
        vecs = np.zeros((len(utts), dim), np.float32)
        ok = np.zeros(len(utts), bool)
        kept: list[np.ndarray] = []
        lengths = np.zeros(len(utts), np.int64)
        for i, x in enumerate(utts):
            if x is None or len(x) == 0 or (flags is not None and not flags[i]):
                continue
            x = np.asarray(x, np.float32).reshape(len(x), dim)
            vecs[i] = x.mean(axis=0)
            ok[i] = True
            kept.append(x)
            lengths[i] = len(x)
        pooled[dia] = vecs
        valid[dia] = ok
        if keep_frames:
            data = np.concatenate(kept) if kept else np.zeros((0, dim), np.float32)
            frames[dia] = (data, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    return ImportedFeatures(name=name, modality=modality, pooled=pooled, frames=frames if keep_frames else None,
                            valid=valid, description=description)


def keep_frames_option(value: bool | str) -> bool:
    """The keep_frames option; `--option keep_frames=false` arrives as text."""
    if isinstance(value, str):
        word = value.strip().lower()
        if word not in ("1", "0", "true", "false", "yes", "no"):
            raise ManifestError(f"{value!r} is not true or false", file="--option keep_frames",
                                fix="write keep_frames=true or keep_frames=false")
        return word in ("1", "true", "yes")
    return bool(value)
