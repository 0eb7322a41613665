"""Writing one feature set of one dataset, a dialogue at a time, each committed on its own.

`open()` (the coordinator, before any worker starts) creates the groups or checks them: the manifest
table is updated in place when the corpus description changed (features are kept: they are keyed
per dialogue by what their encoder read), and a feature set made with other encoder settings is
refused unless `--overwrite`, which replaces that feature set and nothing else. `plan()` sorts the
manifest's dialogues into current, missing, stale (inputs changed), damaged (a file fails its
checksum) and failed (an utterance could not be extracted: retried on every run); `forget()` removes
the groups to redo so the ordinary resume path rewrites them. `write_dialogue()` is safe from several
processes for different dialogues. `finalize()` records the run's report and packs the pooled rows
once every dialogue is current, from verified arrays only.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from merc.data_manifests.manifest import Dialogue, Manifest

from . import table as tbl
from .files import ArrayFiles, Checksums, DamagedError, check_files, read_array, read_attrs
from .layout import (
    DIALOGUE_OFFSETS,
    FLOAT16_MAX,
    FRAME_DATA,
    OFFSETS,
    PACKED,
    POOLED,
    STORE_DTYPES,
    STORE_FORMAT,
    VALID,
    StoreError,
    check_format,
    check_inputs,
    default_inputs,
    dialogue_inputs,
    dialogue_key,
    feature_inputs,
    fingerprint_hash,
    finite_abs_max,
    members_digest,
    normalize_levels,
)


@dataclass
class Plan:
    """What a run has to do for each manifest dialogue (ids), and why."""

    current: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # never committed (or a killed run's leftover)
    stale: list[str] = field(default_factory=list)  # committed from other inputs than the manifest's now
    damaged: dict[str, str] = field(default_factory=dict)  # id -> what is wrong with its files
    failed: list[str] = field(default_factory=list)  # committed with skipped utterances: retried
    orphans: list[str] = field(default_factory=list)  # group keys of dialogues the manifest no longer has

    @property
    def redo(self) -> list[str]:
        return self.stale + list(self.damaged) + self.failed

    def notes(self, where: str) -> list[str]:
        out = []
        if self.stale:
            out.append(f"{where}: {len(self.stale)} dialogue(s) were extracted from other inputs than the manifest "
                       f"now holds (text, clip or time span changed); re-extracting them: {_some(self.stale)}")
        for dia, why in list(self.damaged.items())[:10]:
            out.append(f"{where}: dialogue {dia!r} is damaged ({why}); re-extracting it")
        if len(self.damaged) > 10:
            out.append(f"{where}: ... and {len(self.damaged) - 10} more damaged dialogues; re-extracting them")
        if self.failed:
            out.append(f"{where}: retrying {len(self.failed)} dialogue(s) with skipped utterances: {_some(self.failed)}")
        if self.orphans:
            out.append(f"{where}: dropping {len(self.orphans)} dialogue group(s) the manifest no longer has: "
                       f"{_some(self.orphans)}")
        return out


def _some(ids: list[str], n: int = 5) -> str:
    return ", ".join(ids[:n]) + (f" ... (+{len(ids) - n})" if len(ids) > n else "")


class StoreWriter:
    """Writes one feature set of one dataset; see the module docstring for the order of calls."""

    def __init__(self, path: str | Path, dataset: str, feature_set: str):
        self.path = Path(path)
        self.dataset = dataset
        self.feature_set = feature_set
        self._dialogues: dict[str, Dialogue] = {}  # from open(): lets write_dialogue compute input digests
        self._written: dict[str, tuple[np.ndarray, np.ndarray, Checksums]] = {}  # this process's, reused by pack

    # -- setup (coordinator only) ---------------------------------------------------------------------
    def open(self, manifest: Manifest, *, fingerprint: dict, info: dict, overwrite: bool = False,
             source: dict | None = None) -> list[str]:
        """Create or check the store, the dataset and the feature set; returns notes for the user.

        `source` ({"adapter": "iemocap", "options": {"protocol": "4-erc"}}) is how the manifest was made:
        recorded so that a fix hint can give the exact command that rebuilds it.
        """
        check_writable(self.path)
        notes: list[str] = []
        info = {**info, "dtype": info.get("dtype", "float16"),
                "levels": normalize_levels(info.get("levels", ["utterance"])),
                "inputs": list(check_inputs(info.get("inputs") or default_inputs(info.get("modality", "")))) }
        if info["dtype"] not in STORE_DTYPES:
            raise StoreError(f"unknown storage dtype {info['dtype']!r}", file=str(self.path),
                             fix=f"pass --store-dtype with one of {', '.join(STORE_DTYPES)}")
        if info["dtype"] != "float16":  # the stored numbers depend on it (float16 stores predate the option)
            fingerprint = {**fingerprint, "store_dtype": info["dtype"]}
        self._io(lambda: self._open_root())
        notes += self._io(lambda: self._open_dataset(manifest, source))
        notes += self._io(lambda: self._open_feature_set(fingerprint, info, overwrite))
        self._dialogues = {d.id: d for d in manifest.dialogues}
        return notes

    def open_dataset(self, manifest: Manifest, *, source: dict | None = None) -> list[str]:
        """Create or update the store and the dataset's manifest table only (no feature set): an import of a
        file that holds a corpus description and no features (COSMIC's text pickles)."""
        check_writable(self.path)
        self._io(lambda: self._open_root())
        return self._io(lambda: self._open_dataset(manifest, source))

    def _io(self, fn):
        try:
            return fn()
        except OSError as exc:
            raise StoreError(f"cannot write the store: {exc.strerror or exc} ({exc.filename or self.path})",
                             file=str(self.path),
                             fix="make the store writable or free disk space, or pass another --store") from None

    def _open_root(self) -> None:
        attrs = read_attrs(self.path)
        if attrs is None:
            if self.path.exists() and any(self.path.iterdir()):
                raise StoreError("the folder exists, is not empty, and is not a readable Zarr store",
                                 file=str(self.path), fix="pass a new or existing merc store as --store")
            ArrayFiles.write_group(self.path, {"merc_store_format": STORE_FORMAT})
            return
        check_format(self.path, attrs)

    def _open_dataset(self, manifest: Manifest, source: dict | None) -> list[str]:
        folder = self.path / self.dataset
        attrs = read_attrs(folder)
        previous = None
        if attrs and "manifest" in attrs:
            try:
                previous = tbl.read_table(folder, attrs.get("manifest_checksums"))
            except DamagedError:
                previous = None  # rewritten below from the manifest just loaded
        has_media = any(u.media for u in manifest.utterances())  # digests: stat only after the first run
        stats, hashed = tbl.fill_media_digests(manifest, previous) if has_media else ({}, 0)
        cols = tbl.manifest_columns(manifest, stats)
        notes = [f"{self.dataset}: read the content of {hashed} media file(s) to identify them (a clip's SHA-256 "
                 "keys its features; unchanged files are not read again)"] if hashed else []
        if previous is not None:
            tbl.keep_media_of(previous, cols)
            if source and attrs.get("source") != source:
                notes.append(f"{self.dataset}: built with {_source_words(attrs.get('source'))} before, now with "
                             f"{_source_words(source)}")
            elif attrs.get("manifest_digest") == manifest.digest() and not _media_changed(previous, cols) \
                    and not _aliases_changed(previous, cols):
                return notes
            changes = tbl.describe_changes(previous, cols)
            if changes:
                notes.append(f"{self.dataset}: the manifest changed since the store was written ({'; '.join(changes)}); "
                             "the stored table is updated. Every feature set is kept: a feature is redone only "
                             "where what its encoder read changed")
        checksums = tbl.write_table(folder, cols)
        ArrayFiles.write_group(folder, {"manifest": tbl.manifest_meta(manifest), "manifest_digest": manifest.digest(),
                                        "manifest_checksums": checksums, "n_utterances": manifest.n_utterances,
                                        "n_dialogues": len(manifest.dialogues),
                                        "source": source or (attrs or {}).get("source")})
        return notes

    def _open_feature_set(self, fingerprint: dict, info: dict, overwrite: bool) -> list[str]:
        folder = self._folder
        fp_hash = fingerprint_hash(fingerprint)
        attrs = read_attrs(folder)
        notes = []
        if attrs is not None and attrs.get("fingerprint_hash") != fp_hash:
            diff = _diff(attrs.get("fingerprint", {}), fingerprint)
            done = len(committed_groups(folder))
            if not overwrite:
                raise StoreError(
                    f"feature set {self.dataset}/{self.feature_set} already exists with another fingerprint "
                    f"({attrs.get('fingerprint_hash')} != {fp_hash}); differences: {diff}", file=str(self.path),
                    fix="pass --overwrite to replace this feature set (and only it), or choose another --feature-set name")
            notes.append(f"--overwrite: deleting {self.dataset}/{self.feature_set} ({done} committed dialogues), made "
                         f"with other settings: {diff}; no other feature set is touched")
            shutil.rmtree(folder)
            attrs = None
        if attrs is None:
            ArrayFiles.write_group(folder, {**info, "fingerprint": fingerprint, "fingerprint_hash": fp_hash,
                                            "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        return notes

    # -- what to do ------------------------------------------------------------------------------------
    def plan(self, manifest: Manifest) -> Plan:
        """Sort the manifest's dialogues by what this run must do with them (reads every file's checksum)."""
        plan = Plan()
        fields = self._inputs
        keys = {dialogue_key(d.id): d for d in manifest.dialogues}
        present = {k for k in _group_keys(self._folder)}
        plan.orphans = sorted(present - keys.keys())
        for key, d in keys.items():
            attrs = (read_attrs(self._folder / key) or {}) if key in present else {}
            if not attrs.get("complete"):
                plan.missing.append(d.id)
            elif attrs.get("inputs") != dialogue_inputs(d, fields):
                plan.stale.append(d.id)
            elif (problems := check_files(self._folder / key, attrs.get("checksums") or {})) or not attrs.get("checksums"):
                plan.damaged[d.id] = problems[0] if problems else "no checksums recorded"
            elif attrs.get("n_utt") != len(d):
                plan.damaged[d.id] = f"{attrs.get('n_utt')} utterances stored, the manifest has {len(d)}"
            elif attrs.get("failures"):
                plan.failed.append(d.id)
            else:
                plan.current.append(d.id)
        return plan

    def forget(self, plan: Plan) -> None:
        """Remove the groups a plan redoes (stale, damaged, failed) and the orphans: they are rewritten
        by the ordinary resume path, and a run killed after this redoes them again."""
        for dia in plan.redo:
            self._io(lambda d=dia: shutil.rmtree(self._folder / dialogue_key(d), ignore_errors=True))
        for key in plan.orphans:
            self._io(lambda k=key: shutil.rmtree(self._folder / k, ignore_errors=True))
        if plan.redo or plan.orphans:
            self._io(lambda: shutil.rmtree(self._folder / PACKED, ignore_errors=True))

    # -- per dialogue (any process) -------------------------------------------------------------------
    @property
    def _folder(self) -> Path:
        return self.path / self.dataset / self.feature_set

    @functools.cached_property
    def _attrs(self) -> dict:
        attrs = read_attrs(self._folder)
        if attrs is None:
            raise StoreError(f"feature set {self.dataset}/{self.feature_set} is not in the store", file=str(self.path),
                             fix="run merc-extract for it first")
        return attrs

    @property
    def _storage_dtype(self) -> np.dtype:
        return np.dtype(self._attrs.get("dtype", "float16"))

    @property
    def _inputs(self) -> tuple[str, ...]:
        return feature_inputs(self._attrs)

    def inputs_digest(self, dialogue: Dialogue) -> str:
        return dialogue_inputs(dialogue, self._inputs)

    def done_dialogues(self) -> set[str]:
        """Dialogue ids whose commit marker is written."""
        return set(committed_groups(self._folder))

    def write_dialogue(self, dialogue_id: str, pooled: np.ndarray, valid: np.ndarray, *,
                       frames: np.ndarray | None = None, offsets: np.ndarray | None = None,
                       failures: Iterable[dict] = (), inputs: str | None = None) -> None:
        """Write a dialogue's arrays, then its commit marker; a killed or failed write leaves it uncommitted."""
        key = dialogue_key(dialogue_id)
        folder = self._folder / key
        if folder.exists():  # left over from a killed run: never trust a group without its marker
            if (read_attrs(folder) or {}).get("complete"):
                return
            shutil.rmtree(folder, ignore_errors=True)
        if inputs is None:
            if dialogue_id not in self._dialogues:
                raise StoreError(f"no input digest for dialogue {dialogue_id!r}", file=str(self.path),
                                 fix="open() the writer with the manifest, or pass inputs=")
            inputs = self.inputs_digest(self._dialogues[dialogue_id])
        dtype = self._storage_dtype
        what = f"{self.dataset}/{self.feature_set} dialogue {dialogue_id!r}"
        arrays = {POOLED: _cast(pooled, dtype, what, self.path), VALID: np.asarray(valid, dtype=bool)}
        if frames is not None:
            arrays[FRAME_DATA] = _cast(frames, dtype, what + " frames", self.path)
            arrays[OFFSETS] = np.asarray(offsets, dtype=np.int64)
        try:
            ArrayFiles.write_group(folder, {"dialogue_id": dialogue_id})  # the group exists, uncommitted
            checksums: Checksums = {}
            for name, a in arrays.items():
                checksums.update(ArrayFiles.write_array(folder, name, a))
            ArrayFiles.write_group(folder, {"dialogue_id": dialogue_id, "n_utt": int(len(arrays[VALID])),
                                            "failures": _plain(list(failures)), "inputs": inputs,
                                            "checksums": checksums, "complete": True})  # the marker lands last
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise StoreError(f"could not write dialogue {dialogue_id!r} of {self.dataset}/{self.feature_set}: "
                             f"{exc.strerror or exc}; it stays uncommitted and every dialogue committed before "
                             "it is kept", file=str(self.path),
                             fix="free disk space (or make the store writable) and rerun the same command; "
                                 "it resumes at this dialogue") from None
        self._written[dialogue_id] = (arrays[POOLED], arrays[VALID], checksums)

    # -- end of run (coordinator only) ----------------------------------------------------------------
    def finalize(self, manifest: Manifest) -> dict:
        """Record the report and, once every dialogue is current, pack the pooled rows (nothing is written
        when nothing changed, so a no-op rerun leaves the store untouched)."""
        groups = {k: read_attrs(self._folder / k) or {} for k in _group_keys(self._folder)}
        by_id = {a["dialogue_id"]: (k, a) for k, a in groups.items() if a.get("complete")}
        failures = [f for _, a in by_id.values() for f in a.get("failures", [])]
        missing = [d.id for d in manifest.dialogues if d.id not in by_id]
        report = {"dialogues_complete": len(by_id), "dialogues_total": len(manifest.dialogues),
                  "utterances_failed": len(failures), "failures": failures}
        self._io(lambda: self._pack_if_needed(manifest, by_id) if not missing else None)
        if self._attrs.get("report") != report:
            self._io(lambda: update_attrs(self._folder, report=report))
        return report

    def _pack_if_needed(self, manifest: Manifest, by_id: dict[str, tuple[str, dict]]) -> None:
        ids = [d.id for d in manifest.dialogues]
        members = members_digest([(i, by_id[i][1]["checksums"]) for i in ids])
        packed = read_attrs(self._folder / PACKED) or {}
        if (packed.get("complete") and packed.get("members") == members
                and not check_files(self._folder / PACKED, packed.get("checksums", {}))):
            return
        parts = []
        for i in ids:
            if i in self._written:
                parts.append(self._written[i][:2])
            else:
                key, attrs = by_id[i]
                parts.append(tuple(read_array(self._folder / key, n, attrs["checksums"]) for n in (POOLED, VALID)))
        offsets = np.cumsum([0] + [len(v) for _, v in parts]).astype(np.int64)
        dim = int(self._attrs["dim"])
        pooled = np.concatenate([p for p, _ in parts]) if parts else np.zeros((0, dim), self._storage_dtype)
        valid = np.concatenate([v for _, v in parts]) if parts else np.zeros((0,), bool)
        folder = self._folder / PACKED
        shutil.rmtree(folder, ignore_errors=True)
        ArrayFiles.write_group(folder, {})
        checksums: Checksums = {}
        for name, a in ((POOLED, pooled), (VALID, valid), (DIALOGUE_OFFSETS, offsets)):
            checksums.update(ArrayFiles.write_array(folder, name, a))
        ArrayFiles.write_group(folder, {"members": members, "checksums": checksums, "complete": True})


# ---------------------------------------------------------------------------------------------------
# helpers shared with the reader and verify
# ---------------------------------------------------------------------------------------------------

def check_writable(path: Path) -> None:
    """Refuse a store path that cannot be written, before any model loads."""
    if path.exists() and not path.is_dir():
        raise StoreError("--store points at a file, not a Zarr store folder", file=str(path),
                         fix="pass a folder path as --store (it is created if missing)")
    probe_dir = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    if not _can_write(probe_dir):
        raise StoreError(f"the store is not writable ({probe_dir} is read-only for this user)", file=str(path),
                         fix="make it writable (chmod -R u+w), or pass another --store; to only read it use "
                             "merc-extract status or merc-extract verify")


def _can_write(folder: Path) -> bool:
    probe = folder / f".merc-write-check-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def committed_groups(folder: Path) -> dict[str, str]:
    """dialogue id -> group key of a feature set's committed dialogues (read straight from zarr.json files)."""
    out = {}
    for key in _group_keys(folder):
        attrs = read_attrs(folder / key) or {}
        if attrs.get("complete") and "dialogue_id" in attrs:
            out[attrs["dialogue_id"]] = key
    return out


def update_attrs(folder: Path, **changes) -> None:
    ArrayFiles.write_group(folder, {**(read_attrs(folder) or {}), **_plain(changes)})


def _group_keys(folder: Path) -> list[str]:
    """Every dialogue group folder of a feature set (committed or not)."""
    if not folder.is_dir():
        return []
    return sorted(c.name for c in folder.iterdir() if c.is_dir() and c.name != PACKED)


def _media_changed(previous: dict[str, np.ndarray], cols: dict[str, np.ndarray]) -> bool:
    return any(not np.array_equal(previous.get(c), cols[c]) for c in tbl.MEDIA_COLUMNS if c in previous)


def _aliases_changed(previous: dict[str, np.ndarray], cols: dict[str, np.ndarray]) -> bool:
    """Aliases are names, not content (outside the digest), but a table that gains some must be rewritten."""
    old, new = previous.get("aliases"), cols.get("aliases")
    if old is None or new is None:
        return old is not new
    return not np.array_equal(old.astype(str), new.astype(str))


def _source_words(source: dict | None) -> str:
    if not source:
        return "unrecorded options"
    if source.get("adapter") == "import":
        return f"merc-extract import of {', '.join(map(str, (source.get('options') or {}).get('files') or ['a file']))}"
    opts = ", ".join(f"{k}={v}" for k, v in sorted((source.get("options") or {}).items()))
    return f"--dataset {source.get('adapter')}" + (f" {opts}" if opts else "")


def _plain(obj):
    """JSON-safe copy (numpy scalars -> Python numbers), as zarr's own attribute encoder would make it."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _cast(values: np.ndarray, dtype: np.dtype, what: str, path: Path) -> np.ndarray:
    """Cast to the storage dtype, refusing to turn finite values into inf (float16 stops at 65504)."""
    values = np.asarray(values)
    if dtype == np.float16 and (peak := finite_abs_max(values)) > FLOAT16_MAX:
        raise StoreError(f"{what}: values up to {peak:.3g} do not fit float16 (max {FLOAT16_MAX:g})", file=str(path),
                         fix="store this feature set as float32: rerun with --store-dtype float32 --overwrite")
    return values.astype(dtype, copy=False)


def _diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    parts = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(parts) or "none"


