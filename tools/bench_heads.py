"""Benchmark stage 2 on a MELD-sized synthetic store: load time, and per head epoch time and FLOP efficiency.

    .venv/bin/python tools/bench_heads.py                 # all heads, fp32 and bf16, ~15 s of steps each
    .venv/bin/python tools/bench_heads.py --heads mister-e,ada2i --budget 30 --keep /tmp/meld.zarr

What it does:
1. writes a store shaped like MELD (1,433 dialogues / 13,708 utterances, split 1039/114/280 dialogues =
   9,989/1,109/2,610 utterances, 7 classes, two 768-d modalities; 8 frames per utterance for the frame heads)
   through StoreWriter into a temp dir (or reuses --keep);
2. times store -> memory (`HeadsData.load`) for the utterance-level features, and with frames;
3. measures this machine's matmul rate: a 1024^3 matmul in fp32 and in bf16;
4. per head (default config, i.e. the papers' sizes) and precision, runs training steps through the
   trainer's own `train_step` (batches built by the reader, as in training) for about --budget seconds,
   and reports the epoch time (measured steps scaled to the 9,989 training utterances), the achieved
   GFLOP/s (FLOPs of one forward+backward counted with torch.utils.flop_counter.FlopCounterMode; on the
   CPU a GRU runs as per-step matmuls, which the counter sees) and how far that is from the measured
   matmul rate, and the time of one end-of-epoch checkpoint (resume state + best weights).

Not a test: numbers depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the synthetic-store builder

MELD_SPLITS = {"train": 1039, "dev": 114, "test": 280}
MELD_UTTERANCES = {"train": 9989, "dev": 1109, "test": 2610}
MELD_CLASSES = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")


def build_meld_sized(path: Path, frames: int) -> dict[str, str]:
    from heads_synth import SynthSpec, build_store

    spec = SynthSpec(kind="planted", splits=MELD_SPLITS, split_utterances=MELD_UTTERANCES, classes=MELD_CLASSES,
                     dims={"t": 768, "a": 768}, frames=(frames, frames) if frames else None, invalid_rate=0.01,
                     seed=0)
    return build_store(path, spec, dataset="meld")


def frames_read_ratio(reader, feature_set: str, repeats: int = 3) -> str:
    """merc's direct file reads of each dialogue's frames against the zarr-python API, interleaved, same arrays."""
    import zarr

    from merc.extract.store import dialogue_key

    ids = [d.id for d in reader.manifest("meld").dialogues]

    def via_zarr():
        fs = zarr.open_group(str(reader.path), mode="r")["meld"][feature_set]
        return [(g["frames"][...], g["offsets"][...]) for g in (fs[dialogue_key(i)] for i in ids)]

    def via_merc():
        return [reader.load_frames("meld", feature_set, i) for i in ids]

    times: dict[str, list[float]] = {"zarr": [], "merc": []}
    for _ in range(repeats):
        for name, fn in (("zarr", via_zarr), ("merc", via_merc)):
            t0 = time.perf_counter()
            got = fn()
            times[name].append(time.perf_counter() - t0)
            if name == "zarr":
                expected = got
            else:
                assert all(np.array_equal(a, b) for pair in zip(expected, got, strict=True)
                           for a, b in zip(*pair, strict=True)), "direct reads differ from zarr's"
    z, m = np.median(times["zarr"]), np.median(times["merc"])
    return (f"zarr-python {z:.2f}s, merc direct {m:.2f}s, {z / m:.1f}x "
            f"(medians of {repeats}, {len(ids)} dialogues, arrays equal)")


def matmul_gflops(dtype: torch.dtype, n: int = 1024, seconds: float = 2.0) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def count_flops(trainer, batch, opt, scaler, params) -> float:
    """FLOPs of one train step (forward + backward) on `batch`."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        trainer.train_step(batch, 0, opt, scaler, params)
    return counter.get_total_flops()


def bench_head(name: str, data, precision: str, budget: float, batch_size: int | None) -> dict:
    from merc.heads.registry import build_head
    from merc.heads.trainer import TrainConfig, Trainer, build_optimizer

    torch.manual_seed(0)
    head = build_head(name, data.dims, data.tasks)
    n_params = sum(p.numel() for p in head.parameters())
    from merc.heads.config import head_defaults

    bs = batch_size or int(head_defaults(type(head)).get("train.batch_size", 16))
    trainer = Trainer(head, data, TrainConfig(batch_size=bs, precision=precision, device="cpu"))
    head.set_stage(head.stages()[-1])  # the stage that trains the full model (SUMMER: the student)
    opt = build_optimizer(head, trainer.settings)
    params = [p for p in head.parameters() if p.requires_grad]
    head.train()
    rng = np.random.default_rng(0)
    batches = data.batches("train", bs, shuffle=True, generator=rng)

    warm = next(batches)
    trainer.train_step(warm, 0, opt, None, params)  # warm-up (allocations, oneDNN kernels)
    flops_batch = next(batches)
    flops = count_flops(trainer, flops_batch, opt, None, params)
    flop_utts = int(flops_batch.mask.sum())

    n_utts, t0 = 0, time.perf_counter()
    steps = 0
    for batch in batches:  # the timed steps include building the batches, as in training
        trainer.train_step(batch, 1, opt, None, params)
        n_utts += int(batch.mask.sum())
        steps += 1
        if time.perf_counter() - t0 > budget:
            break
    seconds = time.perf_counter() - t0
    utt_per_s = n_utts / seconds
    gflops = flops / flop_utts * utt_per_s / 1e9
    return {"head": name, "precision": precision, "params_M": n_params / 1e6, "batch": bs, "steps": steps,
            "utt_per_s": utt_per_s, "epoch_s": MELD_UTTERANCES["train"] / utt_per_s,
            "full_epoch": steps >= data.n_batches("train", bs) - 2, "gflop_per_utt": flops / flop_utts / 1e9,
            "gflops": gflops, "checkpoint_s": checkpoint_seconds(head, opt)}


