"""Planted-signal feature stores for the heads tests and tools/bench_heads.py.

Each store is a real Zarr store written through `StoreWriter`, so the heads read it through the same
code path as a store made by merc-extract. Three kinds of signal:

- "planted":   every modality holds a noisy class prototype of its own utterance's label, so the label is
               linearly readable from each modality alone (every head should learn it);
- "neighbour": the features of utterance j hold the prototype of the label of utterance j - 1, so an
               utterance's label can only be read from the NEXT utterance (context heads win, an
               utterance-level MLP is at chance); the last utterance of a dialogue is unlabelled;
- "mood":      every utterance of a dialogue carries the dialogue's label, but each utterance's features hold
               it only weakly: reading it well takes pooling over the dialogue, in any order (context heads
               without positional information, such as Ada2I's transformer encoder, can do it);
- "mosei":     a MOSEI-like video of segments with a regression sentiment in [-3, 3] and 6 multi-label
               emotions, both linear functions of a latent vector that each modality sees with noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from merc.data_manifests.manifest import Dialogue, LabelSpace, Manifest, Utterance
from merc.extract.store import StoreWriter

CLASSES = ("neutral", "joy", "anger", "sadness")
EMOTIONS = ("happy", "sad", "anger", "surprise", "disgust", "fear")
MODALITY = {"t": "text", "a": "audio", "v": "video"}


@dataclass
class SynthSpec:
    kind: str = "planted"  # planted | neighbour | mood | mosei
    splits: dict[str, int] = field(default_factory=lambda: {"train": 60, "dev": 15, "test": 15})  # dialogues
    lengths: tuple[int, int] = (4, 10)  # utterances per dialogue, inclusive range
    split_utterances: dict[str, int] | None = None  # exact utterance count per split (overrides `lengths`)
    dims: dict[str, int] = field(default_factory=lambda: {"t": 32, "a": 32})  # role -> width
    classes: tuple[str, ...] = CLASSES
    noise: float = 1.0  # std of the Gaussian noise per feature dimension
    signal: float = 3.0  # norm-ish scale of the planted prototypes
    invalid_rate: float = 0.02  # share of utterances whose second modality failed to extract (valid=False)
    n_speakers: int = 3
    frames: tuple[int, int] | None = None  # (min, max) frames per utterance; None = no frames
    wide_roles: tuple[str, ...] = ()  # roles given openSMILE-like raw scales (x 1e-2..1e4, offsets), stored float32
    seed: int = 0


def feature_set_name(role: str, spec: SynthSpec) -> str:
    return f"{MODALITY[role]}{spec.dims[role]}"


def build_store(path: str | Path, spec: SynthSpec, dataset: str = "synth") -> dict[str, str]:
    """Write `dataset` with one feature set per role of `spec.dims`; returns role -> feature-set name."""
    rng = np.random.default_rng(spec.seed)
    manifest, targets = _manifest(dataset, spec, rng)
    names = {}
    for k, (role, dim) in enumerate(spec.dims.items()):
        name = feature_set_name(role, spec)
        names[role] = name
        w = StoreWriter(path, dataset, name)
        levels = ["utterance"] + (["frames"] if spec.frames else [])
        wide = role in spec.wide_roles
        w.open(manifest, fingerprint={"encoder": "synthetic", "role": role, "seed": spec.seed, "kind": spec.kind},
               info={"dim": dim, "modality": MODALITY[role], "encoder": "synthetic", "levels": levels,
                     "dtype": "float32" if wide else "float16"})
        proj = _projection(spec, dim, rng)
        scale, offset = 10.0 ** rng.uniform(-2, 4, dim), 10.0 ** rng.uniform(0, 4, dim)
        for d in manifest.dialogues:
            pooled = _features(targets[d.id], proj, spec, rng)
            if wide:
                pooled = pooled * scale + offset
            valid = np.ones(len(d), bool)
            if k > 0 and spec.invalid_rate > 0:  # only non-first modalities fail, so the label stays readable
                valid = rng.random(len(d)) >= spec.invalid_rate
                pooled[~valid] = 0.0
            frames = offsets = None
            if spec.frames:
                n_frames = rng.integers(spec.frames[0], spec.frames[1] + 1, size=len(d))
                offsets = np.concatenate([[0], np.cumsum(n_frames)]).astype(np.int64)
                frames = np.repeat(pooled, n_frames, axis=0) + 0.3 * rng.standard_normal((offsets[-1], dim))
            w.write_dialogue(d.id, pooled.astype(np.float32 if wide else np.float16), valid, frames=frames,
                             offsets=offsets)
        w.finalize(manifest)
    return names


# ---------------------------------------------------------------------------------------------------

def _manifest(dataset: str, spec: SynthSpec, rng: np.random.Generator) -> tuple[Manifest, dict[str, np.ndarray]]:
    """Dialogues with labels, plus the per-utterance latent each dialogue's features are made from."""
    if spec.kind == "mosei":
        spaces = {"sentiment": LabelSpace("sentiment", "regression", (), (-3.0, 3.0)),
                  "emotions": LabelSpace("emotions", "multilabel", EMOTIONS)}
        w_sent = rng.standard_normal(8)
        w_emo = rng.standard_normal((8, len(EMOTIONS)))
    else:
        spaces = {"emotion": LabelSpace("emotion", "categorical", spec.classes)}
    dialogues, targets = [], {}
    for split, n in spec.splits.items():
        if spec.split_utterances:  # every dialogue has >= 1 utterance; the rest spread unevenly, summing exactly
            extra = rng.multinomial(spec.split_utterances[split] - n, rng.dirichlet(np.full(n, 2.0)))
            lengths = 1 + extra
        else:
            lengths = rng.integers(spec.lengths[0], spec.lengths[1] + 1, size=n)
        for i in range(n):
            dia_id = f"{split}_{i:04d}"
            n_utt = int(lengths[i])
            speakers = [f"spk{int(s)}" for s in rng.integers(0, spec.n_speakers, size=n_utt)]
            utts = []
            if spec.kind == "mosei":
                z = rng.standard_normal((n_utt, 8))
                sentiment = np.clip(np.round(z @ w_sent / np.sqrt(8) * 1.5 * 5) / 5, -3, 3)  # steps of 0.2, some zeros
                present = (z @ w_emo) > 0.5
                targets[dia_id] = z
                for j in range(n_utt):
                    labels = {"sentiment": float(sentiment[j]),
                              "emotions": tuple(e for e, p in zip(EMOTIONS, present[j], strict=True) if p)}
                    utts.append(Utterance(f"{dia_id}_u{j}", dia_id, speakers[j], f"utterance {j}", split, labels))
            else:
                y = rng.integers(0, len(spec.classes), size=n_utt)
                if spec.kind == "mood":
                    y[:] = y[0]
                if spec.kind == "neighbour":  # features of j carry the label of j - 1; the first carries noise
                    targets[dia_id] = np.concatenate([[-1], y[:-1]])
                else:
                    targets[dia_id] = y
                for j in range(n_utt):
                    unlabelled = spec.kind == "neighbour" and j == n_utt - 1
                    labels = {} if unlabelled else {"emotion": spec.classes[int(y[j])]}
                    utts.append(Utterance(f"{dia_id}_u{j}", dia_id, speakers[j], f"utterance {j}", split, labels))
            dialogues.append(Dialogue(dia_id, split, utts))
    return Manifest(dataset, spaces, dialogues), targets


