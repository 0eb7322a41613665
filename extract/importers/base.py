"""What every importer produces, and the one function that writes it into a store.

An importer reads a file the community already has (a legacy ERC pickle, an MMSA pickle, CMU-MultimodalSDK
`.csd` files, a COSMIC text pickle) and returns an `ImportedCorpus`: a Manifest (dialogues of utterances with
labels, splits and speakers, exactly like a corpus adapter's) plus zero or more feature sets, each with its
per-dialogue arrays, plus provenance. `write_import` commits it through the same StoreWriter as an extraction,
so an import is checksummed, verified and read by the heads exactly like extracted features.

Importers recognise a file's family by its structure (tuple length, value shapes), never by its name, and read
pickles only through `safe_pickle.load` (never `pickle.load`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from merc.data_manifests.manifest import Manifest


@dataclass
class ImportedFeatures:
    """One feature set of an imported file, e.g. the 100-d text vectors of a DialogueRNN pickle."""

    name: str  # feature-set name in the store, e.g. "dialoguernn-text"
    modality: str  # "text" | "audio" | "video"
    pooled: dict[str, np.ndarray]  # dialogue id -> [n_utterances, D] float32, rows in the manifest's order
    frames: dict[str, tuple[np.ndarray, np.ndarray]] | None = None  # dialogue id -> (frames [F, D], offsets [n+1])
    valid: dict[str, np.ndarray] | None = None  # dialogue id -> [n_utterances] bool; None = all valid
    description: str = ""  # what the vectors are, as the family's documentation says (formats.md F)
    # how the importer changed values (e.g. {"nonfinite": "zero", "values": 12}): part of the feature set's
    # fingerprint, since the stored numbers depend on it
    policies: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImportedCorpus:
    manifest: Manifest
    features: list[ImportedFeatures] = field(default_factory=list)  # empty: a manifest only (text pickles)
    # source file(s) and SHA-256, family detected, label map, how the dev split was made (official | first 10 % |
    # none), policies applied (e.g. -inf/NaN handling); shown by `merc-extract status`. Keys write_import reads:
    #   "family": str (required)               the family detected, e.g. "dialoguegcn-iemocap"
    #   "sources": [source_record(path), ...]  (required) every file read, with its SHA-256
    #   "dev_split": str                       how the dev split was made, e.g. "official", "first 10 %", "none"
    #   "label_map": {space: {index: class}}   the file's label indices
    # anything else JSON-able is kept as it is.
    provenance: dict[str, Any] = field(default_factory=dict)
    # whether the features may go onto a dataset the store already holds (attach.py):
    #   "no"        the import brings its corpus description; another one in the store is refused (ERC pickles)
    #   "if-stored" MOSI/MOSEI files: when the store holds the dataset with another description, the features are
    #               placed on its utterances (by id or alias, else by segment order verified by the sentiment labels)
    #   "required"  files with no labels or splits (COSMIC COMET): `manifest` is provisional (dialogues and counts
    #               only) and must match the stored one dialogue by dialogue
    attach: str = "no"


def sha256_of(path: str | Path) -> str:
    from merc.extract.store.files import sha256_file

    return sha256_file(path)


def source_record(path: str | Path) -> dict[str, Any]:
    """Where an import came from, for `ImportedCorpus.provenance["sources"]`: path, size and SHA-256."""
    path = Path(path)
    return {"file": str(path.resolve()), "bytes": path.stat().st_size, "sha256": sha256_of(path)}
