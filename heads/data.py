"""The stage-2 reader: chosen feature sets of one dataset loaded into memory once, served as dialogue batches.

Heads train for many epochs over a few tens of MB of cached features, so everything is read from the
store once (the packed one-read path of `StoreReader.load_pooled`), kept as float16 numpy/torch arrays,
and each batch is gathered and cast to float32 on the fly. Nothing here imports an encoder or a media
library: `merc-heads train` must start in about a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from merc.data_manifests.errors import MercError
from merc.data_manifests.manifest import LabelSpace
from merc.extract.store import (
    FRAMES,
    MODALITY_OF_ROLE,
    ROLE_OF_MODALITY,
    ROLES,
    StoreError,
    StoreReader,
    finite_abs_max,
)

from .models.base import Batch, TaskSpec

NORMALIZE = ("zscore", "none")
ROLE_ALIASES = {**{r: r for r in ROLES}, **ROLE_OF_MODALITY}  # t / text, a / audio, v / video


class HeadsError(MercError):
    """A stage-2 request that cannot be served as asked (unknown feature set, task, role, option...)."""

    def __init__(self, problem: str, *, file: str | None = None, fix: str = ""):
        super().__init__(problem, file=file, fix=fix)
        if file is None:  # most of these are about the command line, not a file: no "-:" prefix
            self.args = (f"{problem}. Fix: {fix}" if fix else problem,)

    def __str__(self) -> str:
        return str(self.args[0])


# ---------------------------------------------------------------------------------------------------
# --features and --task parsing
# ---------------------------------------------------------------------------------------------------

def parse_features(spec: str | list[str] | dict[str, str]) -> list[tuple[str | None, str]]:
    """`"minilm,egemaps"` or `"t=minilm,a=egemaps"` -> [(role or None, feature_set), ...]."""
    if isinstance(spec, dict):
        return [(ROLE_ALIASES.get(r, r), fs) for r, fs in spec.items()]
    items = spec if isinstance(spec, list) else spec.split(",")
    out: list[tuple[str | None, str]] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        if "=" in item:
            role, name = (s.strip() for s in item.split("=", 1))
            if role not in ROLE_ALIASES:
                raise HeadsError(f"unknown modality role {role!r} in --features {item!r}",
                                 fix="use t= (text), a= (audio) or v= (video), e.g. --features t=minilm,a=egemaps")
            out.append((ROLE_ALIASES[role], name))
        else:
            out.append((None, item))
    if not out:
        raise HeadsError("--features is empty", fix="name at least one feature set, e.g. --features minilm,egemaps")
    return out


def resolve_roles(reader: StoreReader, dataset: str, spec: str | list[str] | dict[str, str]) -> dict[str, str]:
    """Role -> feature set. A bare name takes the role of the modality the store recorded for it."""
    roles: dict[str, str] = {}
    for role, name in parse_features(spec):
        info = reader.info(dataset, name)  # StoreError naming the sets it has when unknown
        if role is None:
            modality = info.get("modality", "")
            role = ROLE_OF_MODALITY.get(modality)
            if role is None:
                raise HeadsError(f"feature set {name!r} has no known modality ({modality!r}) to take a role from",
                                 file=str(reader.path), fix=f"name its role explicitly, e.g. --features t={name}")
        if role in roles:
            raise HeadsError(
                f"feature sets {roles[role]!r} and {name!r} both play role {role!r} ({_role_word(role)})",
                file=str(reader.path),
                fix="give each feature set its own role explicitly, e.g. --features t=minilm,a=egemaps,v=clip")
        roles[role] = name
    return {r: roles[r] for r in ROLES if r in roles}


def _role_word(role: str) -> str:
    return MODALITY_OF_ROLE[role]


def resolve_tasks(spaces: dict[str, LabelSpace], names: str | list[str] | None) -> list[TaskSpec]:
    """TaskSpecs for `--task a,b` (first = primary); None -> the dataset's first label space; "all" -> every one."""
    if names is None:
        chosen = list(spaces)[:1]
    elif names == "all" or names == ["all"]:
        chosen = list(spaces)
    else:
        chosen = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    for n in chosen:
        if n not in spaces:
            raise HeadsError(f"the dataset has no label space {n!r}",
                             fix=f"pass --task with one of: {', '.join(spaces)} (comma-separated for several)")
    if not chosen:
        raise HeadsError("the dataset declares no label spaces", fix="rebuild its manifest with labels")
    return [TaskSpec(n, spaces[n].kind, tuple(spaces[n].classes)) for n in chosen]


