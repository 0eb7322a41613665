"""`write_import`: commit an `ImportedCorpus` into a store exactly as an extraction commits features.

A file of a second family for a dataset the store already holds (MOSI/MOSEI from MMSA and from `.csd`, COSMIC's
COMET vectors) is placed on the stored utterances instead (attach.py): the stored description is kept.

Everything is checked BEFORE the first byte is written (the manifest validates, every feature set has
every dialogue with one finite row per utterance and one width, the store holds nothing this import would
silently replace), so a wrong file leaves the store as it was. Then the manifest table and each feature
set go through the same `StoreWriter` as `merc-extract`: per dialogue, checksummed, committed with a
marker written last. A killed import therefore resumes like a killed extraction: rerun it, committed
dialogues are kept and the rest are written.

A feature set's fingerprint is the family and the SHA-256 of every source file (plus any value policy the
importer applied), so importing another file under the same name is a different feature set: refused
unless `overwrite`. Its info carries the provenance, which `merc-extract status` prints.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from merc.data_manifests.errors import ManifestError
from merc.data_manifests.manifest import Manifest

from ..store.files import read_attrs
from ..store.layout import FLOAT16_MAX, FRAMES, RESERVED_NAMES, UTTERANCE, fingerprint_hash, finite_abs_max
from ..store.writer import StoreWriter, check_writable
from .attach import attach, needs_attach
from .base import ImportedCorpus, ImportedFeatures

IMPORT_FORMAT = 1  # bump when the way imported numbers are stored changes
MODALITIES = ("text", "audio", "video")
IMPORT_INPUTS = ["media"]  # an imported row is keyed by its utterance id (the file's hash is in the fingerprint)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ImportValidationError(ManifestError):
    """An imported corpus is inconsistent, or the store holds something the import would replace."""


def write_import(store: str | Path, corpus: ImportedCorpus, dataset: str, *, overwrite: bool = False) -> dict:
    """Validate `corpus` completely, then write its manifest and feature sets into `store` as `dataset`.

    Returns a summary: {"store", "dataset", "family", "dialogues", "utterances", "feature_sets": [{name,
    dim, modality, levels, dtype, written, kept}], "notes": [...], "provenance": {...}}.
    """
    store = Path(store)
    check_writable(store)
    attached = None
    if needs_attach(store, dataset, corpus, overwrite):  # features onto the stored utterances (attach.py)
        corpus, attached = attach(store, dataset, corpus)
    manifest = corpus.manifest
    provenance = _provenance(corpus)
    where = _where(provenance)
    _check_dataset_name(dataset, where)
    manifest.validate()
    plans = [_plan_features(fs, manifest, provenance, where) for fs in corpus.features]
    _check_unique([p["fs"].name for p in plans], where)
    _check_store(store, dataset, manifest, plans, overwrite, attached=attached is not None)
    source = {"adapter": "import", "options": {"family": provenance["family"],
                                               "files": [s.get("file") for s in provenance["sources"]],
                                               "sha256": [s.get("sha256") for s in provenance["sources"]]}}
    if attached is None:
        manifest.policies = {**manifest.policies, "import": provenance}
        notes = StoreWriter(store, dataset, "-").open_dataset(manifest, source=source)
    else:  # the stored description stays (its source and provenance); only new aliases are written
        kept = (read_attrs(store / dataset) or {}).get("source")
        notes = StoreWriter(store, dataset, "-").open_dataset(manifest, source=kept) + attached.lines(dataset)
    summaries = [_write_feature_set(store, dataset, manifest, p, source, overwrite, notes) for p in plans]
    return {"store": str(store), "dataset": dataset, "family": provenance["family"],
            "dialogues": len(manifest.dialogues), "utterances": manifest.n_utterances,
            "feature_sets": summaries, "notes": notes, "provenance": provenance,
            "attached": attached.to_dict() if attached is not None else None}


# ---------------------------------------------------------------------------------------------------
# checks (nothing is written until all of them pass)
# ---------------------------------------------------------------------------------------------------

def _provenance(corpus: ImportedCorpus) -> dict[str, Any]:
    prov = dict(corpus.provenance)
    if not prov.get("family"):
        raise ImportValidationError("the importer recorded no family in the provenance", file="write_import",
                                    fix='set ImportedCorpus.provenance["family"]')
    sources = prov.get("sources")
    if not sources or not all(isinstance(s, dict) and s.get("sha256") for s in sources):
        raise ImportValidationError("the importer recorded no source file with its SHA-256", file="write_import",
                                    fix='set provenance["sources"] = [source_record(path), ...]')
    return json.loads(json.dumps(prov, default=_jsonable))  # what the store's JSON attributes will hold


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def _where(provenance: dict) -> str:
    return ", ".join(str(s.get("file")) for s in provenance["sources"])


def _check_dataset_name(dataset: str, where: str) -> None:
    if not _NAME_RE.match(dataset or "") or dataset in RESERVED_NAMES:
        raise ImportValidationError(f"{dataset!r} cannot name a dataset in the store", file=where,
                                    fix="use letters, digits, '.', '_' or '-' (e.g. iemocap-cosmic)")


def _check_unique(names: list[str], where: str) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise ImportValidationError(f"two feature sets are both named {n!r}", file=where,
                                        fix="the importer must give every feature set its own name")
        seen.add(n)


def _plan_features(fs: ImportedFeatures, manifest: Manifest, provenance: dict, where: str) -> dict:
    """Check one feature set against the manifest; returns what writing it needs (fingerprint, info)."""
    what = f"feature set {fs.name!r}"
    if not _NAME_RE.match(fs.name) or fs.name in RESERVED_NAMES:
        raise ImportValidationError(f"{what}: not a valid feature-set name", file=where,
                                    fix="use letters, digits, '.', '_' or '-'")
    if fs.modality not in MODALITIES:
        raise ImportValidationError(f"{what}: modality {fs.modality!r} is not one of {', '.join(MODALITIES)}", file=where,
                                    fix="set ImportedFeatures.modality to text, audio or video")
    ids = [d.id for d in manifest.dialogues]
    missing = [i for i in ids if i not in fs.pooled]
    extra = sorted(set(fs.pooled) - set(ids))
    if missing or extra:
        parts = ([f"{len(missing)} dialogue(s) of the manifest have no rows (first: {missing[0]})"] if missing else []) \
            + ([f"{len(extra)} dialogue(s) are not in the manifest (first: {extra[0]})"] if extra else [])
        raise ImportValidationError(f"{what}: {'; '.join(parts)}", file=where,
                                    fix="the file is incomplete or mixes two corpora: import the original file")
    dim, peak = None, 0.0
    for d in manifest.dialogues:
        pooled = np.asarray(fs.pooled[d.id])
        here = f"{what}, dialogue {d.id!r}"
        if pooled.ndim != 2 or pooled.shape[0] != len(d) or pooled.dtype.kind not in "fiub":
            raise ImportValidationError(f"{here}: features of shape {pooled.shape} ({pooled.dtype}), the dialogue has "
                                        f"{len(d)} utterances", file=where,
                                        fix="the file is truncated or inconsistent (one row per utterance is needed)")
        if dim is None:
            dim = pooled.shape[1]
        elif pooled.shape[1] != dim:
            raise ImportValidationError(f"{here}: width {pooled.shape[1]}, other dialogues have {dim}", file=where,
                                        fix="the file mixes feature widths; import the original file")
        valid = _valid(fs, d.id, len(d), here, where)
        if not np.isfinite(pooled[valid]).all():
            raise ImportValidationError(f"{here}: NaN or infinite values", file=where,
                                        fix="the importer must apply (and record) a policy for them, e.g. -inf -> 0 as MMSA "
                                            "does, or mark those utterances invalid")
        peak = max(peak, finite_abs_max(pooled[valid].astype(np.float32, copy=False)))
        if fs.frames is not None:
            frames = _check_frames(fs, d.id, len(d), dim, here, where)
            peak = max(peak, finite_abs_max(frames.astype(np.float32, copy=False)))
    if dim is None or dim == 0:
        raise ImportValidationError(f"{what}: no feature width (no dialogues or zero columns)", file=where,
                                    fix="import a file that holds features")
    family = provenance["family"]
    fingerprint = {"encoder": f"import:{family}", "family": family, "feature": fs.name,
                   "sources": sorted(s["sha256"] for s in provenance["sources"]),
                   "policies": json.loads(json.dumps(fs.policies, default=_jsonable)),
                   "merc_import_format": IMPORT_FORMAT}
    levels = [UTTERANCE] + ([FRAMES] if fs.frames is not None else [])
    info = {"dim": int(dim), "modality": fs.modality, "encoder": f"import:{family}", "levels": levels,
            "dtype": "float32" if peak > FLOAT16_MAX else "float16", "inputs": IMPORT_INPUTS,
            "description": fs.description, "provenance": {**provenance, "feature_policies": fingerprint["policies"]}}
    return {"fs": fs, "fingerprint": fingerprint, "info": info}


def _valid(fs: ImportedFeatures, dia: str, n: int, here: str, where: str) -> np.ndarray:
    if fs.valid is None or dia not in fs.valid:
        return np.ones(n, bool)
    valid = np.asarray(fs.valid[dia])
    if valid.shape != (n,):
        raise ImportValidationError(f"{here}: validity mask of shape {valid.shape}, the dialogue has {n} utterances",
                                    file=where, fix="give one flag per utterance")
    return valid.astype(bool)


def _check_frames(fs: ImportedFeatures, dia: str, n: int, dim: int, here: str, where: str) -> np.ndarray:
    if dia not in fs.frames:
        raise ImportValidationError(f"{here}: no frames, other dialogues have them", file=where,
                                    fix="give every dialogue its frames (or none at all)")
    frames, offsets = (np.asarray(a) for a in fs.frames[dia])
    ok = (frames.ndim == 2 and frames.shape[1] == dim and offsets.shape == (n + 1,) and offsets[0] == 0
          and offsets[-1] == len(frames) and not (np.diff(offsets) < 0).any())
    if not ok:
        raise ImportValidationError(f"{here}: frames {frames.shape} with offsets {offsets.shape} do not cover {n} "
                                    f"utterances of width {dim}", file=where,
                                    fix="offsets must run from 0 to the number of frames, one step per utterance")
    if not np.isfinite(frames).all():
        raise ImportValidationError(f"{here}: NaN or infinite frame values", file=where,
                                    fix="the importer must apply (and record) a policy for them")
    return frames


def _check_store(store: Path, dataset: str, manifest: Manifest, plans: list[dict], overwrite: bool, *,
                 attached: bool = False) -> None:
    """Refuse what the writer would otherwise replace half-way: another table, another feature set. An attached
    import's manifest IS the stored one (read back from the table, float32 labels and all): no table check."""
    attrs = read_attrs(store / dataset)
    if attrs is None:
        return
    if not attached and attrs.get("manifest_digest") not in (None, manifest.digest()) and not overwrite:
        others = [c.name for c in (store / dataset).iterdir() if c.is_dir() and c.name != "manifest"]
        raise ImportValidationError(
            f"the store's dataset {dataset!r} holds another corpus description ({attrs.get('n_dialogues')} dialogues, "
            f"{attrs.get('n_utterances')} utterances; this file has {len(manifest.dialogues)} / "
            f"{manifest.n_utterances})" + (f" and feature sets {', '.join(others)}" if others else ""),
            file=str(store),
            fix="import under another name (--name iemocap-import), or pass --overwrite to replace the table "
                "(feature sets of dialogues that change become stale)")
    for p in plans:
        fs_attrs = read_attrs(store / dataset / p["fs"].name)
        if fs_attrs is not None and fs_attrs.get("fingerprint_hash") != fingerprint_hash(p["fingerprint"]) \
                and not overwrite:
            raise ImportValidationError(
                f"feature set {dataset}/{p['fs'].name} already exists from another source "
                f"({fs_attrs.get('encoder')}, fingerprint {fs_attrs.get('fingerprint_hash')})", file=str(store),
                fix="pass --overwrite to replace it (and only it), or import into another --store / --name")


