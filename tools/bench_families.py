"""Benchmark per encoder family: merc's batched path against the plain per-utterance Hugging Face loop.

For one tiny model per family (built from its config by merc.tools.tiny_models, so it runs anywhere
offline), both paths run in this process on the same N synthetic utterances, so the ratio does not
depend on the machine's load at another time. Both include media decoding (merc's load_audio /
read_frames) and the model's own processor; merc's side is preparer -> length-sorted batches under
the family's budget -> encode_batch, as in `merc-extract` minus the store writes (bench_extract.py
measures those). The plain loop is `model(**processor(one utterance))` in a Python loop with the same
pooling, and the largest difference between the two sets of vectors is printed as a check.

Tiny models make per-call overhead dominate, so the ratios show what batching saves in overhead;
with real checkpoints on a GPU the gain comes from filling the device instead.

    .venv/bin/python tools/bench_families.py [--utterances 64] [--families text,whisper] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

FAMILIES = {  # family -> (tiny model kind, encoder prefix, media)
    "text": ("roberta", "hf:", "text"),
    "speech-ssl": ("data2vec-audio", "hf:", "audio"),
    "whisper": ("whisper", "hf:", "audio"),
    "llm": ("llama", "llm:", "text"),
    "speech-llm": ("qwen2-audio", "sllm:", "audio"),
    "vision": ("vit", "hf-vision:", "video"),
}
WORDS = ("oh my god i cannot believe you did that again why would anyone say such a thing to me well okay fine "
         "whatever you want we are going to the coffee house later no way that is amazing news").split()


def synthetic_utterances(media: str, n: int, folder: Path, seed: int = 0) -> list:
    """n utterances with MELD-like spread: 1-30 words, 0.5-6 s of audio, 1-4 s of video."""
    from merc.data_manifests.manifest import Utterance

    rng = np.random.default_rng(seed)
    utts = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS, int(np.clip(rng.gamma(2.0, 5.0), 1, 30))))
        path = None
        if media == "audio":
            import soundfile as sf

            seconds = float(np.clip(rng.gamma(2.0, 1.2), 0.5, 6.0))
            t = np.arange(int(seconds * 16000)) / 16000
            wave = 0.3 * np.sin(2 * np.pi * (150 + 10 * i) * t) + 0.01 * rng.standard_normal(len(t))
            path = folder / f"u{i}.wav"
            sf.write(path, wave.astype(np.float32), 16000)
        elif media == "video":
            from merc.tools.tiny_models import write_video

            path = write_video(folder / f"u{i}.mp4", float(rng.integers(1, 5)), seed=i)
        utts.append(Utterance(f"u{i}", "d", "AB"[i % 2], text, "train", media=str(path) if path else None))
    return utts


def merc_batched(encoder, utts: list) -> tuple[float, np.ndarray]:
    """merc's preparer, then its length-sorted batches through the encoder, in this one process."""
    t0 = time.perf_counter()
    prep = encoder.preparer()
    vectors = encode_prepared(encoder, [prep(u) for u in utts])
    return time.perf_counter() - t0, np.stack([vectors[u.id] for u in utts])


def encode_prepared(encoder, prepared: list) -> dict[str, np.ndarray]:
    """Pooled vector per utterance id: prepared items in merc's batches through the encoder."""
    from merc.extract.runner import make_batches

    vectors = {}
    for batch in make_batches(prepared, encoder.batch_budget()):
        for item, enc in zip(batch, encoder.encode_batch(batch), strict=True):
            vectors[item.utterance_id] = enc.pooled
    return vectors


def manifest_of(utts: list, per_dialogue: int = 8):
    """The utterances as a manifest of dialogues of `per_dialogue` turns each."""
    from merc.data_manifests.manifest import Dialogue, Manifest

    dialogues = []
    for i in range(0, len(utts), per_dialogue):
        d_id = f"d{i // per_dialogue}"
        dialogues.append(Dialogue(d_id, "train", [dataclasses.replace(u, dialogue_id=d_id)
                                                  for u in utts[i: i + per_dialogue]]))
    return Manifest("bench", {}, dialogues)


def run_extraction(encoder, manifest, store: Path, workers: int | None = None) -> tuple[float, np.ndarray]:
    """The whole extraction as `merc-extract` runs it (decode workers by the default policy unless given,
    batches, store writes with per-dialogue commits, packing); returns seconds and the stored vectors."""
    from merc.extract.runner import Extraction
    from merc.extract.store import StoreReader, StoreWriter

    writer = StoreWriter(store, manifest.name, "x")
    writer.open(manifest, fingerprint=encoder.fingerprint(), info=encoder.info(), overwrite=True)
    t0 = time.perf_counter()
    Extraction(manifest, encoder, writer, workers=workers).run()
    writer.finalize(manifest)
    seconds = time.perf_counter() - t0
    return seconds, StoreReader(store).load_pooled(manifest.name, "x").pooled.astype(np.float32)


