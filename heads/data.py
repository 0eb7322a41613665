"""The stage-2 reader: chosen feature sets of one dataset loaded into memory once, served as padded batches.

Heads train for many epochs over a few tens of MB of cached features, so everything is read from the
store once (the packed one-read path of `StoreReader.load_pooled`), kept as float16 numpy/torch arrays,
and each batch is gathered and cast to float32 on the fly. Nothing here imports an encoder or a media
library: `merc-heads train` must start in about a second.

Batches come in the unit a paper trains in: `unit="dialogue"` (context heads: B dialogues padded to T
utterances) or `unit="utterance"` (heads without context, e.g. MMoLRE's batches of 8 segments: B utterances,
T = 1). Either way a head sees the same `Batch` layout.

Besides the label spaces stored with the manifest, MOSI/MOSEI-style classification tasks are derived on load
from a regression space X (`X_has0`, `X_non0`, `X7`; see `derived_tasks`); they are never stored.
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

from . import feature_cache
from .models.base import Batch, TaskSpec

NORMALIZE = ("zscore", "none")
ROLE_ALIASES = {**{r: r for r in ROLES}, **ROLE_OF_MODALITY}  # t / text, a / audio, v / video
UNITS = ("dialogue", "utterance")  # what one batch element is: a padded dialogue, or one utterance (T = 1)
MaxFrames = int | None | dict[str, int | None]  # frames kept per utterance: all roles, no cap, or per role


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


def resolve_max_frames(max_frames: MaxFrames, roles: dict[str, str] | list[str]) -> dict[str, int | None]:
    """Role -> frames kept per utterance for the loaded `roles`: an int caps every role, None caps none, a dict
    (keys t/a/v or text/audio/video) caps the roles it names and leaves the others uncapped. 0 means no cap,
    as `--set max_frames=0` does; roles the dict names that are not loaded are ignored."""
    def cap(value: object, what: str) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise HeadsError(f"max_frames {what}{value!r} is not a whole number >= 0",
                             fix="give a whole number of frames (0 or None = every frame), e.g. "
                                 "max_frames={'t': 64, 'a': 299}")
        return int(value) or None

    if isinstance(max_frames, dict):
        per_role: dict[str, int | None] = {}
        for key, value in max_frames.items():
            if key not in ROLE_ALIASES:
                raise HeadsError(f"max_frames names an unknown modality role {key!r}",
                                 fix="key it by t, a, v (or text, audio, video), e.g. max_frames={'t': 64, 'a': 299}")
            per_role[ROLE_ALIASES[key]] = cap(value, f"for {key!r} = ")
        return {r: per_role.get(r) for r in roles}
    every = cap(max_frames, "= ")
    return {r: every for r in roles}


def resolve_tasks(spaces: dict[str, LabelSpace], names: str | list[str] | None) -> list[TaskSpec]:
    """TaskSpecs for `--task a,b` (first = primary); None -> the dataset's first label space; "all" -> every
    stored one. A name may also be a derived task (`derived_tasks`), which is categorical."""
    derived = derived_tasks(spaces)
    if names is None:
        chosen = list(spaces)[:1]
    elif names == "all" or names == ["all"]:
        chosen = list(spaces)  # stored spaces only: derived tasks are asked for by name
    else:
        chosen = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    for n in chosen:
        if n not in spaces and n not in derived:
            raise HeadsError(f"the dataset has no label space {n!r}", fix=f"pass --task with {_task_choices(spaces)} "
                                                                          "(comma-separated for several)")
    if not chosen:
        raise HeadsError("the dataset declares no label spaces", fix="rebuild its manifest with labels")
    out = []
    for n in chosen:
        if n in spaces:
            out.append(TaskSpec(n, spaces[n].kind, tuple(spaces[n].classes)))
        else:
            out.append(TaskSpec(n, "categorical", DERIVED_RULES[derived[n][1]].classes))
    return out


def _task_choices(spaces: dict[str, LabelSpace]) -> str:
    """'one of: a, b; or derived: a_has0, ...' for error messages."""
    derived = derived_tasks(spaces)
    text = f"one of: {', '.join(spaces) or '(none stored)'}"
    return text + (f"; or one derived from a regression space: {', '.join(derived)}" if derived else "")


# ---------------------------------------------------------------------------------------------------
# derived label spaces: MOSI/MOSEI classification tasks read off a regression sentiment
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DerivedRule:
    """How a categorical task is read off a regression space X: its name is X + `suffix`."""

    suffix: str
    classes: tuple[str, ...]
    description: str


# MMSA `metricsTop.py` conventions (the same as heads/metrics.py applies to regression predictions), so the
# accuracy of a classifier trained on X_has0 / X_non0 / X7 is comparable with acc2_has0 / acc2_non0 / acc7.
DERIVED_RULES: dict[str, DerivedRule] = {
    "has0": DerivedRule("_has0", ("negative", "non-negative"),
                        "negative (< 0) vs non-negative (>= 0), every labelled segment (Acc2 Has0)"),
    "non0": DerivedRule("_non0", ("negative", "positive"),
                        "negative (< 0) vs positive (> 0); segments labelled exactly 0 are unlabelled (Acc2 Non0)"),
    "7class": DerivedRule("7", tuple(str(k) for k in range(-3, 4)),
                          "7 classes -3..3: clip to [-3, 3], then round half to even (np.round), as MMSA (Acc7)"),
}


def derivable(space: LabelSpace) -> bool:
    """Whether the MOSI/MOSEI rules make sense for a regression space: its declared value range (if any) lies in
    [-3, 3] and has values on both sides of 0 (MOSI/MOSEI sentiment; not IEMOCAP's 1..5 valence)."""
    if space.kind != "regression":
        return False
    if space.value_range is None:
        return True  # undeclared range: the rules are defined for any number, the scale is the user's call
    lo, hi = space.value_range
    return -3.0 <= lo < 0.0 < hi <= 3.0


def derived_tasks(spaces: dict[str, LabelSpace]) -> dict[str, tuple[str, str]]:
    """Derivable task name -> (source regression space, rule of DERIVED_RULES), e.g.
    {"sentiment_has0": ("sentiment", "has0"), "sentiment_non0": (..., "non0"), "sentiment7": (..., "7class")}.
    A stored space of the same name wins (it is not listed here)."""
    out: dict[str, tuple[str, str]] = {}
    for source, space in spaces.items():
        if derivable(space):
            for rule, r in DERIVED_RULES.items():
                name = source + r.suffix
                if name not in spaces:
                    out[name] = (source, rule)
    return out


def derive_labels(values: np.ndarray, rule: str) -> np.ndarray:
    """Class indices [N] int64 (-1 = unlabelled) of a derived task from regression values [N] (NaN = unlabelled).

    has0: 0 if x < 0 else 1; non0: 0 if x < 0, 1 if x > 0, -1 if x == 0; 7class: index of
    np.round(np.clip(x, -3, 3)) in -3..3 (numpy rounds half to even: 0.5 -> 0, -0.5 -> 0, 1.5 -> 2, 2.5 -> 2,
    -2.5 -> -2; 3.4 -> 3). Clipping first and rounding first agree because the bounds are whole numbers.
    """
    x = np.asarray(values, dtype=np.float64)
    labelled = ~np.isnan(x)
    if rule == "has0":
        y = (x >= 0).astype(np.int64)
    elif rule == "non0":
        y = (x > 0).astype(np.int64)
        labelled &= x != 0
    elif rule == "7class":
        y = np.round(np.clip(np.nan_to_num(x), -3, 3)).astype(np.int64) + 3
    else:
        raise HeadsError(f"unknown derivation rule {rule!r}", fix=f"use one of: {', '.join(DERIVED_RULES)}")
    return np.where(labelled, y, -1)


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
    max_frames: dict[str, int | None] = field(default_factory=dict)  # role -> frames kept per utterance (None: all)
    normalize: str = "none"  # "zscore": every feature dimension standardised with `stats`
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # role -> (mean [D], std [D])
    derived: dict[str, tuple[str, str]] = field(default_factory=dict)  # derived task -> (source space, rule)

    # -- loading ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, store: str, dataset: str, features: str | list[str] | dict[str, str], *,
             tasks: str | list[str] | None = None, frames: bool = False, max_frames: MaxFrames = 64,
             fingerprints: dict[str, str] | None = None, normalize: str = "zscore",
             stats: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> HeadsData:
        """Read the chosen feature sets (and, with frames=True, their frame sequences) into memory.

        `fingerprints` (role -> hash, from a run's config.json) makes the read fail loudly when the store now
        holds features made with other encoder settings than the ones a checkpoint was trained on.

        `normalize="zscore"` standardises every feature dimension with the mean and std of the train split's
        valid rows (or with `stats`, a saved run's), so that openSMILE functionals (raw values up to ~1e3-1e11)
        and unit-norm sentence embeddings (~0.05) reach a head on one scale. Frames use their role's
        pooled statistics. `normalize="none"` passes the stored values through, as the papers' code does.

        `max_frames` caps the frames/tokens kept per utterance (the first ones): an int caps every role, None
        keeps all, a dict {role: cap} gives each role its own (MMML: {"t": 64, "a": 299}, i.e. 64 tokens and
        ~6 s of data2vec frames); a role the dict does not name is not capped. `data.max_frames` records the
        cap of every loaded role. `tasks` may name derived tasks (`derived_tasks`), computed here.
        """
        if normalize not in NORMALIZE:
            raise HeadsError(f"unknown normalize option {normalize!r}", fix=f"use one of: {', '.join(NORMALIZE)}")
        reader = feature_cache.reader(store)  # a sweep worker keeps one per store (heads/feature_cache.py)
        roles = resolve_roles(reader, dataset, features)
        caps = resolve_max_frames(max_frames, roles)
        spaces = reader.label_spaces(dataset)
        task_specs = resolve_tasks(spaces, tasks)
        derivable_names = derived_tasks(spaces)
        derived = {t.name: derivable_names[t.name] for t in task_specs if t.name not in spaces}
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
            if t.name in derived:
                source, rule = derived[t.name]
                labels[t.name] = derive_labels(cols[f"label_{source}"], rule)
                continue
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
                   max_frames=caps, normalize=normalize, stats=role_stats, derived=derived)
        if frames:
            for role, name in roles.items():
                st = role_stats.get(role)

                def build(name=name, cap=caps[role], st=st) -> Frames:
                    return _load_frames(reader, dataset, name, data.dialogue_ids, offsets, cap, st)

                if isinstance(reader, feature_cache.CachingReader):
                    key = ("frames", dataset, name, caps[role], feature_cache.array_digest(*(st or (None,))))
                    data.frames[role] = reader.memo(key, build)
                else:
                    data.frames[role] = build()
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
        """Utterance rows [n] of a split, ascending (= manifest order).

        This is the order in which unshuffled `batches(split, ...)` yields the split's real utterances, for
        either unit: `trainer.predict` concatenates `logits[batch.mask]` over batches and pairs the result with
        these rows (dialogue unit: mask positions row-major; utterance unit: one utterance per batch row).
        """
        in_split = np.repeat(self.dialogue_splits == split, np.diff(self.dialogue_offsets))  # [N] bool
        return np.flatnonzero(in_split).astype(np.int64)

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
    def batches(self, split: str, batch_size: int, *, unit: str = "dialogue", shuffle: bool = False,
                generator: np.random.Generator | None = None, pin_memory: bool = False) -> Iterator[Batch]:
        """Batches of a split in the paper's unit; shuffled with `generator` (seeded by the trainer) when asked.

        unit="dialogue": `batch_size` dialogues padded to the longest, [B, T, D] (context heads).
        unit="utterance": `batch_size` utterances of the split, [B, 1, D] (heads without context; shuffling
        mixes utterances of all dialogues). Every utterance of the split is served once, labelled or not: the
        losses and metrics skip unlabelled ones. The last batch holds what is left.
        Either way shuffling takes one `generator.permutation` per call (per epoch), so a seeded generator
        gives the same order, and a restored generator continues it.
        """
        _check_unit(unit)  # here, not at the first next(): a wrong unit fails where it is asked for
        rng = (generator or np.random.default_rng()) if shuffle else None
        if unit == "utterance":
            return self._utterance_batches(split, batch_size, rng, pin_memory)
        return self._dialogue_batches(split, batch_size, rng, pin_memory)

    def _dialogue_batches(self, split: str, batch_size: int, rng: np.random.Generator | None,
                          pin_memory: bool) -> Iterator[Batch]:
        dias = self.split_dialogues(split)
        if rng is not None:
            dias = dias[rng.permutation(len(dias))]
        for i in range(0, len(dias), batch_size):
            yield self.batch(dias[i:i + batch_size], pin_memory=pin_memory)

    def _utterance_batches(self, split: str, batch_size: int, rng: np.random.Generator | None,
                           pin_memory: bool) -> Iterator[Batch]:
        rows = self.split_rows(split)
        if rng is not None:
            rows = rows[rng.permutation(len(rows))]
        for i in range(0, len(rows), batch_size):
            yield self.utterance_batch(rows[i:i + batch_size], pin_memory=pin_memory)

    def n_batches(self, split: str, batch_size: int, unit: str = "dialogue") -> int:
        """How many batches `batches(split, batch_size, unit=unit)` yields."""
        _check_unit(unit)
        n = len(self.split_rows(split)) if unit == "utterance" else len(self.split_dialogues(split))
        return -(-n // batch_size)

    def batch(self, dialogues: np.ndarray | list[int], pin_memory: bool = False) -> Batch:
        """Pad dialogues to the longest one: feats [B, T, D] float32, labels per task, masks."""
        dialogues = np.asarray(dialogues, dtype=np.int64)
        starts = self.dialogue_offsets[dialogues]
        lengths = self.dialogue_offsets[dialogues + 1] - starts
        max_len = int(lengths.max()) if len(dialogues) else 0
        steps = np.arange(max_len)
        mask_bt = steps[None, :] < lengths[:, None]  # [B, T]
        rows = (starts[:, None] + steps[None, :])[mask_bt]  # [n_real] rows in manifest order
        return self._assemble(rows, mask_bt, [self.dialogue_ids[i] for i in dialogues], pin_memory)

    def utterance_batch(self, rows: np.ndarray | list[int], pin_memory: bool = False) -> Batch:
        """B utterances as B one-utterance "dialogues": feats [B, 1, D], mask [B, 1] all True, frames
        [B, 1, L, D]. Speakers keep their dialogue-level index; `dialogue_ids` names each row's dialogue."""
        rows = np.asarray(rows, dtype=np.int64)
        dialogue_of_row = np.searchsorted(self.dialogue_offsets, rows, side="right") - 1  # [B]
        ids = [self.dialogue_ids[d] for d in dialogue_of_row.tolist()]  # names only; the tensors are gathers
        return self._assemble(rows, np.ones((len(rows), 1), dtype=bool), ids, pin_memory)

    def _assemble(self, rows: np.ndarray, mask_bt: np.ndarray, dialogue_ids: list[str], pin_memory: bool) -> Batch:
        """A Batch of utterance `rows` [n_real] placed at the True positions of `mask_bt` [B, T] (row-major):
        one vectorised gather per role and label; pad positions gather the zero row past the last utterance."""
        n_b, n_t = mask_bt.shape
        padded = not mask_bt.all()  # utterance batches never are: their tensors are the gathers, reshaped
        mask = torch.from_numpy(mask_bt)

        def place(values: torch.Tensor, fill: float) -> torch.Tensor:
            """[n_real, ...] -> [B, T, ...] with `fill` at pads."""
            if not padded:
                return values.reshape(n_b, n_t, *values.shape[1:])
            out = torch.full((n_b, n_t, *values.shape[1:]), fill, dtype=values.dtype)
            out[mask] = values
            return out

        if padded:
            idx_bt = np.full((n_b, n_t), self.n_utterances, dtype=np.int64)
            idx_bt[mask_bt] = rows
            idx = torch.from_numpy(idx_bt.reshape(-1))
        else:
            idx = torch.from_numpy(rows)
        feats = {role: x_f16.index_select(0, idx).view(n_b, n_t, -1).float() for role, x_f16 in self.feats.items()}
        feat_mask = {role: place(torch.from_numpy(self.valid[role][rows]), False) for role in self.feats}
        speakers = place(torch.from_numpy(self.speakers[rows]), 0)
        fills = {"categorical": -1, "regression": float("nan"), "multilabel": -1.0}
        labels = {t.name: place(torch.from_numpy(self.labels[t.name][rows]), fills[t.kind]) for t in self.tasks}

        frames = {role: self._frame_batch(f, rows, mask_bt) for role, f in self.frames.items()}
        batch = Batch(feats=feats, mask=mask, speakers=speakers, labels=labels, feat_mask=feat_mask,
                      dialogue_ids=dialogue_ids, frames=frames)
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


def _check_unit(unit: str) -> None:
    if unit not in UNITS:
        raise HeadsError(f"unknown batch unit {unit!r}", fix=f"use one of: {', '.join(UNITS)}")


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