# ---------------------------------------------------------------------------------------------------
# the in-memory dataset
# ---------------------------------------------------------------------------------------------------

@dataclass
class Frames:
    """One role's frame/token sequences, at most `max_frames` per utterance, packed over all utterances.

    Frames of utterance row i are `data[offsets[i]:offsets[i + 1]]` (float16); the extra last row is zeros,
    the row that padded frame positions gather.
    """

    data: torch.Tensor  # [n_frames_total + 1, D] float16 (float32 if values would not fit)
    offsets: np.ndarray  # [N + 1] int64


@dataclass
class HeadsData:
    """Features, labels and structure of one dataset, rows in manifest order (N utterances)."""

    dataset: str
    store: str
    roles: dict[str, str]  # role -> feature set
    fingerprints: dict[str, str]  # role -> fingerprint hash of its feature set
    tasks: list[TaskSpec]
    feats: dict[str, torch.Tensor]  # role -> [N + 1, D] float16 (float32 if too wide); failed rows, extra last row: 0
    valid: dict[str, np.ndarray]  # role -> [N] bool
    labels: dict[str, np.ndarray]  # categorical [N] int64 (-1), regression [N] float32 (NaN), multilabel [N, C] float32 (-1)
    speakers: np.ndarray  # [N] int64, index by first appearance within the dialogue
    utterance_ids: np.ndarray  # [N] object (str)
    dialogue_ids: list[str]
    dialogue_offsets: np.ndarray  # [n_dialogues + 1]
    dialogue_splits: np.ndarray  # [n_dialogues] object (str)
    frames: dict[str, Frames] = field(default_factory=dict)
    max_frames: int | None = None
    normalize: str = "none"  # "zscore": every feature dimension standardised with `stats`
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # role -> (mean [D], std [D])

    # -- loading ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, store: str, dataset: str, features: str | list[str] | dict[str, str], *,
             tasks: str | list[str] | None = None, frames: bool = False, max_frames: int | None = 64,
             fingerprints: dict[str, str] | None = None, normalize: str = "zscore",
             stats: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> HeadsData:
        """Read the chosen feature sets (and, with frames=True, their frame sequences) into memory.

        `fingerprints` (role -> hash, from a run's config.json) makes the read fail loudly when the store now
        holds features made with other encoder settings than the ones a checkpoint was trained on.

        `normalize="zscore"` standardises every feature dimension with the mean and std of the train split's
        valid rows (or with `stats`, a saved run's), so that openSMILE functionals (raw values up to ~1e3-1e11)
        and unit-norm sentence embeddings (~0.05) reach a head on one scale. Frames use their role's
        pooled statistics. `normalize="none"` passes the stored values through, as the papers' code does.
        """
        if normalize not in NORMALIZE:
            raise HeadsError(f"unknown normalize option {normalize!r}", fix=f"use one of: {', '.join(NORMALIZE)}")
        reader = StoreReader(store)
        roles = resolve_roles(reader, dataset, features)
        task_specs = resolve_tasks(reader.label_spaces(dataset), tasks)
        cols = reader.manifest_columns(dataset)

        splits = np.asarray(cols["split"]).astype(object)  # [N], per utterance
        feats, valid, fps, role_stats = {}, {}, {}, {}
        dialogue_offsets = None
        for role, name in roles.items():
            expected = (fingerprints or {}).get(role)
            pooled = reader.load_pooled(dataset, name, fingerprint_hash=expected)
            valid[role] = np.asarray(pooled.valid, dtype=bool)
            x = np.zeros((len(valid[role]) + 1, pooled.pooled.shape[1]), dtype=np.float32)
            x[:-1][valid[role]] = pooled.pooled[valid[role]]  # a failed extraction reads as zeros, whatever is stored
            if normalize == "zscore":
                if stats is not None and role in stats:
                    mean, std = (np.asarray(a, dtype=np.float32) for a in stats[role])
                else:
                    mean, std = _train_stats(x[:-1], valid[role] & (splits == "train"), f"{dataset}/{name}")
                if mean.shape != (x.shape[1],):
                    raise HeadsError(f"saved feature statistics for role {role!r} have {mean.shape[0]} dims, "
                                     f"{dataset}/{name} has {x.shape[1]}", file=str(store),
                                     fix="evaluate with the store and feature sets the run was trained on")
                role_stats[role] = (mean, std)
                x[:-1][valid[role]] = (x[:-1][valid[role]] - mean) / std
            feats[role] = torch.from_numpy(_compact(x))
            fps[role] = reader.info(dataset, name).get("fingerprint_hash", "")
            dialogue_offsets = pooled.dialogue_offsets
            dialogue_ids = pooled.dialogue_ids

        labels = {}
        for t in task_specs:
            col = cols[f"label_{t.name}"]
            if t.kind == "categorical":
                labels[t.name] = col.astype(np.int64)
            elif t.kind == "multilabel":
                labels[t.name] = col.astype(np.float32)
            else:
                labels[t.name] = col.astype(np.float32)

        offsets = np.asarray(dialogue_offsets, dtype=np.int64)
        data = cls(dataset=dataset, store=str(store), roles=roles, fingerprints=fps, tasks=task_specs,
                   feats=feats, valid=valid, labels=labels,
                   speakers=_speaker_index(np.asarray(cols["speaker"]).astype(object), offsets),
                   utterance_ids=np.asarray(cols["utterance_id"]).astype(object), dialogue_ids=list(dialogue_ids),
                   dialogue_offsets=offsets, dialogue_splits=splits[offsets[:-1]],
                   max_frames=max_frames, normalize=normalize, stats=role_stats)
        if frames:
            for role, name in roles.items():
                data.frames[role] = _load_frames(reader, dataset, name, data.dialogue_ids, offsets, max_frames,
                                                 role_stats.get(role))
        return data

    # -- structure -----------------------------------------------------------------------------------
    @property
    def dims(self) -> dict[str, int]:
        return {r: int(x.shape[1]) for r, x in self.feats.items()}

    @property
    def n_utterances(self) -> int:
        return int(self.dialogue_offsets[-1])

    def split_dialogues(self, split: str) -> np.ndarray:
        """Dialogue indices of a split, in manifest order."""
        return np.flatnonzero(self.dialogue_splits == split)

    def split_rows(self, split: str) -> np.ndarray:
        """Utterance rows of a split, in manifest order (the order `batches(split)` yields them in)."""
        dias = self.split_dialogues(split)
        return _rows_of(self.dialogue_offsets, dias)

    def select_roles(self, roles: list[str] | tuple[str, ...]) -> HeadsData:
        """The same data restricted to a subset of modality roles (a modality ablation without reloading)."""
        missing = [r for r in roles if r not in self.roles]
        if missing:
            raise HeadsError(f"roles {missing} are not loaded (loaded: {', '.join(self.roles)})",
                             fix="add them to --features")
        keep = [r for r in ROLES if r in roles]
        return HeadsData(**{**self.__dict__,
                            "roles": {r: self.roles[r] for r in keep},
                            "fingerprints": {r: self.fingerprints[r] for r in keep},
                            "feats": {r: self.feats[r] for r in keep},
                            "valid": {r: self.valid[r] for r in keep},
                            "frames": {r: f for r, f in self.frames.items() if r in keep},
                            "stats": {r: st for r, st in self.stats.items() if r in keep}})

    # -- batching ------------------------------------------------------------------------------------
    def batches(self, split: str, batch_size: int, *, shuffle: bool = False,
                generator: np.random.Generator | None = None, pin_memory: bool = False) -> Iterator[Batch]:
        """Dialogue batches of a split; shuffled with `generator` (seeded by the trainer) when asked."""
        dias = self.split_dialogues(split)
        if shuffle:
            dias = dias[(generator or np.random.default_rng()).permutation(len(dias))]
        for i in range(0, len(dias), batch_size):
            yield self.batch(dias[i:i + batch_size], pin_memory=pin_memory)

    def n_batches(self, split: str, batch_size: int) -> int:
        return -(-len(self.split_dialogues(split)) // batch_size)

    def batch(self, dialogues: np.ndarray | list[int], pin_memory: bool = False) -> Batch:
        """Pad dialogues to the longest one: feats [B, T, D] float32, labels per task, masks."""
        dialogues = np.asarray(dialogues, dtype=np.int64)
        starts = self.dialogue_offsets[dialogues]
        lengths = self.dialogue_offsets[dialogues + 1] - starts
        n_dia, max_len = len(dialogues), int(lengths.max()) if len(dialogues) else 0
        steps = np.arange(max_len)
        mask_np = steps[None, :] < lengths[:, None]  # [B, T]
        rows_np = (starts[:, None] + steps[None, :])[mask_np]  # [n_real] rows in manifest order
        mask = torch.from_numpy(mask_np)
        # one gather per role: pads point at the zero row past the last utterance
        idx_bt = np.full((n_dia, max_len), self.n_utterances, dtype=np.int64)
        idx_bt[mask_np] = rows_np
        idx = torch.from_numpy(idx_bt.reshape(-1))

        feats, feat_mask = {}, {}
        for role, x_f16 in self.feats.items():
            feats[role] = x_f16.index_select(0, idx).view(n_dia, max_len, -1).float()
            fm = np.zeros((n_dia, max_len), dtype=bool)
            fm[mask_np] = self.valid[role][rows_np]
            feat_mask[role] = torch.from_numpy(fm)

        speakers = torch.zeros(n_dia, max_len, dtype=torch.long)
        speakers[mask] = torch.from_numpy(self.speakers[rows_np])

        labels = {}
        for t in self.tasks:
            values = torch.from_numpy(self.labels[t.name][rows_np])
            if t.kind == "categorical":
                y = torch.full((n_dia, max_len), -1, dtype=torch.long)
            elif t.kind == "regression":
                y = torch.full((n_dia, max_len), float("nan"), dtype=torch.float32)
            else:
                y = torch.full((n_dia, max_len, len(t.classes)), -1.0, dtype=torch.float32)
            y[mask] = values
            labels[t.name] = y

        frames = {role: self._frame_batch(f, rows_np, mask_np) for role, f in self.frames.items()}
        batch = Batch(feats=feats, mask=mask, speakers=speakers, labels=labels, feat_mask=feat_mask,
                      dialogue_ids=[self.dialogue_ids[i] for i in dialogues], frames=frames)
        return _pin(batch) if pin_memory else batch

    def _frame_batch(self, f: Frames, rows: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, L, D] frames and [B, T, L] frame mask, L = the longest utterance of the batch."""
        n_dia, max_len = mask.shape
        counts = f.offsets[rows + 1] - f.offsets[rows]  # frames per real utterance
        max_frames = max(int(counts.max()) if len(counts) else 0, 1)
        steps = np.arange(max_frames)
        fmask_real = steps[None, :] < counts[:, None]  # [n_real, L]
        zero_row = len(f.data) - 1
        src = np.full((n_dia, max_len, max_frames), zero_row, dtype=np.int64)
        src[mask] = np.where(fmask_real, f.offsets[rows][:, None] + steps[None, :], zero_row)
        fmask = np.zeros((n_dia, max_len, max_frames), dtype=bool)
        fmask[mask] = fmask_real
        x = f.data.index_select(0, torch.from_numpy(src.reshape(-1))).view(n_dia, max_len, max_frames, -1).float()
        return x, torch.from_numpy(fmask)


def _train_stats(x: np.ndarray, rows: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std (float64 sums, float32 result) over the train split's valid rows."""
    if not rows.any():
        raise HeadsError(f"{what}: no valid train-split utterances to compute feature statistics from",
                         fix="train on a dataset with a train split, or pass --set normalize=none")
    sel = x[rows].astype(np.float64)
    mean, std = sel.mean(0), sel.std(0)
    std = np.where(std > 1e-6 * np.maximum(1.0, np.abs(mean)), std, 1.0)  # constant dims: centre only
    return mean.astype(np.float32), std.astype(np.float32)


def _compact(x: np.ndarray) -> np.ndarray:
    """float16 in memory (half the RAM and gather traffic) unless values would not fit."""
    return x.astype(np.float16) if finite_abs_max(x) < 6e4 else x


def _rows_of(dialogue_offsets: np.ndarray, dialogues: np.ndarray) -> np.ndarray:
    if len(dialogues) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(dialogue_offsets[d], dialogue_offsets[d + 1]) for d in dialogues])