def plain_loop(family: str, model_dir: Path, utts: list) -> tuple[float, np.ndarray]:
    """The per-utterance loop most research code runs, with the same pooling merc uses."""
    import torch
    import transformers as tf

    from merc.extract.media import AudioPolicy, load_audio

    policy = AudioPolicy()
    one: Callable[[object], np.ndarray]
    if family in ("text", "llm"):
        tok = tf.AutoTokenizer.from_pretrained(model_dir)
        model = tf.AutoModel.from_pretrained(model_dir).eval()

        def one(u):
            text = f"{u.speaker}: {u.text}" if family == "llm" else u.text
            enc = tok(text, return_tensors="pt", return_offsets_mapping=family == "llm")
            offsets = enc.pop("offset_mapping", None)
            hidden = model(**enc).last_hidden_state[0]
            if offsets is None:
                return hidden.mean(0).numpy()
            own = (offsets[0, :, 1] > len(u.speaker) + 2) & (offsets[0, :, 1] > offsets[0, :, 0])
            return hidden[own].mean(0).numpy()
    elif family == "speech-ssl":
        fe = tf.AutoFeatureExtractor.from_pretrained(model_dir)
        model = tf.AutoModel.from_pretrained(model_dir).eval()

        def one(u):
            wave = load_audio(u.media, policy).samples
            return model(**fe(wave, sampling_rate=16000, return_tensors="pt")).last_hidden_state[0].mean(0).numpy()
    elif family == "whisper":
        fe = tf.AutoFeatureExtractor.from_pretrained(model_dir)
        encoder = tf.AutoModel.from_pretrained(model_dir).get_encoder().eval()

        def one(u):
            wave = load_audio(u.media, policy).samples
            frames = encoder(fe(wave, sampling_rate=16000, return_tensors="pt").input_features).last_hidden_state[0]
            return frames[: -(-(len(wave) // 160) // 2)].mean(0).numpy()
    elif family == "speech-llm":
        from merc.extract.encoders.hf_speech_llm import DEFAULT_INSTRUCTION

        proc = tf.AutoProcessor.from_pretrained(model_dir)
        model = tf.AutoModel.from_pretrained(model_dir).eval()
        messages = [{"role": "user", "content": [{"type": "audio", "audio_url": "clip"},
                                                 {"type": "text", "text": DEFAULT_INSTRUCTION}]}]
        prompt = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

        def one(u):
            wave = load_audio(u.media, policy).samples
            inputs = proc(text=prompt, audio=[wave], sampling_rate=16000, return_tensors="pt")
            return model(**inputs).last_hidden_state[0, -1].numpy()
    elif family == "vision":
        from merc.extract.encoders.hf_vision import read_frames

        proc = tf.AutoImageProcessor.from_pretrained(model_dir)
        model = tf.AutoModel.from_pretrained(model_dir).eval()

        def one(u):
            frames, _ = read_frames(u.media, 2.0)
            return model(**proc(images=frames, return_tensors="pt")).pooler_output.mean(0).numpy()
    else:
        raise ValueError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")
    t0 = time.perf_counter()
    with torch.inference_mode():
        vectors = np.stack([one(u) for u in utts])
    return time.perf_counter() - t0, vectors


def bench_family(name: str, n_utts: int = 64, repeats: int = 1, runner: bool = False) -> list[dict]:
    """Time merc's batched path and the plain loop for one family on the same n utterances, `repeats` times;
    with `runner`, also the whole `merc-extract` path (worker processes, store) as `runner_s`."""
    import transformers

    from merc.extract.encoders import EncoderRequest, build_encoder
    from merc.tools import tiny_models

    transformers.utils.logging.set_verbosity_error()
    kind, prefix, media = FAMILIES[name]
    tmp = Path(tempfile.mkdtemp(prefix=f"merc-bench-{name}-"))
    try:
        model_dir = tiny_models.build(kind, tmp / "model")
        (tmp / "media").mkdir()
        utts = synthetic_utterances(media, n_utts, tmp / "media")
        encoder = build_encoder(EncoderRequest(f"{prefix}{model_dir}"))
        plain_loop(name, model_dir, utts[:2])  # warm-up: first-call allocations, lazy imports
        merc_batched(encoder, utts[:2])
        out = []
        for k in range(repeats):
            plain_s, plain_vecs = plain_loop(name, model_dir, utts)
            merc_s, merc_vecs = merc_batched(encoder, utts)
            row = {"family": name, "model": f"tiny {kind}", "utterances": n_utts, "plain_s": plain_s,
                   "merc_s": merc_s, "speedup": plain_s / merc_s,
                   "max_abs_diff": float(np.abs(plain_vecs - merc_vecs).max())}
            if runner:
                row["runner_s"], runner_vecs = run_extraction(encoder, manifest_of(utts), tmp / f"store{k}.zarr")
                # the store holds fp16: compare at that precision
                row["max_abs_diff"] = max(row["max_abs_diff"], float(np.abs(
                    plain_vecs.astype(np.float16).astype(np.float32) - runner_vecs).max()))
            out.append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utterances", type=int, default=64)
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = ap.parse_args()
    import os

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    print(f"{'family':11s} {'model':20s} {'utts':>5s} {'plain s':>8s} {'merc s':>8s} {'speed-up':>9s} {'max |diff|':>11s}")
    for family in args.families.split(","):
        r = bench_family(family, args.utterances)[0]
        print(f"{r['family']:11s} {r['model']:20s} {r['utterances']:5d} {r['plain_s']:8.2f} {r['merc_s']:8.2f} "
              f"{r['speedup']:8.2f}x {r['max_abs_diff']:11.1e}")


if __name__ == "__main__":
    main()