def checkpoint_seconds(head, opt) -> float:
    """What a run pays at the end of an epoch to survive interruption: the resume state (weights, optimiser,
    RNGs; heads/checkpoint.py) plus the best-so-far weights, both written atomically as `merc-heads train` does."""
    import numpy as np

    from merc.heads.checkpoint import TrainState, capture_rng, save_model_atomic, save_state

    folder = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    try:
        t0 = time.perf_counter()
        save_model_atomic(head, folder / "model.safetensors")
        state = TrainState(stages=["main"], stage_index=0, epoch=0, model=head.state_dict(), best_model=None,
                           optimizer=opt.state_dict(), scheduler=None, scaler=None, best_value=None, best_epoch=0,
                           bad_epochs=0, best={}, history=[], rng=capture_rng(np.random.default_rng(0),
                                                                              torch.device("cpu")), seconds=0.0)
        save_state(state, folder / "resume.safetensors", best_model_file="model.safetensors")
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--heads", default="mlp,late-fusion,dialogue-gru,mister-e,ada2i,summer,mmolre")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--budget", type=float, default=15.0, help="seconds of timed training steps per head and precision")
    ap.add_argument("--batch-size", type=int, default=None, help="dialogues per batch [default: the head's, else 16]")
    ap.add_argument("--frames", type=int, default=8, help="frames per utterance written for frame heads (0: none)")
    ap.add_argument("--keep", type=Path, default=None, help="store path to write once and reuse")
    ap.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's choice]")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from merc.extract.store import StoreReader
    from merc.heads.data import HeadsData
    from merc.heads.registry import head_class

    tmp = None
    store = args.keep
    if store is None:
        tmp = tempfile.mkdtemp(prefix="bench-heads-")
        store = Path(tmp) / "meld.zarr"
    try:
        if not (store / "zarr.json").exists():
            t0 = time.perf_counter()
            build_meld_sized(store, args.frames)
            print(f"wrote MELD-sized store in {time.perf_counter() - t0:.1f}s: {store}")
        reader = StoreReader(store)
        fsets = reader.feature_sets("meld")
        features = ",".join(fsets)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; feature sets {features}")

        loads = []
        for _ in range(3):
            t0 = time.perf_counter()
            data = HeadsData.load(str(store), "meld", features)
            loads.append(time.perf_counter() - t0)
        mb = sum(x.numel() * 2 for x in data.feats.values()) / 1e6
        print(f"store -> memory (pooled, {data.n_utterances} utterances, 2 x 768-d, {mb:.0f} MB fp16): "
              f"first {loads[0]:.2f}s, best {min(loads):.2f}s (target <= 2 s)")
        data_frames = None
        if args.frames:
            t0 = time.perf_counter()
            data_frames = HeadsData.load(str(store), "meld", features, frames=True, max_frames=args.frames)
            print(f"store -> memory with frames ({args.frames}/utterance): {time.perf_counter() - t0:.2f}s")
            print(f"reading every dialogue's frames + offsets of {fsets[0]} (the raw reads inside that load): "
                  f"{frames_read_ratio(reader, fsets[0])}")
        for label in ("first pass", "again"):
            t0 = time.perf_counter()
            n = sum(1 for _ in data.batches("train", 16, shuffle=True, generator=np.random.default_rng(0)))
            print(f"building all {n} train batches of 16 dialogues, no model ({label}): {time.perf_counter() - t0:.2f}s")

        # The matmul rate is measured again before every head (other processes share the machine); the
        # ratio uses the best rate seen, i.e. what the machine can do.
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
        peak = {p: matmul_gflops(dtypes[p]) for p in dtypes}
        print(f"matmul 1024^3: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")

        rows = []
        for name in filter(None, args.heads.split(",")):  # --heads "": load timings only
            cls = head_class(name)
            d = data_frames if "frames" in cls.levels else data
            if d is None:
                print(f"{name}: skipped (needs frames; run with --frames N)")
                continue
            for precision in args.precisions.split(","):
                local = matmul_gflops(dtypes[precision], seconds=1.0)
                peak[precision] = max(peak[precision], local)
                r = bench_head(name, d, precision, args.budget, args.batch_size)
                rows.append(r)
                print(f"  {name:13s} {precision}: {r['epoch_s']:7.1f} s/epoch, {r['gflops']:6.1f} GFLOP/s "
                      f"(matmul just before: {local:.0f} GFLOP/s)", flush=True)

        print()
        print(f"best matmul 1024^3 seen: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s "
              "(~ = epoch time scaled from the timed steps)")
        print("| head | precision | params (M) | batch | epoch (s) | utt/s | GFLOP/utt (fwd+bwd) | GFLOP/s | "
              "best matmul / achieved | checkpoint (s, % of epoch) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            approx = "" if r["full_epoch"] else "~"
            of_peak = peak[r["precision"]] / r["gflops"] if r["gflops"] > 0 else float("inf")
            print(f"| {r['head']} | {r['precision']} | {r['params_M']:.2f} | {r['batch']} | {approx}{r['epoch_s']:.1f} | "
                  f"{r['utt_per_s']:.0f} | {r['gflop_per_utt']:.3f} | {r['gflops']:.1f} | {of_peak:.1f}x | "
                  f"{r['checkpoint_s']:.2f} ({100 * r['checkpoint_s'] / r['epoch_s']:.1f} %) |")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