def _speaker_index(speakers: np.ndarray, dialogue_offsets: np.ndarray) -> np.ndarray:
    """Speaker names -> index of first appearance within each dialogue (0 = whoever speaks first)."""
    out = np.zeros(len(speakers), dtype=np.int64)
    for a, b in zip(dialogue_offsets[:-1], dialogue_offsets[1:], strict=True):
        _, first, inverse = np.unique(speakers[a:b], return_index=True, return_inverse=True)
        rank = np.argsort(np.argsort(first))  # unique (sorted by name) -> order of first appearance
        out[a:b] = rank[inverse]
    return out


def _load_frames(reader: StoreReader, dataset: str, feature_set: str, dialogue_ids: list[str],
                 dialogue_offsets: np.ndarray, max_frames: int | None,
                 stats: tuple[np.ndarray, np.ndarray] | None = None) -> Frames:
    """All dialogues' frames of one feature set, each utterance cut to its first `max_frames` frames
    (standardised with the role's pooled `stats` when given)."""
    if not reader.has_level(dataset, feature_set, FRAMES):
        levels = reader.info(dataset, feature_set)["levels"]
        raise HeadsError(f"{dataset}/{feature_set} holds no frame/token sequences (levels: {levels})",
                         file=str(reader.path),
                         fix=f"re-extract it with frames ({reader.extract_command(dataset, feature_set, None)} "
                             "--keep-frames --overwrite), or pick a head that needs only utterance-level "
                             "features (merc-heads list)")

    def one(dia_id: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            x, offs = reader.load_frames(dataset, feature_set, dia_id)
        except StoreError as err:
            raise HeadsError(err.finding.problem, file=str(reader.path), fix=err.finding.fix) from None
        counts = np.diff(offs)
        if max_frames is not None:
            counts = np.minimum(counts, max_frames)
        if counts.sum() != len(x):  # some utterances are cut to max_frames
            keep = np.concatenate([np.arange(s, s + c) for s, c in zip(offs[:-1], counts, strict=True)])
            x = x[keep]
        x = x.astype(np.float32)
        if stats is not None:
            x -= stats[0]
            x /= stats[1]
        return _compact(x), counts  # per dialogue: the whole set never exists in float32 unless it must

    with ThreadPoolExecutor(max_workers=4) as pool:
        parts = list(pool.map(one, dialogue_ids))
    counts = np.concatenate([c for _, c in parts]) if parts else np.zeros(0, np.int64)
    if len(counts) != dialogue_offsets[-1]:
        raise HeadsError(f"{dataset}/{feature_set}: frame offsets cover {len(counts)} utterances, "
                         f"the manifest has {dialogue_offsets[-1]}", file=str(reader.path),
                         fix="re-extract the feature set (merc-extract ... --overwrite --keep-frames)")
    dim = parts[0][0].shape[1] if parts else 1
    # float16 unless some dialogue's values do not fit, then all float32; + the zero row
    data = np.concatenate([x for x, _ in parts] + [np.zeros((1, dim), np.float16)])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return Frames(torch.from_numpy(data), offsets)


def _pin(batch: Batch) -> Batch:
    """Page-locked copies so that `.to("cuda", non_blocking=True)` really overlaps with compute."""
    pin = torch.Tensor.pin_memory
    return Batch(feats={k: pin(v) for k, v in batch.feats.items()}, mask=pin(batch.mask),
                 speakers=pin(batch.speakers), labels={k: pin(v) for k, v in batch.labels.items()},
                 feat_mask={k: pin(v) for k, v in batch.feat_mask.items()}, dialogue_ids=batch.dialogue_ids,
                 frames={k: (pin(x), pin(m)) for k, (x, m) in batch.frames.items()})
