"""The manifest, stored once: one column per utterance field under `<dataset>/manifest/`, plus the small
corpus-level part (name, root, label spaces, policies, findings) in the dataset group's attributes.

Columns (rows in manifest order; readable with zarr-python, xarray or dask, no merc needed):

    utterance_id, dialogue_id, speaker, split, text, media, source_file   variable-length strings
    index [int32] position in the dialogue    source_row [int64] (-1 = none)
    start, end [float64] seconds (NaN = whole file)
    media_digest [str] SHA-256 of the clip's content ("" = none), media_size / media_mtime_ns [int64]:
        the file's size and mtime when it was hashed, so an unchanged clip is never hashed twice
    aliases [str] (only when some utterance has one) the utterance's other names, joined by "|"
        (e.g. the CMU-MultimodalSDK key ``vid[2]`` of segment ``vid_3``); stores without the column read as none
    label_<space>: categorical [int16] class index (-1 = none), regression [float32] (NaN = none),
                   multilabel [int8, N x C] 0/1 per class (-1 = none)

The table's files are checksummed in the dataset's attributes (`manifest_checksums`), like every
other array of the store: a damaged table is an error, never fill values.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from merc.data_manifests.errors import Finding
from merc.data_manifests.manifest import Dialogue, LabelSpace, Manifest, Utterance

from .files import Checksums, DamagedError, check_files, sha256, sha256_file
from .layout import MANIFEST

STRING_COLUMNS = ("utterance_id", "dialogue_id", "speaker", "split", "text", "media", "media_digest", "source_file")
ALIAS_SEPARATOR = "|"
MEDIA_COLUMNS = ("media", "media_digest", "media_size", "media_mtime_ns")


# ---------------------------------------------------------------------------------------------------
# manifest -> columns -> files
# ---------------------------------------------------------------------------------------------------

def manifest_columns(manifest: Manifest, stats: dict[str, tuple[int, int]] | None = None) -> dict[str, np.ndarray]:
    """The table of `manifest` (stats: media path -> (size, mtime_ns) recorded when its digest was taken)."""
    utts = list(manifest.utterances())
    stats = stats or {}
    media_stat = [stats.get(u.media or "", (-1, -1)) for u in utts]
    cols: dict[str, np.ndarray] = {
        "utterance_id": _strings(u.id for u in utts),
        "dialogue_id": _strings(u.dialogue_id for u in utts),
        "index": np.array([i for d in manifest.dialogues for i in range(len(d))], dtype=np.int32),
        "speaker": _strings(u.speaker for u in utts),
        "split": _strings(u.split for u in utts),
        "text": _strings(u.text for u in utts),
        "media": _strings(u.media or "" for u in utts),
        "media_digest": _strings(u.media_digest or "" for u in utts),
        "media_size": np.array([s for s, _ in media_stat], dtype=np.int64),
        "media_mtime_ns": np.array([t for _, t in media_stat], dtype=np.int64),
        "start": np.array([np.nan if u.start is None else u.start for u in utts], dtype=np.float64),
        "end": np.array([np.nan if u.end is None else u.end for u in utts], dtype=np.float64),
        "source_file": _strings(u.source_file or "" for u in utts),
        "source_row": np.array([-1 if u.source_row is None else u.source_row for u in utts], dtype=np.int64),
    }
    if any(u.aliases for u in utts):  # optional: a store written before aliases existed has no such column
        cols["aliases"] = _strings(ALIAS_SEPARATOR.join(u.aliases) for u in utts)
    for name, space in manifest.label_spaces.items():
        cols[f"label_{name}"] = _label_column(space, [u.labels.get(name) for u in utts])
    return cols


def _strings(values) -> np.ndarray:
    return np.array(list(values), dtype=object)


def _label_column(space: LabelSpace, values: list) -> np.ndarray:
    if space.kind == "categorical":
        return np.array([-1 if v is None else space.index(v) for v in values], dtype=np.int16)
    if space.kind == "multilabel":
        m = np.full((len(values), len(space.classes)), -1, dtype=np.int8)
        for r, v in enumerate(values):
            if v is not None:
                m[r] = [int(c in v) for c in space.classes]
        return m
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float32)


def write_table(dataset_folder: Path, cols: dict[str, np.ndarray]) -> Checksums:
    """Replace `<dataset>/manifest/` with `cols`; returns the checksums of every file written.

    The dataset's attributes are updated by the caller AFTER this returns (with these checksums), so a
    write killed half-way leaves a table that fails its check and is rewritten by the next merc-extract.
    """
    import zarr

    folder = dataset_folder / MANIFEST
    shutil.rmtree(folder, ignore_errors=True)
    table = zarr.open_group(str(folder), mode="w")
    for name, values in cols.items():
        dtype = str if values.dtype == object else values.dtype
        arr = table.create_array(name, shape=values.shape, dtype=dtype, chunks=values.shape or (1,))
        if values.size:
            arr[...] = values
    return {str(p.relative_to(dataset_folder)): sha256(p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def read_table(dataset_folder: Path, checksums: Checksums | None) -> dict[str, np.ndarray]:
    """Every column of the table, after checking its files (a missing chunk would read as fill values)."""
    import zarr

    folder = dataset_folder / MANIFEST
    if checksums is not None:
        problems = check_files(dataset_folder, checksums)
        if problems:
            raise DamagedError(f"the manifest table is damaged: {problems[0]}"
                               + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                               file=str(dataset_folder))
    try:
        table = zarr.open_group(str(folder), mode="r")
        cols = {name: arr[...] for name, arr in table.arrays()}
    except Exception as exc:  # noqa: BLE001 - whatever zarr raises, the table is unreadable
        raise DamagedError(f"the manifest table cannot be read ({type(exc).__name__}: {exc})",
                           file=str(dataset_folder)) from None
    # strings come back as numpy's StringDType: plain Python str objects are what every caller compares with
    return {k: v.astype(object) if v.dtype.kind in "TU" else v for k, v in cols.items()}


# ---------------------------------------------------------------------------------------------------
# columns -> manifest
# ---------------------------------------------------------------------------------------------------

def manifest_from_table(meta: dict, cols: dict[str, np.ndarray]) -> Manifest:
    """Rebuild the Manifest from the table and the dataset's `manifest` attribute."""
    spaces = {s["name"]: LabelSpace.from_dict(s) for s in meta["label_spaces"]}
    n = len(cols["utterance_id"])
    labels = {name: _labels_of(space, cols[f"label_{name}"]) for name, space in spaces.items()}
    aliases = cols.get("aliases")
    dialogues: list[Dialogue] = []
    by_id: dict[str, Dialogue] = {}
    for r in range(n):
        dia_id = str(cols["dialogue_id"][r])
        u = Utterance(
            id=str(cols["utterance_id"][r]), dialogue_id=dia_id, speaker=str(cols["speaker"][r]),
            text=str(cols["text"][r]), split=str(cols["split"][r]),
            labels={name: values[r] for name, values in labels.items()},
            media=str(cols["media"][r]) or None, start=_float(cols["start"][r]), end=_float(cols["end"][r]),
            source_row=int(cols["source_row"][r]) if int(cols["source_row"][r]) >= 0 else None,
            source_file=str(cols["source_file"][r]) or None,
            media_digest=str(cols["media_digest"][r]) or None,
            aliases=tuple(a for a in str(aliases[r]).split(ALIAS_SEPARATOR) if a) if aliases is not None else ())
        if dia_id not in by_id:
            by_id[dia_id] = Dialogue(dia_id, u.split, [])
            dialogues.append(by_id[dia_id])
        by_id[dia_id].utterances.append(u)
    return Manifest(name=meta["name"], root=meta.get("root", ""), label_spaces=spaces, dialogues=dialogues,
                    policies=meta.get("policies", {}), findings=[Finding(**f) for f in meta.get("findings", [])])


