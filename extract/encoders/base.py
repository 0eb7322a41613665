"""What an encoder is to the extraction runner.

An encoder splits its work in two so that the expensive model never waits on I/O:
- a *preparer*: a small picklable callable that runs in worker processes and turns one utterance
  into model input (decoded 16 kHz audio, the text) - or, for cheap CPU feature sets such as
  openSMILE, straight into the final vector;
- `encode_batch`: runs the frozen model in the main process on a length-sorted batch.

Everything that determines the numbers goes into `fingerprint()`; the store refuses to mix two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from merc.data_manifests.errors import MercError
from merc.data_manifests.manifest import Utterance

FORMAT_VERSION = 1  # bump when a change in merc alters the numbers an encoder writes


@dataclass
class Prepared:
    """A worker's result for one utterance: model input (or a final vector), and its length for batching."""

    utterance_id: str
    value: Any
    length: int
    notes: list[str] = field(default_factory=list)  # e.g. "capped 600.0 s to 30 s"


@dataclass
class Encoded:
    """Model output for one utterance."""

    pooled: np.ndarray  # [D]
    frames: np.ndarray | None = None  # [n_frames, D] when frames are kept


class Preparer:
    """Picklable per-utterance input builder, run in worker processes."""

    def __call__(self, utt: Utterance) -> Prepared:  # pragma: no cover - abstract
        raise NotImplementedError


class Encoder:
    """Base class of every encoder family."""

    modality: ClassVar[str] = "text"  # text | audio | video
    final_in_preparer: ClassVar[bool] = False  # True: the preparer already returns the feature vector

    def __init__(self, name: str):
        self.name = name

    @property
    def dim(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def preparer(self) -> Preparer:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_batch(self, items: list[Prepared]) -> list[Encoded]:
        """Default for final_in_preparer encoders: the prepared values are the features."""
        return [Encoded(np.asarray(it.value, dtype=np.float32)) for it in items]

    def batch_budget(self) -> int:
        """Sum of `Prepared.length` allowed in one batch (tokens or samples)."""
        return 1 << 30

    def fingerprint(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def info(self) -> dict:
        return {"encoder": self.name, "modality": self.modality, "dim": self.dim, "levels": ["utterance"]}


class EncoderError(MercError):
    """An encoder cannot be built (unknown name, missing weights, bad option)."""


class TextPreparer(Preparer):
    """Text needs no decoding; empty transcripts are per-utterance failures."""

    def __call__(self, utt: Utterance) -> Prepared:
        text = (utt.text or "").strip()
        if not text:
            raise MercError("empty transcript", file=utt.source_file, row=utt.source_row, utterance_id=utt.id,
                            fix="fill in the utterance text, or extract audio features only")
        return Prepared(utt.id, text, len(text))