# ---------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------

def _write_feature_set(store: Path, dataset: str, manifest: Manifest, plan: dict, source: dict, overwrite: bool,
                       notes: list[str]) -> dict:
    fs: ImportedFeatures = plan["fs"]
    writer = StoreWriter(store, dataset, fs.name)
    notes += writer.open(manifest, fingerprint=plan["fingerprint"], info=plan["info"], overwrite=overwrite,
                         source=source)
    todo = writer.plan(manifest)
    notes += todo.notes(f"{dataset}/{fs.name}")
    writer.forget(todo)
    done = writer.done_dialogues()
    written = 0
    for d in manifest.dialogues:
        if d.id in done:
            continue
        valid = _valid(fs, d.id, len(d), "", "")
        pooled = np.asarray(fs.pooled[d.id], dtype=np.float32).copy()
        pooled[~valid] = 0.0
        frames, offsets = fs.frames[d.id] if fs.frames is not None else (None, None)
        writer.write_dialogue(d.id, pooled, valid, frames=None if frames is None else np.asarray(frames, np.float32),
                              offsets=offsets)
        written += 1
    report = writer.finalize(manifest)
    info = plan["info"]
    return {"name": fs.name, "dim": info["dim"], "modality": fs.modality, "levels": info["levels"],
            "dtype": info["dtype"], "written": written, "kept": len(done),
            "complete": report["dialogues_complete"] == report["dialogues_total"]}


__all__ = ["IMPORT_FORMAT", "ImportValidationError", "write_import"]