def _projection(spec: SynthSpec, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Class prototypes [C, D] (categorical) or a latent-to-feature map [8, D] (mosei)."""
    if spec.kind == "mosei":
        return rng.standard_normal((8, dim)) * spec.signal / np.sqrt(8)
    protos = rng.standard_normal((len(spec.classes), dim))
    return protos / np.linalg.norm(protos, axis=1, keepdims=True) * spec.signal * np.sqrt(dim) / 4


def _features(target: np.ndarray, proj: np.ndarray, spec: SynthSpec, rng: np.random.Generator) -> np.ndarray:
    n, dim = len(target), proj.shape[1]
    noise = spec.noise * rng.standard_normal((n, dim))
    if spec.kind == "mosei":
        return (target @ proj + noise).astype(np.float32)
    signal = np.where((target >= 0)[:, None], proj[np.maximum(target, 0)], 0.0)
    return (signal + noise).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# stores shared by the test files of one pytest process (each is built once, on first use)
# ---------------------------------------------------------------------------------------------------

SHARED_SPECS = {
    # every head can train on it: three modalities, frames for the frame-level heads, a few failed rows
    "planted": SynthSpec(kind="planted", dims={"t": 32, "a": 32, "v": 16}, frames=(2, 4), seed=1),
    "neighbour": SynthSpec(kind="neighbour", dims={"t": 32, "a": 32}, invalid_rate=0.0, seed=2),
    "mood": SynthSpec(kind="mood", splits={"train": 80, "dev": 30, "test": 10}, dims={"t": 32, "a": 32}, lengths=(8, 14), signal=0.5, invalid_rate=0.0, seed=4),
    "mosei": SynthSpec(kind="mosei", dims={"t": 32, "a": 32}, frames=(2, 4), seed=3),
    # the label is in the audio role only, at raw openSMILE-like scales; the text role is noise
    "wide": SynthSpec(kind="planted", dims={"a": 32}, wide_roles=("a",), invalid_rate=0.0, seed=5),
}
_SHARED: dict[str, tuple[str, dict[str, str]]] = {}


def shared_store(kind: str) -> tuple[str, dict[str, str]]:
    """(store path, role -> feature set) of a store of SHARED_SPECS, dataset "synth"; built once per process."""
    if kind not in _SHARED:
        import atexit
        import shutil
        import tempfile

        root = tempfile.mkdtemp(prefix=f"merc-heads-{kind}-")
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        path = str(Path(root) / "store.zarr")
        _SHARED[kind] = (path, build_store(path, SHARED_SPECS[kind]))
    return _SHARED[kind]


def features_arg(names: dict[str, str], roles: str = "tav") -> str:
    """`t=text32,a=audio32` for the given roles that the store has."""
    return ",".join(f"{r}={names[r]}" for r in roles if r in names)


def small_overrides(head: str) -> dict[str, str]:
    """`--set` values that shrink a head to test size (widths 32, one layer, a few experts, a larger lr).

    Picked by option name so that heads written later get shrunk too; only options the head has are set.
    """
    import dataclasses

    from merc.heads.registry import head_class

    out: dict[str, str] = {}
    for f in dataclasses.fields(head_class(head).config_cls):
        name, default = f.name, f.default
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            continue
        if isinstance(default, int):
            if "rank" in name:
                out[name] = "8"
            elif name.endswith("heads"):
                out[name] = "2"
            elif name == "experts" or name.endswith("_experts"):
                out[name] = "2"
            elif name == "top_k":
                out[name] = "1"
            elif "layers" in name or "blocks" in name:
                out[name] = "1"
            elif any(k in name for k in ("hidden", "dim", "d_model", "size")):
                out[name] = "32"
        elif "dropout" in name:
            out[name] = "0.1"
    out["lr"] = "3e-3"  # a head option where the head has one, else the optimiser's
    return out
