"""Run one encoder over one manifest into the store: prepare in workers, encode in batches, commit per dialogue.

The flow per window of dialogues (a few hundred utterances):
  1. worker processes prepare every utterance (decode + resample, or a whole openSMILE vector);
     the next window is already being prepared while this one is encoded;
  2. prepared items are sorted by length and cut into batches under the encoder's budget, so padding
     stays small;
  3. each dialogue, once all its utterances are encoded, is written and committed (a background thread
     does the writing while the model works on the next window).
Finished dialogues are skipped on the next run, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from merc.data_manifests.errors import MercError
from merc.data_manifests.manifest import Dialogue, Manifest, Utterance

from .encoders.base import Encoded, Encoder, Prepared, Preparer
from .store import StoreWriter

WINDOW_UTTERANCES = 512
CHUNK = 16  # utterances per worker job
MAX_BATCH_ITEMS = 256


@dataclass
class RunStats:
    dialogues_total: int = 0
    dialogues_skipped: int = 0  # already complete before this run
    dialogues_written: int = 0
    utterances_encoded: int = 0
    failures: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def utterances_per_second(self) -> float:
        return self.utterances_encoded / self.seconds if self.seconds else 0.0


def default_workers(encoder: Encoder, cores: int | None = None) -> int:
    """Decode worker processes when the user does not say (--decode-workers).

    - openSMILE-style encoders do all their work in the preparer: one worker per core.
    - A model on CUDA leaves the CPU idle: every core but the main process's decodes for it.
    - A model on the CPU already keeps every core busy with its own threads; on a 2-core machine a
      decode worker made every media family slower (it steals the cores the matmuls need, and its
      start-up and hand-over cost more than it saves), so below 4 cores the main process prepares
      inline; above, one worker overlaps decoding with the model. Figures: BENCHMARKS.md
      (tools/bench_extract.py --sections families,opensmile).
    """
    cores = cores or os.cpu_count() or 1
    if encoder.final_in_preparer:
        return cores
    if encoder.modality == "text":
        return 0  # nothing to decode
    if encoder.device.startswith("cuda"):
        return max(1, cores - 1)
    return 0 if cores < 4 else 1


def windows(dialogues: list[Dialogue], size: int = WINDOW_UTTERANCES) -> Iterator[list[Dialogue]]:
    window: list[Dialogue] = []
    n = 0
    for d in dialogues:
        window.append(d)
        n += len(d)
        if n >= size:
            yield window
            window, n = [], 0
    if window:
        yield window


def make_batches(items: list[Prepared], budget: int, max_items: int = MAX_BATCH_ITEMS) -> list[list[Prepared]]:
    """Length-sorted batches whose padded size (longest x count) stays under `budget`."""
    order = sorted(items, key=lambda it: (it.length, it.utterance_id))
    batches: list[list[Prepared]] = []
    current: list[Prepared] = []
    for it in order:
        longest = max(it.length, current[-1].length if current else 0)
        if current and (longest * (len(current) + 1) > budget or len(current) >= max_items):
            batches.append(current)
            current = []
        current.append(it)
    if current:
        batches.append(current)
    return batches


# -- worker side -------------------------------------------------------------------------------------
_WORKER_PREPARER: Preparer | None = None


def _init_worker(preparer: Preparer) -> None:
    """One thread per worker: two busy processes with 2 torch/OpenMP threads each run 3-10x slower.

    torch is not imported here just to set that (0.8 s per worker, for nothing, with openSMILE): the
    environment covers a later import, and a torch the preparer's module already loaded is told directly.
    """
    global _WORKER_PREPARER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the main process handles it
    os.environ["OMP_NUM_THREADS"] = "1"
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    _WORKER_PREPARER = preparer


def _prepare_one(preparer: Preparer, utt: Utterance) -> Prepared | dict:
    try:
        return preparer(utt)
    except MercError as exc:
        f = exc.finding
        return {"utterance_id": utt.id, "dialogue_id": utt.dialogue_id, "file": f.file if f.file != "-" else (utt.media or utt.source_file),
                "row": utt.source_row, "problem": f.problem, "fix": f.fix}
    except Exception as exc:  # noqa: BLE001 - one bad utterance must not kill the run
        return {"utterance_id": utt.id, "dialogue_id": utt.dialogue_id, "file": utt.media or utt.source_file,
                "row": utt.source_row, "problem": f"{type(exc).__name__}: {exc}",
                "fix": "report this as a merc bug with the file attached"}


def _prepare_chunk(utts: list[Utterance]) -> list[Prepared | dict]:
    assert _WORKER_PREPARER is not None
    return [_prepare_one(_WORKER_PREPARER, u) for u in utts]


# -- main side ---------------------------------------------------------------------------------------
class Extraction:
    """One (manifest, encoder, store) job."""

    def __init__(self, manifest: Manifest, encoder: Encoder, writer: StoreWriter, *, workers: int | None = None,
                 keep_frames: bool = False, window_utterances: int = WINDOW_UTTERANCES):
        self.manifest = manifest
        self.encoder = encoder
        self.writer = writer
        self.workers = default_workers(encoder) if workers is None else workers
        # an encoder built with keep_frames (EncoderRequest) writes frames too, e.g. on dask workers
        self.keep_frames = keep_frames or encoder.keep_frames
        encoder.keep_frames = self.keep_frames  # encoders return frames only when asked (they cost memory)
        self.window_utterances = window_utterances

    def run(self, dialogues: list[Dialogue] | None = None, progress: Callable[[int], None] | None = None) -> RunStats:
        """Extract every dialogue not yet complete (or just `dialogues`); `progress(n)` is told of each n utterances."""
        t0 = time.perf_counter()
        stats = RunStats()
        done = self.writer.done_dialogues()
        todo_all = dialogues if dialogues is not None else self.manifest.dialogues
        stats.dialogues_total = len(todo_all)
        todo = [d for d in todo_all if d.id not in done]
        stats.dialogues_skipped = len(todo_all) - len(todo)
        if not todo:
            stats.seconds = time.perf_counter() - t0
            return stats
        preparer = self.encoder.preparer()
        pool = None
        if self.workers > 0:
            pool = cf.ProcessPoolExecutor(self.workers, mp_context=mp.get_context("forkserver"),
                                          initializer=_init_worker, initargs=(preparer,))
        write_pool = cf.ThreadPoolExecutor(1)
        writes: list[cf.Future] = []
        try:
            wins = list(windows(todo, self.window_utterances))
            pending = self._submit(pool, preparer, wins[0])
            for i, win in enumerate(wins):
                nxt = self._submit(pool, preparer, wins[i + 1]) if i + 1 < len(wins) else None
                results = self._collect(pending)
                pending = nxt
                per_dialogue = self._encode_window(win, results, stats)
                for dialogue, (pooled, valid, frames, offsets, failures) in per_dialogue:
                    writes.append(write_pool.submit(self.writer.write_dialogue, dialogue.id, pooled, valid,
                                                    frames=frames, offsets=offsets, failures=failures,
                                                    inputs=self.writer.inputs_digest(dialogue)))
                    stats.dialogues_written += 1
                if progress:
                    progress(sum(len(d) for d in win))
                for w in writes:
                    if w.done():
                        w.result()  # surface write errors early
        finally:
            for w in writes:
                w.result()
            write_pool.shutdown()
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        stats.seconds = time.perf_counter() - t0
        return stats

    def _submit(self, pool, preparer: Preparer, win: list[Dialogue]):
        utts = [u for d in win for u in self.encoder.prepare_dialogue(d)]  # context-aware encoders add context
        if pool is None:
            return utts  # prepared lazily in _collect, in this process
        return [pool.submit(_prepare_chunk, utts[i: i + CHUNK]) for i in range(0, len(utts), CHUNK)]

    def _collect(self, pending) -> list[Prepared | dict]:
        if pending and isinstance(pending[0], Utterance):
            preparer = self._inline_preparer
            return [_prepare_one(preparer, u) for u in pending]
        out: list[Prepared | dict] = []
        for fut in pending:
            out.extend(fut.result())
        return out

    @property
    def _inline_preparer(self) -> Preparer:
        if not hasattr(self, "_inline"):
            self._inline = self.encoder.preparer()
        return self._inline

    def _encode_window(self, win: list[Dialogue], results: list[Prepared | dict], stats: RunStats):
        prepared = [r for r in results if isinstance(r, Prepared)]
        failed = {r["utterance_id"]: r for r in results if isinstance(r, dict)}
        for p in prepared:
            stats.notes.extend(f"{p.utterance_id}: {n}" for n in p.notes)
        encoded: dict[str, Encoded] = {}
        for batch in make_batches(prepared, self.encoder.batch_budget()):
            for item, enc in zip(batch, self.encoder.encode_batch(batch), strict=True):
                encoded[item.utterance_id] = enc
        stats.utterances_encoded += len(encoded)
        stats.failures.extend(failed.values())
        dim = self.encoder.dim
        out = []
        for d in win:
            pooled = np.zeros((len(d), dim), np.float32)
            valid = np.zeros(len(d), bool)
            frames_list: list[np.ndarray] = []
            for i, u in enumerate(d.utterances):
                enc = encoded.get(u.id)
                if enc is not None:
                    pooled[i] = enc.pooled
                    valid[i] = True
                if self.keep_frames:
                    frames_list.append(enc.frames if enc is not None and enc.frames is not None
                                       else np.zeros((0, dim), np.float32))
            frames = offsets = None
            if self.keep_frames:
                offsets = np.cumsum([0] + [len(f) for f in frames_list]).astype(np.int64)
                frames = np.concatenate(frames_list) if frames_list else np.zeros((0, dim), np.float32)
            failures = [failed[u.id] for u in d.utterances if u.id in failed]
            out.append((d, (pooled, valid, frames, offsets, failures)))
        return out
