"""The Zarr v3 feature store: a writer/reader pair over per-dialogue tensors.

Layout (documented for users in README.md, "The store"):

    cache.zarr/                        attrs: merc_store_format
      <dataset>/                       attrs: manifest digest + JSON (label spaces, policies, findings)
        manifest/                      one 1-D column per field, rows in manifest order (readable without merc)
        <feature_set>/                 attrs: encoder, fingerprint, fingerprint_hash, dim, modality, levels, report
          <dialogue_key>/              attrs: dialogue_id, n_utt, failures, complete (written LAST = commit marker)
            pooled   [n_utt, D] float16 (float32 for feature sets whose attrs say dtype float32, e.g. openSMILE)
            valid    [n_utt]    bool     False where the utterance failed (unreadable media, empty text...)
            frames   [n_frames, D] float16   only with --keep-frames
            offsets  [n_utt + 1]  int64      row offsets of each utterance in frames
          packed/                      written once every dialogue is complete: all pooled rows in manifest
            pooled [N, D], valid [N], dialogue_offsets [n_dialogues + 1]   order, for a one-read load

Why per-dialogue groups: a killed run resumes at dialogue granularity, and separate processes (dask
workers) can write different dialogues of one store without locks. Why `packed/`: opening thousands of
small arrays costs ~4 ms each; the packed copy makes loading a whole corpus a single read.

This module imports only numpy and zarr, so stage 2 (heads) can read stores without torch/transformers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from merc.data_manifests.errors import MercError
from merc.data_manifests.manifest import Manifest

from .store_files import DialogueFiles

STORE_FORMAT = 1
STORE_DTYPES = ("float16", "float32")
FLOAT16_MAX = float(np.finfo(np.float16).max)
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def dialogue_key(dialogue_id: str) -> str:
    """A Zarr-safe node name for a dialogue id (ids stay exact in the group's attrs)."""
    key = _KEY_UNSAFE.sub("_", dialogue_id)
    if key.startswith("__") or key in {"", ".", "..", "packed"}:
        key = "d_" + key
    if key != dialogue_id:
        key += "-" + hashlib.sha1(dialogue_id.encode()).hexdigest()[:6]
    return key


def fingerprint_hash(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


class StoreError(MercError):
    """The store is missing something asked for, or holds something incompatible with the request."""


@dataclass
class PooledFeatures:
    """Utterance-level features of one feature set, all dialogues packed in manifest order.

    Rows of dialogue i are `pooled[dialogue_offsets[i]:dialogue_offsets[i + 1]]`.
    """

    dialogue_ids: list[str]
    dialogue_offsets: np.ndarray  # [n_dialogues + 1] int64
    pooled: np.ndarray  # [N, D] the feature set's storage dtype (float16, or float32 for openSMILE)
    valid: np.ndarray  # [N] bool

    def dialogue(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.dialogue_offsets[i], self.dialogue_offsets[i + 1]
        return self.pooled[a:b], self.valid[a:b]


# ---------------------------------------------------------------------------------------------------
# manifest <-> columns
# ---------------------------------------------------------------------------------------------------

def _manifest_columns(manifest: Manifest) -> dict[str, np.ndarray]:
    utts = list(manifest.utterances())
    index = [i for d in manifest.dialogues for i in range(len(d))]
    cols: dict[str, np.ndarray] = {
        "utterance_id": np.array([u.id for u in utts], dtype=object),
        "dialogue_id": np.array([u.dialogue_id for u in utts], dtype=object),
        "index": np.array(index, dtype=np.int32),
        "speaker": np.array([u.speaker for u in utts], dtype=object),
        "split": np.array([u.split for u in utts], dtype=object),
        "text": np.array([u.text for u in utts], dtype=object),
        "media": np.array([u.media or "" for u in utts], dtype=object),
        "start": np.array([np.nan if u.start is None else u.start for u in utts], dtype=np.float64),
        "end": np.array([np.nan if u.end is None else u.end for u in utts], dtype=np.float64),
    }
    for name, space in manifest.label_spaces.items():
        values = [u.labels.get(name) for u in utts]
        if space.kind == "categorical":
            cols[f"label_{name}"] = np.array([-1 if v is None else space.index(v) for v in values], dtype=np.int16)
        elif space.kind == "multilabel":
            m = np.full((len(utts), len(space.classes)), -1, dtype=np.int8)
            for r, v in enumerate(values):
                if v is not None:
                    m[r] = [int(c in v) for c in space.classes]
            cols[f"label_{name}"] = m
        else:
            cols[f"label_{name}"] = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float32)
    return cols


# ---------------------------------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------------------------------

class StoreWriter:
    """Writes one feature set of one dataset, a dialogue at a time, each committed on its own.

    `open()` creates or checks the dataset and feature-set groups (single process, before any worker
    starts); `write_dialogue()` is safe to call from several processes for different dialogues.
    """

    def __init__(self, path: str | Path, dataset: str, feature_set: str):
        self.path = Path(path)
        self.dataset = dataset
        self.feature_set = feature_set
        self._files = DialogueFiles()
        self._written: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # this process's writes, reused by _pack

    # -- setup (coordinator only) ---------------------------------------------------------------------
    def open(self, manifest: Manifest, *, fingerprint: dict, info: dict, overwrite: bool = False) -> None:
        """Create the groups, or check that the existing ones were made from the same manifest and encoder."""
        root = zarr.open_group(str(self.path), mode="a")
        if "merc_store_format" not in root.attrs:
            root.attrs["merc_store_format"] = STORE_FORMAT
        self._open_dataset(root, manifest, overwrite)
        ds = root[self.dataset]
        info = {**info, "dtype": info.get("dtype", "float16")}
        if info["dtype"] not in STORE_DTYPES:
            raise StoreError(f"unknown storage dtype {info['dtype']!r}", file=str(self.path),
                             fix=f"use one of {', '.join(STORE_DTYPES)}")
        if info["dtype"] != "float16":  # the stored numbers depend on it (float16 stores predate the option)
            fingerprint = {**fingerprint, "store_dtype": info["dtype"]}
        fp_hash = fingerprint_hash(fingerprint)
        if self.feature_set in ds:
            old = ds[self.feature_set].attrs.get("fingerprint_hash")
            if old != fp_hash:
                if not overwrite:
                    raise StoreError(
                        f"feature set {self.dataset}/{self.feature_set} already exists with another fingerprint "
                        f"({old} != {fp_hash}); differences: {_diff(ds[self.feature_set].attrs.get('fingerprint', {}), fingerprint)}",
                        file=str(self.path),
                        fix="pass --overwrite to replace it, or choose another --feature-set name",
                    )
                self._delete(f"{self.dataset}/{self.feature_set}")
        if self.feature_set not in ds:
            fs = ds.create_group(self.feature_set)
            fs.attrs.update({**info, "fingerprint": fingerprint, "fingerprint_hash": fp_hash,
                             "manifest_digest": manifest.digest(), "created": time.strftime("%Y-%m-%dT%H:%M:%S")})

    def _open_dataset(self, root: zarr.Group, manifest: Manifest, overwrite: bool) -> None:
        digest = manifest.digest()
        if self.dataset in root:
            old = root[self.dataset].attrs.get("manifest_digest")
            if old == digest:
                return
            if not overwrite:
                raise StoreError(
                    f"dataset {self.dataset!r} in the store was built from another manifest (digest {old} != {digest}): "
                    "the corpus, its labels or the adapter options changed",
                    file=str(self.path),
                    fix="pass --overwrite to rebuild this dataset's features, or use another --store",
                )
            self._delete(self.dataset)
        ds = root.create_group(self.dataset)
        cols = _manifest_columns(manifest)
        table = ds.create_group("manifest")
        for name, values in cols.items():
            dtype = str if values.dtype == object else values.dtype
            arr = table.create_array(name, shape=values.shape, dtype=dtype, chunks=values.shape or (1,))
            if values.size:
                arr[...] = values
        ds.attrs.update({"manifest_digest": digest, "n_utterances": manifest.n_utterances,
                         "n_dialogues": len(manifest.dialogues), "manifest": manifest.to_dict()})

    def _delete(self, sub: str) -> None:
        shutil.rmtree(self.path / sub, ignore_errors=True)

    # -- per dialogue (any process) -------------------------------------------------------------------
    @property
    def _folder(self) -> Path:
        return self.path / self.dataset / self.feature_set

    def _fs(self) -> zarr.Group:
        return zarr.open_group(str(self._folder), mode="r+")

    @functools.cached_property
    def _storage_dtype(self) -> np.dtype:
        """Storage dtype recorded at open(), read once."""
        return _stored_dtype(self._fs().attrs)

    def done_dialogues(self) -> set[str]:
        """Dialogue ids whose commit marker is written."""
        return set(_complete_groups(self._folder))

    def write_dialogue(self, dialogue_id: str, pooled: np.ndarray, valid: np.ndarray, *,
                       frames: np.ndarray | None = None, offsets: np.ndarray | None = None,
                       failures: Iterable[dict] = ()) -> None:
        """Write a dialogue's arrays, then its commit marker. A half-written dialogue is redone on resume."""
        key = dialogue_key(dialogue_id)
        folder = self._folder / key
        if folder.exists():  # left over from a killed run: never trust a group without its marker
            if _group_attrs(folder).get("complete"):
                return
            shutil.rmtree(folder, ignore_errors=True)
        dtype = self._storage_dtype
        what = f"{self.dataset}/{self.feature_set} dialogue {dialogue_id!r}"
        arrays = {"pooled": _cast(pooled, dtype, what, self.path), "valid": np.asarray(valid, dtype=bool)}
        if frames is not None:
            arrays["frames"] = _cast(frames, dtype, what + " frames", self.path)
            arrays["offsets"] = np.asarray(offsets, dtype=np.int64)
        attrs = {"dialogue_id": dialogue_id, "n_utt": int(len(valid)), "failures": _plain(list(failures)),
                 "complete": True}
        if self._files.supported([(a.dtype, a.ndim) for a in arrays.values()]):
            DialogueFiles.write_group(folder, {})  # the group exists, uncommitted
            for name, a in arrays.items():
                self._files.write_array(folder / name, a)
            DialogueFiles.write_group(folder, attrs)  # the marker lands last, atomically
        else:  # the zarr API: slower, for codec defaults that DialogueFiles does not write
            g = self._fs().create_group(key)
            for name, a in arrays.items():
                _put(g, name, a)
            g.update_attributes(attrs)
        self._written[dialogue_id] = (arrays["pooled"], arrays["valid"])

    # -- end of run (coordinator only) ----------------------------------------------------------------
    def finalize(self, manifest: Manifest) -> dict:
        """Pack pooled rows for fast loading once every dialogue is complete; store the run report."""
        fs = self._fs()
        groups = [(key, attrs) for key, attrs in _dialogue_groups(self._folder) if attrs.get("complete")]
        complete = _committed(groups)
        failures = [f for _, attrs in groups for f in attrs.get("failures", [])]
        missing = [d.id for d in manifest.dialogues if d.id not in complete]
        report = {"dialogues_complete": len(complete), "dialogues_total": len(manifest.dialogues),
                  "utterances_failed": len(failures), "failures": failures}
        fs.attrs["report"] = report
        if not missing:
            self._pack(fs, manifest, complete)
        return report

    def _pack(self, fs: zarr.Group, manifest: Manifest, complete: dict[str, str]) -> None:
        ids = [d.id for d in manifest.dialogues]
        parts = [self._written.get(i) or tuple(_read_arrays(self._folder / complete[i], ("pooled", "valid")))
                 for i in ids]
        offsets = np.cumsum([0] + [len(v) for _, v in parts]).astype(np.int64)
        dim = int(fs.attrs["dim"])
        pooled = np.concatenate([p for p, _ in parts]) if parts else np.zeros((0, dim), self._storage_dtype)
        valid = np.concatenate([v for _, v in parts]) if parts else np.zeros((0,), bool)
        if "packed" in fs:
            shutil.rmtree(self._folder / "packed", ignore_errors=True)
        g = fs.create_group("packed")
        _put(g, "pooled", pooled, chunks=(max(1, min(len(pooled), 16384)), dim))
        _put(g, "valid", valid)
        _put(g, "dialogue_offsets", offsets)
        g.attrs.update({"dialogue_ids_digest": _ids_digest(ids), "complete": True})


def _group_attrs(folder: Path) -> dict:
    """A group's attributes read straight from its zarr.json; {} when it is missing or half-written."""
    try:
        return json.loads((folder / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return {}


def _plain(obj):
    """JSON-safe copy (numpy scalars -> Python numbers), as zarr's own attribute encoder would make it."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def finite_abs_max(values: np.ndarray) -> float:
    """The largest |value| among the finite ones (0 if none): two reductions, no copy unless NaN/inf are present."""
    if values.size == 0:
        return 0.0
    lo, hi = float(values.min()), float(values.max())  # a NaN or inf makes them non-finite
    if not (np.isfinite(lo) and np.isfinite(hi)):
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    return max(-lo, hi)


def _cast(values: np.ndarray, dtype: np.dtype, what: str, path: Path) -> np.ndarray:
    """Cast to the storage dtype, refusing to turn finite values into inf (float16 stops at 65504)."""
    values = np.asarray(values)
    if dtype == np.float16 and (peak := finite_abs_max(values)) > FLOAT16_MAX:
        raise StoreError(f"{what}: values up to {peak:.3g} do not fit float16 (max {FLOAT16_MAX:g})", file=str(path),
                         fix="store this feature set as float32: rerun with --store-dtype float32 --overwrite")
    return values.astype(dtype, copy=False)


def _read_arrays(folder: Path, names: tuple[str, ...]) -> list[np.ndarray]:
    """A dialogue group's arrays: straight from their files when merc's writer wrote them (one chunk, the
    default codecs; a fraction of what opening the group and arrays through zarr-python costs), else via zarr."""
    arrays = [DialogueFiles.read_array(folder / name) for name in names]
    if any(a is None for a in arrays):
        group = zarr.open_group(str(folder), mode="r")
        arrays = [group[name][...] if a is None else a for name, a in zip(names, arrays, strict=True)]
    return arrays


def _put(group: zarr.Group, name: str, data: np.ndarray, chunks: tuple | None = None) -> None:
    chunks = chunks or tuple(max(1, s) for s in data.shape) or (1,)
    if data.size:
        group.create_array(name, data=data, chunks=chunks)  # metadata and chunks in one call
    else:
        group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks)


def _dialogue_groups(folder: Path) -> Iterator[tuple[str, dict]]:
    """(node key, attributes) of every dialogue group of a feature set, read straight from the zarr.json files:
    zarr-python opens a group in ~2 ms, which made listing MELD's 1,433 dialogues take seconds."""
    if not folder.is_dir():
        return
    for child in sorted(folder.iterdir()):
        if child.name != "packed" and (child / "zarr.json").is_file():
            yield child.name, _group_attrs(child)


def _committed(groups: Iterable[tuple[str, dict]]) -> dict[str, str]:
    """dialogue id -> node key of the committed groups among (node key, attributes) pairs."""
    return {attrs["dialogue_id"]: key for key, attrs in groups if attrs.get("complete")}


def _complete_groups(folder: Path) -> dict[str, str]:
    """dialogue id -> node key of a feature set's committed dialogues."""
    return _committed(_dialogue_groups(folder))


def _stored_dtype(attrs) -> np.dtype:
    """A feature set's storage dtype (stores from before the option record none: float16)."""
    return np.dtype(attrs.get("dtype", "float16"))


def _ids_digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def _diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    parts = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(parts) or "none"


# ---------------------------------------------------------------------------------------------------
# reader
# ---------------------------------------------------------------------------------------------------

class StoreReader:
    """Reads manifests and features. Imports nothing heavier than zarr and numpy."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            raise StoreError(f"no Zarr store at {self.path}", file=str(self.path),
                             fix="run merc-extract first, or pass the right --store path")
        self.root = zarr.open_group(str(self.path), mode="r")

    def datasets(self) -> list[str]:
        return sorted(k for k, _ in self.root.groups())

    def feature_sets(self, dataset: str) -> list[str]:
        return sorted(k for k, _ in self._dataset(dataset).groups() if k != "manifest")

    def manifest(self, dataset: str) -> Manifest:
        return Manifest.from_dict(self._dataset(dataset).attrs["manifest"])

    def manifest_columns(self, dataset: str) -> dict[str, np.ndarray]:
        table = self._dataset(dataset)["manifest"]
        return {name: arr[...] for name, arr in table.arrays()}

    def info(self, dataset: str, feature_set: str) -> dict:
        return dict(self._feature_set(dataset, feature_set).attrs)

    def _dataset(self, dataset: str) -> zarr.Group:
        if dataset not in self.root:
            raise StoreError(f"dataset {dataset!r} is not in the store (it has: {', '.join(self.datasets()) or 'none'})",
                             file=str(self.path), fix=f"run merc-extract --dataset {dataset} ... --store {self.path}")
        return self.root[dataset]

    def _feature_set(self, dataset: str, feature_set: str) -> zarr.Group:
        ds = self._dataset(dataset)
        if feature_set not in ds or feature_set == "manifest":
            have = ", ".join(self.feature_sets(dataset)) or "none"
            raise StoreError(f"feature set {feature_set!r} is not in {dataset} (it has: {have})",
                             file=str(self.path),
                             fix=f"extract it: merc-extract --dataset {dataset} --encoder {feature_set} --store {self.path}")
        return ds[feature_set]

    def load_pooled(self, dataset: str, feature_set: str, *, fingerprint_hash: str | None = None,
                    allow_incomplete: bool = False) -> PooledFeatures:
        """All pooled rows of a feature set in manifest order (one read when packed/ is current)."""
        fs = self._feature_set(dataset, feature_set)
        if fingerprint_hash and fs.attrs.get("fingerprint_hash") != fingerprint_hash:
            raise StoreError(
                f"{dataset}/{feature_set} has fingerprint {fs.attrs.get('fingerprint_hash')}, expected {fingerprint_hash}",
                file=str(self.path), fix="re-extract with the same encoder settings, or drop the fingerprint check")
        manifest_ids = [d["id"] for d in self._dataset(dataset).attrs["manifest"]["dialogues"]]
        if "packed" in fs and fs["packed"].attrs.get("dialogue_ids_digest") == _ids_digest(manifest_ids):
            p = fs["packed"]
            return PooledFeatures(manifest_ids, p["dialogue_offsets"][...], p["pooled"][...], p["valid"][...])
        return self._load_unpacked(fs, dataset, feature_set, manifest_ids, allow_incomplete)

    def _load_unpacked(self, fs: zarr.Group, dataset: str, feature_set: str, manifest_ids: list[str],
                       allow_incomplete: bool) -> PooledFeatures:
        complete = _complete_groups(self.path / dataset / feature_set)
        missing = [i for i in manifest_ids if i not in complete]
        if missing and not allow_incomplete:
            raise StoreError(f"{dataset}/{feature_set} is incomplete: {len(missing)} of {len(manifest_ids)} "
                             f"dialogues not extracted (first: {missing[0]})", file=str(self.path),
                             fix="rerun the same merc-extract command; it resumes where it stopped")
        dim = int(fs.attrs["dim"])
        dtype = _stored_dtype(fs.attrs)
        n_utt = self._dataset(dataset).attrs["manifest"]
        lengths = {d["id"]: len(d["utterances"]) for d in n_utt["dialogues"]}
        pooled, valid = [], []
        for i in manifest_ids:
            if i in complete:
                p, v = _read_arrays(self.path / dataset / feature_set / complete[i], ("pooled", "valid"))
                pooled.append(p)
                valid.append(v)
            else:
                pooled.append(np.zeros((lengths[i], dim), dtype))
                valid.append(np.zeros(lengths[i], bool))
        offsets = np.cumsum([0] + [len(v) for v in valid]).astype(np.int64)
        return PooledFeatures(manifest_ids, offsets, np.concatenate(pooled), np.concatenate(valid))

    def load_frames(self, dataset: str, feature_set: str, dialogue_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Frame/token sequence of one dialogue and the row offsets of each utterance in it."""
        self._feature_set(dataset, feature_set)
        return self.dialogue_frames(dataset, feature_set, dialogue_id)

    def dialogue_frames(self, dataset: str, feature_set: str, dialogue_id: str) -> tuple[np.ndarray, np.ndarray]:
        """`load_frames` without checking the feature set first (callers that read every dialogue check it once)."""
        folder = self.path / dataset / feature_set / dialogue_key(dialogue_id)
        if not (folder / "zarr.json").exists():
            raise StoreError(f"{dataset}/{feature_set} has no dialogue {dialogue_id!r}", file=str(self.path),
                             fix="rerun the same merc-extract command; it resumes where it stopped")
        if not all((folder / name / "zarr.json").exists() for name in ("frames", "offsets")):
            raise StoreError(f"{dataset}/{feature_set} has no frames for {dialogue_id}", file=str(self.path),
                             fix="re-extract with --keep-frames")
        frames, offsets = _read_arrays(folder, ("frames", "offsets"))
        return frames, offsets

    # -- status / verify ------------------------------------------------------------------------------
    def status(self) -> list[dict]:
        rows = []
        for ds in self.datasets():
            n_dia = self._dataset(ds).attrs.get("n_dialogues", 0)
            for fsname in self.feature_sets(ds):
                fs = self._feature_set(ds, fsname)
                report = fs.attrs.get("report", {})
                done = len(_complete_groups(self.path / ds / fsname))
                rows.append({"dataset": ds, "feature_set": fsname, "encoder": fs.attrs.get("encoder", ""),
                             "modality": fs.attrs.get("modality", ""), "dim": fs.attrs.get("dim"),
                             "dialogues_done": done, "dialogues_total": n_dia,
                             "utterances_failed": report.get("utterances_failed", 0),
                             "packed": "packed" in fs, "fingerprint": fs.attrs.get("fingerprint_hash")})
        return rows

    def verify(self) -> list[str]:
        """Check every committed dialogue against the manifest; return a list of problems (empty = OK)."""
        problems: list[str] = []
        for ds in self.datasets():
            manifest = self._dataset(ds).attrs["manifest"]
            lengths = {d["id"]: len(d["utterances"]) for d in manifest["dialogues"]}
            for fsname in self.feature_sets(ds):
                fs = self._feature_set(ds, fsname)
                dim = fs.attrs.get("dim")
                groups = list(_dialogue_groups(self.path / ds / fsname))
                complete = _committed(groups)
                partial = [k for k, a in groups if not a.get("complete")]
                for k in partial:
                    problems.append(f"{ds}/{fsname}/{k}: uncommitted (a killed run); rerun merc-extract to redo it")
                missing = [i for i in lengths if i not in complete]
                if missing:
                    problems.append(f"{ds}/{fsname}: {len(missing)} dialogue(s) not extracted yet (first: {missing[0]})")
                for dia_id, key in complete.items():
                    g = fs[key]
                    if dia_id not in lengths:
                        problems.append(f"{ds}/{fsname}/{key}: dialogue {dia_id!r} is not in the manifest")
                        continue
                    pooled, valid = g["pooled"], g["valid"]
                    if pooled.shape != (lengths[dia_id], dim) or valid.shape != (lengths[dia_id],):
                        problems.append(f"{ds}/{fsname}/{key}: shape {pooled.shape} != ({lengths[dia_id]}, {dim})")
                        continue
                    values = pooled[...].astype(np.float32)[valid[...]]
                    if not np.isfinite(values).all():
                        problems.append(f"{ds}/{fsname}/{key}: non-finite values in valid rows")
                    if "frames" in g:
                        offsets = g["offsets"][...]
                        if offsets[0] != 0 or offsets[-1] != g["frames"].shape[0] or (np.diff(offsets) < 0).any():
                            problems.append(f"{ds}/{fsname}/{key}: frame offsets do not cover the frames")
                if "packed" in fs and not missing:
                    p = self.load_pooled(ds, fsname)
                    u = self._load_unpacked(fs, ds, fsname, list(lengths), allow_incomplete=True)
                    if not (np.array_equal(p.pooled, u.pooled) and np.array_equal(p.valid, u.valid)):
                        problems.append(f"{ds}/{fsname}/packed: differs from the per-dialogue arrays; rerun merc-extract")
        return problems
