"""Reading manifests and features back: what stage 2 (heads), `status` and `verify` use.

Every array is read with its recorded checksums (files.py), and a feature set serves only dialogues
that are committed and current: extracted from what the manifest now says their encoder reads. A
missing, damaged or stale dialogue is a `StoreError` naming it and the `merc-extract` command that
redoes exactly those dialogues. Imports nothing heavier than zarr and numpy, so heads start fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from merc.data_manifests.manifest import LabelSpace, Manifest

from . import table as tbl
from .files import DamagedError, check_files, read_array, read_attrs
from .layout import (
    DIALOGUE_OFFSETS,
    FRAME_ARRAYS,
    FRAMES,
    MANIFEST,
    PACKED,
    POOLED,
    VALID,
    StoreError,
    check_format,
    dialogue_key,
    feature_inputs,
    inputs_digest,
    members_digest,
    normalize_levels,
    utterance_inputs,
)


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


@dataclass
class DialogueState:
    """One manifest dialogue as a feature set holds it."""

    dialogue_id: str
    key: str
    attrs: dict  # the commit marker's attributes ({} when the group is missing)
    state: str  # current | missing | stale

    @property
    def checksums(self) -> dict:
        return self.attrs.get("checksums") or {}


class StoreReader:
    """Reads one store. Tables, markers and attributes are read once per reader and kept."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise StoreError("--store points at a file, not a Zarr store folder", file=str(self.path),
                             fix="pass the folder merc-extract wrote (e.g. cache.zarr)")
        attrs = read_attrs(self.path)
        if attrs is None and (self.path / "zarr.json").exists():
            raise StoreError("the store's own zarr.json is damaged (not JSON)", file=str(self.path / "zarr.json"),
                             fix='restore it: {"attributes": {"merc_store_format": 2}, "zarr_format": 3, '
                                 '"node_type": "group"} (merc-extract verify then checks everything below it)')
        if attrs is None:
            raise StoreError(f"no Zarr store at {self.path}", file=str(self.path),
                             fix="run merc-extract first, or pass the right --store path")
        check_format(self.path, attrs)
        self._tables: dict[str, dict[str, np.ndarray]] = {}
        self._states: dict[tuple[str, str], list[DialogueState]] = {}

    # -- datasets and their manifests ------------------------------------------------------------------
    def datasets(self) -> list[str]:
        return sorted(c.name for c in self.path.iterdir() if c.is_dir() and (c / "zarr.json").is_file())

    def feature_sets(self, dataset: str) -> list[str]:
        folder = self._dataset_folder(dataset)
        return sorted(c.name for c in folder.iterdir()
                      if c.is_dir() and c.name != MANIFEST and (c / "zarr.json").is_file())

    def dataset_attrs(self, dataset: str) -> dict:
        attrs = read_attrs(self._dataset_folder(dataset))
        if attrs is None or "manifest" not in attrs:
            raise StoreError(f"dataset {dataset!r} has no readable metadata (zarr.json damaged or half-written)",
                             file=str(self.path / dataset),
                             fix=f"rerun merc-extract --dataset {dataset} ... --store {self.path}: it rewrites the table")
        return attrs

    def manifest_columns(self, dataset: str) -> dict[str, np.ndarray]:
        """The utterance table: one array per column, rows in manifest order (see table.py)."""
        if dataset not in self._tables:
            attrs = self.dataset_attrs(dataset)
            try:
                self._tables[dataset] = tbl.read_table(self._dataset_folder(dataset), attrs.get("manifest_checksums"))
            except DamagedError as exc:
                rerun = (self._import_command(dataset, "", {"encoder": "import:"}, attrs)
                         if (attrs.get("source") or {}).get("adapter") == "import" else
                         f"merc-extract --dataset {dataset} --root {attrs['manifest'].get('root') or '<corpus>'} "
                         f"--encoder <any> --store {self.path}")
                raise StoreError(f"{dataset}: {exc.finding.problem}", file=str(self.path / dataset),
                                 fix=f"rerun {rerun}: it rewrites the table, features are kept") from None
        return self._tables[dataset]

    def label_spaces(self, dataset: str) -> dict[str, LabelSpace]:
        return {s["name"]: LabelSpace.from_dict(s) for s in self.dataset_attrs(dataset)["manifest"]["label_spaces"]}

    def manifest(self, dataset: str) -> Manifest:
        return tbl.manifest_from_table(self.dataset_attrs(dataset)["manifest"], self.manifest_columns(dataset))

    def dialogue_ids(self, dataset: str) -> list[str]:
        """Dialogue ids in manifest order."""
        ids = self.manifest_columns(dataset)["dialogue_id"]
        _, first = np.unique(ids, return_index=True)
        return [str(ids[i]) for i in np.sort(first)]

    # -- feature sets --------------------------------------------------------------------------------
    def info(self, dataset: str, feature_set: str) -> dict:
        """A feature set's attributes (encoder, fingerprint, dim, dtype, modality, levels, inputs, report)."""
        folder = self._fs_folder(dataset, feature_set)
        attrs = read_attrs(folder)
        if attrs is None or "dim" not in attrs:
            raise StoreError(f"feature set {dataset}/{feature_set} has no readable metadata", file=str(folder),
                             fix=f"re-extract it: {self.extract_command(dataset, feature_set, {})} --overwrite")
        return {**attrs, "levels": normalize_levels(attrs.get("levels", ["utterance"]))}

    def has_level(self, dataset: str, feature_set: str, level: str) -> bool:
        return level in self.info(dataset, feature_set)["levels"]

    def dialogue_states(self, dataset: str, feature_set: str) -> list[DialogueState]:
        """Every manifest dialogue, in order, with its commit marker and whether it is current."""
        cache_key = (dataset, feature_set)
        if cache_key not in self._states:
            info = self.info(dataset, feature_set)
            fields = feature_inputs(info)
            digests = self._input_digests(dataset, fields)
            folder = self._fs_folder(dataset, feature_set)
            states = []
            for dia_id, digest in digests.items():
                key = dialogue_key(dia_id)
                attrs = read_attrs(folder / key) or {}
                state = ("missing" if not attrs.get("complete") else
                         "stale" if attrs.get("inputs") != digest else "current")
                states.append(DialogueState(dia_id, key, attrs, state))
            self._states[cache_key] = states
        return self._states[cache_key]

    def _input_digests(self, dataset: str, fields: tuple[str, ...]) -> dict[str, str]:
        cols = self.manifest_columns(dataset)
        per_dialogue: dict[str, list] = {}
        for r in range(len(cols["utterance_id"])):
            per_dialogue.setdefault(str(cols["dialogue_id"][r]), []).append(utterance_inputs(
                fields, str(cols["utterance_id"][r]), str(cols["text"][r]), str(cols["speaker"][r]),
                str(cols["media_digest"][r]) or None, _num(cols["start"][r]), _num(cols["end"][r])))
        return {d: inputs_digest(d, rows) for d, rows in per_dialogue.items()}

    def load_pooled(self, dataset: str, feature_set: str, *, fingerprint_hash: str | None = None,
                    allow_incomplete: bool = False) -> PooledFeatures:
        """All pooled rows of a feature set in manifest order (one read when packed/ is current).

        Refuses missing or stale dialogues (unless `allow_incomplete`: their rows read as invalid zeros)
        and damaged files, naming the dialogues and the command that redoes them.
        """
        info = self.info(dataset, feature_set)
        if fingerprint_hash and info.get("fingerprint_hash") != fingerprint_hash:
            raise StoreError(
                f"{dataset}/{feature_set} has fingerprint {info.get('fingerprint_hash')}, the run expected "
                f"{fingerprint_hash}: the store now holds features made with other encoder settings",
                file=str(self.path), fix="evaluate with the store the run was trained on (--store), or retrain the run "
                                         "on the current features")
        states = self.dialogue_states(dataset, feature_set)
        if not allow_incomplete:
            self._require_current(dataset, feature_set, states)
        packed = self._packed(dataset, feature_set, states)
        if packed is not None:
            return packed
        dim, dtype = int(info["dim"]), np.dtype(info.get("dtype", "float16"))
        lengths = self.utterance_counts(dataset)
        pooled, valid = [], []
        for s in states:
            if s.state == "current":
                p, v = self._arrays(dataset, feature_set, s, (POOLED, VALID))
            else:
                p, v = np.zeros((lengths[s.dialogue_id], dim), dtype), np.zeros(lengths[s.dialogue_id], bool)
            pooled.append(p)
            valid.append(v)
        offsets = np.cumsum([0] + [len(v) for v in valid]).astype(np.int64)
        return PooledFeatures([s.dialogue_id for s in states], offsets,
                              np.concatenate(pooled) if pooled else np.zeros((0, dim), dtype),
                              np.concatenate(valid) if valid else np.zeros(0, bool))

    def load_frames(self, dataset: str, feature_set: str, dialogue_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Frame/token sequence of one dialogue [n_frames, D] and each utterance's row offsets [n_utt + 1]."""
        if not self.has_level(dataset, feature_set, FRAMES):
            raise StoreError(f"{dataset}/{feature_set} holds no frame/token sequences (levels: "
                             f"{self.info(dataset, feature_set)['levels']})", file=str(self.path),
                             fix=f"re-extract it with frames: {self.extract_command(dataset, feature_set, {})} "
                                 "--keep-frames --overwrite")
        states = {s.dialogue_id: s for s in self.dialogue_states(dataset, feature_set)}
        if dialogue_id not in states:
            raise StoreError(f"{dataset} has no dialogue {dialogue_id!r}", file=str(self.path),
                             fix="use a dialogue id of the manifest (merc-extract status lists the dataset)")
        s = states[dialogue_id]
        self._require_current(dataset, feature_set, [s])
        frames, offsets = self._arrays(dataset, feature_set, s, FRAME_ARRAYS)
        if len(offsets) != s.attrs.get("n_utt", -1) + 1 or offsets[0] != 0 or offsets[-1] != len(frames):
            raise StoreError(f"{dataset}/{feature_set} dialogue {dialogue_id!r}: frame offsets do not cover its "
                             "frames", file=str(self._fs_folder(dataset, feature_set) / s.key),
                             fix=self._redo_fix(dataset, feature_set))
        return frames, offsets

    # -- internals -------------------------------------------------------------------------------------
    def _arrays(self, dataset: str, feature_set: str, s: DialogueState, names) -> list[np.ndarray]:
        folder = self._fs_folder(dataset, feature_set) / s.key
        try:
            return [read_array(folder, n, s.checksums) for n in names]
        except DamagedError as exc:
            raise StoreError(f"{dataset}/{feature_set} dialogue {s.dialogue_id!r} is damaged: {exc.finding.problem}",
                             file=str(folder), fix=self._redo_fix(dataset, feature_set)) from None

    def _packed(self, dataset: str, feature_set: str, states: list[DialogueState]) -> PooledFeatures | None:
        """The packed copy when it was made from exactly the current dialogues, its files checked."""
        if any(s.state != "current" for s in states):
            return None
        folder = self._fs_folder(dataset, feature_set) / PACKED
        attrs = read_attrs(folder) or {}
        if not attrs.get("complete") or attrs.get("members") != members_digest(
                [(s.dialogue_id, s.checksums) for s in states]):
            return None
        try:
            pooled, valid, offsets = (read_array(folder, n, attrs.get("checksums") or {})
                                      for n in (POOLED, VALID, DIALOGUE_OFFSETS))
        except DamagedError:
            return None  # the per-dialogue arrays are the truth; packed is only a faster copy of them
        return PooledFeatures([s.dialogue_id for s in states], offsets, pooled, valid)

    def _require_current(self, dataset: str, feature_set: str, states: list[DialogueState]) -> None:
        missing = [s.dialogue_id for s in states if s.state == "missing"]
        stale = [s.dialogue_id for s in states if s.state == "stale"]
        if not (missing or stale):
            return
        parts = []
        if missing:
            parts.append(f"{len(missing)} dialogue(s) not extracted (first: {missing[0]})")
        if stale:
            parts.append(f"{len(stale)} dialogue(s) extracted from other inputs than the manifest now holds "
                         f"(text, clip or time span changed; first: {stale[0]})")
        raise StoreError(f"{dataset}/{feature_set} is not current: {'; '.join(parts)}", file=str(self.path),
                         fix=self._redo_fix(dataset, feature_set))

    def _redo_fix(self, dataset: str, feature_set: str) -> str:
        return (f"rerun {self.extract_command(dataset, feature_set, None)}: it redoes exactly the missing, stale or "
                "damaged dialogues and keeps the rest")

    def extract_command(self, dataset: str, feature_set: str, info: dict | None) -> str:
        """The merc-extract command that (re)writes a feature set, from what the store recorded."""
        if info is None:
            try:
                info = self.info(dataset, feature_set)
            except StoreError:
                info = {}
        try:
            root = self.dataset_attrs(dataset)["manifest"].get("root") or "<corpus>"
        except StoreError:
            root = "<corpus>"
        try:
            attrs = self.dataset_attrs(dataset)
        except StoreError:
            attrs = {"manifest": {}}
        source = attrs.get("source") or {}
        encoder = info.get("encoder") or feature_set
        if source.get("adapter") == "import":
            return self._import_command(dataset, feature_set, info, attrs)
        parts = [f"merc-extract --dataset {source.get('adapter', dataset)} --root {root} --encoder {encoder}"]
        for k, v in sorted((source.get("options") or {}).items()):
            value = ",".join(v) if isinstance(v, (list, tuple)) else v
            parts.append(f"--protocol {value}" if k == "protocol" else f"--adapter-option {k}={value}")
        if attrs["manifest"].get("name", dataset) != dataset:
            parts.append(f"--name {dataset}")
        return self._feature_set_options(parts, encoder, feature_set, info)

    def _import_command(self, dataset: str, feature_set: str, info: dict, attrs: dict) -> str:
        """An imported dataset: `merc-extract import` rewrites an imported feature set; a feature set extracted
        from the imported manifest is redone with `--from-store`."""
        encoder = info.get("encoder") or feature_set
        corpus = attrs["manifest"].get("name", dataset)
        name = f" --name {dataset}" if corpus != dataset else ""
        if str(encoder).startswith("import:"):
            # the feature set's own sources first: an import added onto a stored dataset (attach.py) has other files
            sources = (info.get("provenance") or {}).get("sources") or []
            label_files = [s.get("file") for s in sources if s.get("role") == "labels"]
            files = [s.get("file") for s in sources if s.get("role") != "labels" and s.get("file")]
            if not files:
                files = (attrs.get("source") or {}).get("options", {}).get("files") or ["<file>"]
                label_files = files[1:2]
            labels = f" --labels {label_files[0]}" if label_files else ""
            return f"merc-extract import {files[0]}{labels} --dataset {corpus}{name} --store {self.path}"
        parts = [f"merc-extract --dataset {dataset} --from-store --encoder {encoder}"]
        return self._feature_set_options(parts, encoder, feature_set, info)

    def _feature_set_options(self, parts: list[str], encoder: str, feature_set: str, info: dict) -> str:
        """The end every redo command shares: the feature set's name, its frames, the store."""
        if encoder != feature_set:
            parts.append(f"--feature-set {feature_set}")
        if FRAMES in info.get("levels", []):
            parts.append("--keep-frames")
        parts.append(f"--store {self.path}")
        return " ".join(parts)

    def utterance_counts(self, dataset: str) -> dict[str, int]:
        """dialogue id -> its number of utterances."""
        ids, counts = np.unique(self.manifest_columns(dataset)["dialogue_id"].astype(str), return_counts=True)
        return dict(zip(ids.tolist(), counts.tolist(), strict=True))

    def _dataset_folder(self, dataset: str) -> Path:
        folder = self.path / dataset
        if not (folder / "zarr.json").is_file() or dataset in ("", ".", ".."):
            have = ", ".join(self.datasets()) or "none"
            raise StoreError(f"dataset {dataset!r} is not in the store (it has: {have})", file=str(self.path),
                             fix=f"run merc-extract --dataset {dataset} ... --store {self.path}, or pass one of: {have}")
        return folder

    def _fs_folder(self, dataset: str, feature_set: str) -> Path:
        folder = self._dataset_folder(dataset) / feature_set
        if feature_set in (MANIFEST, "", ".", "..") or not (folder / "zarr.json").is_file():
            have = ", ".join(self.feature_sets(dataset)) or "none"
            raise StoreError(f"feature set {feature_set!r} is not in {dataset} (it has: {have})", file=str(self.path),
                             fix=f"extract it (merc-extract --dataset {dataset} ... --encoder <encoder> "
                                 f"--feature-set {feature_set} --store {self.path}), or pass one of: {have}")
        return folder

    def verify(self) -> list[str]:
        """Problems found by reading every file against its checksum (empty = OK); see verify.py."""
        from .verify import verify_store

        return verify_store(self).lines()

    def status(self) -> list[dict]:
        from .verify import status_rows

        return status_rows(self)

    def packed_current(self, dataset: str, feature_set: str) -> bool:
        states = self.dialogue_states(dataset, feature_set)
        folder = self._fs_folder(dataset, feature_set) / PACKED
        attrs = read_attrs(folder) or {}
        return (all(s.state == "current" for s in states) and bool(attrs.get("complete"))
                and attrs.get("members") == members_digest([(s.dialogue_id, s.checksums) for s in states])
                and not check_files(folder, attrs.get("checksums") or {}))


def _num(v) -> float | None:
    return None if np.isnan(v) else float(v)


__all__ = ["DialogueState", "PooledFeatures", "StoreReader"]