def manifest_meta(manifest: Manifest) -> dict:
    """The corpus-level part of a manifest (everything but the utterances), for the dataset's attributes."""
    d = manifest.to_dict()
    d.pop("dialogues")
    return d


def _labels_of(space: LabelSpace, col: np.ndarray) -> list:
    if space.kind == "categorical":
        return [space.classes[int(v)] if v >= 0 else None for v in col]
    if space.kind == "multilabel":
        return [None if (row < 0).all() else tuple(c for c, x in zip(space.classes, row, strict=True) if x > 0)
                for row in col]
    return [None if np.isnan(v) else float(v) for v in col]


def _float(v) -> float | None:
    return None if np.isnan(v) else float(v)


# ---------------------------------------------------------------------------------------------------
# media content digests
# ---------------------------------------------------------------------------------------------------

def fill_media_digests(manifest: Manifest, previous: dict[str, np.ndarray] | None) -> tuple[dict, int]:
    """Set `media_digest` on every utterance with media; returns (path -> (size, mtime_ns), files hashed).

    A file whose path, size and mtime match the previous table's reuses its digest; any other file is
    read and hashed once per run (several utterances may share one file with different time spans).
    """
    known: dict[str, tuple[int, int, str]] = {}
    if previous is not None and "media_digest" in previous:
        for path, digest, size, mtime in zip(*(previous[c] for c in MEDIA_COLUMNS), strict=True):
            if digest:
                known[str(path)] = (int(size), int(mtime), str(digest))
    stats: dict[str, tuple[int, int]] = {}
    digests: dict[str, str | None] = {}
    hashed = 0
    for u in manifest.utterances():
        if not u.media:
            u.media_digest = None
            continue
        if u.media not in digests:
            try:
                st = os.stat(u.media)
            except OSError:
                digests[u.media] = None  # missing: the extraction reports it per utterance
                continue
            stats[u.media] = (st.st_size, st.st_mtime_ns)
            old = known.get(u.media)
            if old is not None and old[:2] == stats[u.media]:
                digests[u.media] = old[2]
            else:
                digests[u.media] = file_sha256(u.media)
                hashed += 1
        u.media_digest = digests[u.media]
    return stats, hashed


