"""COSMIC's COMET features ``*_features_comet.pkl`` (formats.md F) -> feature sets added onto a stored dataset.

The file is a tuple of 9 dicts, in COSMIC's order xIntent, xAttr, xNeed, xWant, xEffect, xReact, oWant,
oEffect, oReact, each mapping a dialogue id to one vector per utterance (widths unverified: any width is
accepted, the same for all nine). It carries no labels, speakers or splits, so it cannot make a manifest:
it is imported onto a dataset already in the store (from the matching COSMIC roberta pickle, or extracted)
and must match it exactly, dialogue by dialogue and utterance count by utterance count; otherwise nothing is
written and the first mismatching dialogue is named (attach.py, rule "position").

Nine feature sets ``comet-xintent`` ... ``comet-oreact`` (modality text), not one concatenated set: COSMIC
feeds each relation to its own part of the model (the speaker's intent/effect vs the listeners' reactions),
so a head can take the ones it wants (``--features t=roberta,c=comet-xintent``), and none is 9x as wide.
MELD files use COSMIC's integer dialogue keys (train id, 1039 + dev id, 1153 + test id): they are mapped to
the official ids as the ERC importer does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from merc.data_manifests.errors import ManifestError
from merc.data_manifests.manifest import Dialogue, Manifest, Utterance

from . import IMPORTERS, safe_pickle
from .base import ImportedCorpus, ImportedFeatures, source_record
from .erc_layouts import kind
from .erc_pickle import MELD_DEV_BASE, MELD_TEST_BASE

FAMILY = "cosmic-comet"
RELATIONS = ("xIntent", "xAttr", "xNeed", "xWant", "xEffect", "xReact", "oWant", "oEffect", "oReact")


class CometError(ManifestError):
    """A COMET feature file cannot be read or does not match the stored dataset."""


@IMPORTERS.register(FAMILY, "COSMIC COMET features *_features_comet.pkl: 9 per-dialogue dicts, onto a stored dataset")
class CometImporter:
    """The registry's face of this module (detect / read, see extract/importers/__init__.py)."""

    def detect(self, obj_or_path: Any) -> bool:
        """Nine dicts of per-utterance vectors sharing their dialogue keys and one width."""
        if not isinstance(obj_or_path, (tuple, list)) or len(obj_or_path) != len(RELATIONS):
            return False
        if not all(isinstance(d, dict) and d and kind(d) == "vec" for d in obj_or_path):
            return False
        keys = set(obj_or_path[0])
        return all(set(d) == keys for d in obj_or_path[1:]) and len({_width(d) for d in obj_or_path}) == 1

    def read(self, path: str | Path, dataset: str, *, loaded: Any = None) -> ImportedCorpus:
        path = Path(path)
        obj = safe_pickle.load(path) if loaded is None else loaded
        if not self.detect(obj):
            raise CometError("not a COSMIC COMET feature file (9 dicts of per-utterance vectors sharing their keys)",
                             file=str(path), fix="pass COSMIC's iemocap_features_comet.pkl / meld_features_comet.pkl")
        corpus = dataset.strip().lower()
        ids = {key: _dialogue_id(key, corpus, path) for key in obj[0]}
        dialogues, features = [], []
        for key, dia in ids.items():
            n = len(obj[0][key])
            dialogues.append(Dialogue(id=dia, split="train", utterances=[
                Utterance(id=f"{dia}#{i}", dialogue_id=dia, speaker="", text="", split="train") for i in range(n)]))
        for rel, values in zip(RELATIONS, obj, strict=True):
            pooled = {}
            for key, dia in ids.items():
                rows = np.asarray(values[key], dtype=np.float32)
                pooled[dia] = rows.reshape(len(rows), -1)
            features.append(ImportedFeatures(
                name=f"comet-{rel.lower()}", modality="text", pooled=pooled,
                description=f"COSMIC COMET {rel} vectors ({_width(values)}-d) per utterance"))
        manifest = Manifest(name=corpus, label_spaces={}, dialogues=dialogues, root=str(path.parent))
        provenance = {
            "family": FAMILY, "layout": "9 dicts " + ", ".join(RELATIONS),
            "description": f"COSMIC COMET features: {len(ids)} dialogues, {_width(obj[0])}-d per relation",
            "sources": [source_record(path)],
            "dialogue_ids": ("COSMIC's integer MELD keys mapped to official ids (1039.. dev, 1153.. test)"
                             if corpus == "meld" else "the file's dialogue keys"),
            "feature_sets": "one per relation: comet-" + ", comet-".join(r.lower() for r in RELATIONS),
            "notes": ["no labels, speakers or splits in the file: its vectors go onto the stored dataset's "
                      "utterances, dialogue by dialogue, in order"],
        }
        return ImportedCorpus(manifest=manifest, features=features, provenance=provenance, attach="required")


def _width(d: dict) -> int:
    first = np.asarray(next(iter(d.values())), dtype=np.float32)
    return int(first.reshape(len(first), -1).shape[1])


def _dialogue_id(key: Any, corpus: str, path: Path) -> str:
    """The store's dialogue id of a COSMIC key (MELD: integers back to official ids)."""
    if corpus != "meld":
        return str(key)
    if not (isinstance(key, (int, np.integer)) or (isinstance(key, str) and key.isdigit())):
        raise CometError(f"MELD dialogue keys are integers; this file has {key!r}", file=str(path),
                         fix="pass the --dataset the file was made for")
    k = int(key)
    if k >= MELD_TEST_BASE:
        return f"test_dia{k - MELD_TEST_BASE}"
    if k >= MELD_DEV_BASE:
        return f"dev_dia{k - MELD_DEV_BASE}"
    return f"train_dia{k}"


__all__ = ["CometImporter", "RELATIONS"]
