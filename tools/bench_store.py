"""What the store's integrity costs: the per-dialogue commit with and without checksums (and against the
zarr-python API), and `verify` / the rerun check / loading on a MELD-sized store.

- commit: one dialogue (pooled [~10, 384] fp16 + valid) committed by (a) the zarr-python API (group, two
  arrays, attributes: the obvious way), (b) merc's direct Zarr v3 files with the checksum and input-digest
  work switched off (the commit as it was before checksums), (c) the shipped writer. Interleaved repeats.
- MELD-sized: 1,433 dialogues / 13,708 utterances, pooled 1024-d fp16 (a roberta-large / data2vec-large
  feature set), optionally with frames; timed: writing it, `merc-extract verify` (every file hashed,
  decoded and checked), `StoreWriter.plan` (what every rerun does before it starts), and `load_pooled`.

    .venv/bin/python tools/bench_store.py [--repeats 3] [--frames 0]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

MELD_DIALOGUES, MELD_UTTERANCES = 1433, 13708


def manifest_of(n_dialogues: int, n_utterances: int, seed: int = 0):
    from merc.data_manifests.labels import MELD_EMOTION
    from merc.data_manifests.manifest import Dialogue, Manifest, Utterance

    rng = np.random.default_rng(seed)
    lengths = 1 + rng.multinomial(n_utterances - n_dialogues, rng.dirichlet(np.full(n_dialogues, 2.0)))
    dialogues = []
    for i, n in enumerate(lengths):
        d_id = f"dia{i}"
        utts = [Utterance(f"{d_id}_utt{j}", d_id, f"s{j % 3}", f"words of utterance {j}", "train",
                          {"emotion": MELD_EMOTION.classes[int(rng.integers(7))]}) for j in range(int(n))]
        dialogues.append(Dialogue(d_id, "train", utts))
    return Manifest("bench", {"emotion": MELD_EMOTION}, dialogues)


@contextmanager
def without_integrity():
    """The writer as it was before checksums: no file hashing, a constant input digest."""
    from merc.extract.store import files, writer

    sha, digest = files.sha256, writer.StoreWriter.inputs_digest
    files.sha256 = lambda data: ""
    writer.StoreWriter.inputs_digest = lambda self, dialogue: ""
    try:
        yield
    finally:
        files.sha256, writer.StoreWriter.inputs_digest = sha, digest


def zarr_api_write(path: Path, manifest, arrays) -> float:
    """The obvious way: zarr-python's group/array API, same per-dialogue layout, attrs last."""
    import zarr

    root = zarr.open_group(str(path), mode="w")
    fs = root.create_group("bench").create_group("x")
    t0 = time.perf_counter()
    for d in manifest.dialogues:
        g = fs.create_group(d.id)
        pooled, valid = arrays[d.id]
        g.create_array("pooled", data=pooled, chunks=pooled.shape)
        g.create_array("valid", data=valid, chunks=valid.shape)
        g.update_attributes({"dialogue_id": d.id, "n_utt": len(d), "complete": True})
    return (time.perf_counter() - t0) / len(manifest.dialogues) * 1e3


def merc_write(path: Path, manifest, arrays, dim: int, frames: dict | None = None) -> float:
    from merc.extract.store import StoreWriter

    w = StoreWriter(path, manifest.name, "x")
    levels = ["utterance", "frames"] if frames else ["utterance"]
    w.open(manifest, fingerprint={"bench": 1}, info={"dim": dim, "modality": "text", "encoder": "x", "levels": levels})
    t0 = time.perf_counter()
    for d in manifest.dialogues:
        f = frames[d.id] if frames else (None, None)
        w.write_dialogue(d.id, *arrays[d.id], frames=f[0], offsets=f[1])
    seconds = time.perf_counter() - t0
    w.finalize(manifest)
    return seconds / len(manifest.dialogues) * 1e3