def file_sha256(path: str | Path) -> str | None:
    """A media file's SHA-256, None when it cannot be read (the clip's failure is reported where it is decoded)."""
    try:
        return sha256_file(path)
    except OSError:
        return None


def keep_media_of(previous: dict[str, np.ndarray], cols: dict[str, np.ndarray]) -> None:
    """A manifest loaded without its media (MELD/IEMOCAP `--modalities text`) says nothing about the clips:
    keep the previous table's media columns for the utterances both hold, so audio feature sets stay current."""
    if any(cols["media"]) or "media_digest" not in previous:
        return
    row_of = {str(u): i for i, u in enumerate(previous["utterance_id"])}
    rows = np.array([row_of.get(str(u), -1) for u in cols["utterance_id"]])
    have = rows >= 0
    for c in MEDIA_COLUMNS:
        cols[c][have] = previous[c][rows[have]]


def describe_changes(previous: dict[str, np.ndarray], cols: dict[str, np.ndarray]) -> list[str]:
    """What differs between two tables, in words ("labels of 3 utterances", "2 dialogues added" ...)."""
    old_ids = {str(u): i for i, u in enumerate(previous["utterance_id"])}
    new_ids = {str(u): i for i, u in enumerate(cols["utterance_id"])}
    out = []
    added, removed = len(new_ids.keys() - old_ids.keys()), len(old_ids.keys() - new_ids.keys())
    if added:
        out.append(f"{added} utterance(s) added")
    if removed:
        out.append(f"{removed} utterance(s) removed")
    common = [u for u in new_ids if u in old_ids]
    a = np.array([old_ids[u] for u in common], dtype=np.int64)
    b = np.array([new_ids[u] for u in common], dtype=np.int64)
    for name in sorted(set(cols) & set(previous)):
        if name in MEDIA_COLUMNS[2:] or name == "source_row":
            continue
        x, y = previous[name][a], cols[name][b]
        if x.shape[1:] != y.shape[1:]:
            out.append(f"the {name} column's classes")
            continue
        same = (x == y) | (_isnan(x) & _isnan(y))
        n = int((~same.reshape(len(common), -1).all(axis=1)).sum()) if len(common) else 0
        if n:
            out.append(f"{name.removeprefix('label_')} of {n} utterance(s)")
    for name in sorted(set(cols) ^ set(previous)):
        out.append(f"column {name} {'added' if name in cols else 'removed'}")
    return out


def _isnan(x: np.ndarray) -> np.ndarray:
    return np.isnan(x) if x.dtype.kind == "f" else np.zeros(x.shape, bool)
