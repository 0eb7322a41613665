"""What an encoder is to the extraction runner.

An encoder splits its work in two so that the expensive model never waits on I/O:
- a *preparer*: a small picklable callable that runs in worker processes and turns one utterance
  into model input (decoded 16 kHz audio, the text) - or, for cheap CPU feature sets such as
  openSMILE, straight into the final vector;
- `encode_batch`: runs the frozen model in the main process on a length-sorted batch.

Everything that determines the numbers goes into `fingerprint()`; the store refuses to mix two.

Encoders that need a dialogue's context (an LLM prompt with the previous k utterances) override
`prepare_dialogue`: the runner asks it for the utterances of each dialogue before handing them one by
one to the preparer, so the context travels inside the (picklable) utterance itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from merc.data_manifests.errors import MercError
from merc.data_manifests.manifest import Dialogue, Utterance

from ..store.layout import FRAMES, UTTERANCE

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


@dataclass
class ContextUtterance(Utterance):
    """An utterance plus the (speaker, text) of the utterances before it in its dialogue, oldest first."""

    context: tuple[tuple[str, str], ...] = ()


class Preparer:
    """Picklable per-utterance input builder, run in worker processes."""

    def __call__(self, utt: Utterance) -> Prepared:  # pragma: no cover - abstract
        raise NotImplementedError


class Encoder:
    """Base class of every encoder family."""

    modality: ClassVar[str] = "text"  # text | audio | video
    final_in_preparer: ClassVar[bool] = False  # True: the preparer already returns the feature vector
    keep_frames: bool = False  # also return frame/token sequences (Encoded.frames); set by the runner
    # Storage dtype in the Zarr store. float16 halves the store and is exact enough for neural embeddings;
    # encoders whose values reach past 65504 (openSMILE ComParE: ~1e11) store float32.
    store_dtype: str = "float16"

    def __init__(self, name: str):
        self.name = name

    @property
    def device(self) -> str:
        """Where the model runs ("cpu", "cuda", "cuda:1"); model families keep it in their options."""
        return str(getattr(getattr(self, "opts", None), "device", "cpu"))

    def prepare_dialogue(self, dialogue: Dialogue) -> list[Utterance]:
        """The utterances the preparer receives for this dialogue (hook for context-aware encoders)."""
        return dialogue.utterances

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

    @property
    def inputs(self) -> tuple[str, ...]:
        """What the encoder reads of an utterance (store layout INPUT_FIELDS): a feature is redone exactly
        when one of these changes for its dialogue, and never for a label, split or speaker-name fix."""
        return ("text",) if self.modality == "text" else ("media",)

    def info(self) -> dict:
        levels = [UTTERANCE, FRAMES] if self.keep_frames else [UTTERANCE]
        return {"encoder": self.name, "modality": self.modality, "dim": self.dim, "levels": levels,
                "dtype": self.store_dtype, "inputs": list(self.inputs)}


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