def bench_commit(tmp: Path, repeats: int, n_dialogues: int = 300) -> None:
    manifest = manifest_of(n_dialogues, n_dialogues * 10)
    rng = np.random.default_rng(0)
    arrays = {d.id: (rng.standard_normal((len(d), 384)).astype(np.float16), np.ones(len(d), bool))
              for d in manifest.dialogues}
    times: dict[str, list[float]] = {"zarr": [], "plain": [], "checked": []}
    for k in range(repeats + 1):  # the first round warms up every path and is dropped
        t_zarr = zarr_api_write(tmp / f"z{k}.zarr", manifest, arrays)
        with without_integrity():
            t_plain = merc_write(tmp / f"p{k}.zarr", manifest, arrays, 384)
        t_checked = merc_write(tmp / f"c{k}.zarr", manifest, arrays, 384)
        if k:
            times["zarr"].append(t_zarr)
            times["plain"].append(t_plain)
            times["checked"].append(t_checked)
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"\n[commit] {n_dialogues} dialogues (pooled [~10, 384] fp16 + valid), {repeats} interleaved repeats")
    print(f"{'writer':52s} {'ms per dialogue':>16s}")
    print(f"{'zarr-python API (group, 2 arrays, attrs)':52s} {med['zarr']:16.3f}")
    print(f"{'merc direct files, no checksums (before)':52s} {med['plain']:16.3f}")
    print(f"{'merc direct files + SHA-256 checksums + input digest':52s} {med['checked']:16.3f}")
    ratio = [c / p for c, p in zip(times["checked"], times["plain"], strict=True)]
    print(f"integrity cost: x{np.median(ratio):.2f} (range {min(ratio):.2f}-{max(ratio):.2f}) of the plain commit, "
          f"{med['checked'] - med['plain']:+.3f} ms; still {med['zarr'] / med['checked']:.1f}x faster than zarr-python")


def bench_meld(tmp: Path, dim: int, frames_per_utt: int, frame_dim: int) -> None:
    from merc.extract.store import StoreReader, StoreWriter
    from merc.extract.store.verify import verify_store

    manifest = manifest_of(MELD_DIALOGUES, MELD_UTTERANCES)
    rng = np.random.default_rng(1)
    arrays = {d.id: (rng.standard_normal((len(d), dim)).astype(np.float16), np.ones(len(d), bool))
              for d in manifest.dialogues}
    frames = None
    if frames_per_utt:
        frames = {d.id: (rng.standard_normal((len(d) * frames_per_utt, frame_dim)).astype(np.float16),
                         np.arange(len(d) + 1, dtype=np.int64) * frames_per_utt) for d in manifest.dialogues}
        # frames share the pooled dim in a real feature set
        arrays = {k: (rng.standard_normal((len(v[1]), frame_dim)).astype(np.float16), v[1]) for k, v in arrays.items()}
        dim = frame_dim
    path = tmp / "meld.zarr"
    t0 = time.perf_counter()
    merc_write(path, manifest, arrays, dim, frames)
    t_write = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
    t0 = time.perf_counter()
    report = verify_store(StoreReader(path))
    t_verify = time.perf_counter() - t0
    assert not report.problems, report.problems[:3]
    w = StoreWriter(path, manifest.name, "x")
    w.open(manifest, fingerprint={"bench": 1}, info={"dim": dim, "modality": "text", "encoder": "x",
                                                     "levels": ["utterance", "frames"] if frames else ["utterance"]})
    t0 = time.perf_counter()
    plan = w.plan(manifest)
    t_plan = time.perf_counter() - t0
    assert len(plan.current) == MELD_DIALOGUES
    t0 = time.perf_counter()
    StoreReader(path).load_pooled(manifest.name, "x")
    t_load = time.perf_counter() - t0
    what = f"pooled {dim}-d fp16" + (f" + {frames_per_utt} frames/utterance" if frames else "")
    print(f"\n[MELD-sized] {MELD_DIALOGUES} dialogues / {MELD_UTTERANCES} utterances, {what}: {size:.0f} MiB on disk")
    print(f"  write (per-dialogue commits + pack): {t_write:6.2f} s")
    print(f"  merc-extract verify (hash + decode + check every file): {t_verify:6.2f} s ({size / t_verify:.0f} MiB/s)")
    print(f"  rerun check, StoreWriter.plan (hash every file, read every marker): {t_plan:6.2f} s")
    print(f"  load_pooled (packed, checked): {t_load:6.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--frames", type=int, default=0, help="also a MELD-sized store with this many frames per utterance")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="merc-bench-store-"))
    try:
        bench_commit(tmp, args.repeats)
        bench_meld(tmp, 1024, 0, 0)
        if args.frames:
            shutil.rmtree(tmp / "meld.zarr")
            bench_meld(tmp, 1024, args.frames, 768)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
