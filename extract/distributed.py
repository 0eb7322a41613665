"""Scale-out on dask.distributed: dialogues sharded across workers, all writing to one store.

Each worker process builds the encoder once (cached per process, one GPU per worker on a GPU cluster)
and runs the ordinary `Extraction` over its shards, committing dialogue by dialogue. Writers never
touch the same Zarr node, so no locks are needed. If a worker dies, dask reruns its shard elsewhere:
committed dialogues are skipped and a half-written one is redone, so the store ends complete and
identical to a one-process run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict

from merc.data_manifests.manifest import Dialogue, Manifest

from .encoders import EncoderRequest
from .runner import RunStats
from .store import StoreWriter

_ENCODERS: dict[str, object] = {}  # per worker process: request key -> built encoder


def _encoder(req: EncoderRequest):
    key = repr(asdict(req))
    if key not in _ENCODERS:
        import torch

        torch.set_num_threads(max(1, int(os.environ.get("MERC_WORKER_THREADS", "1"))))
        from .encoders import build_encoder

        _ENCODERS[key] = build_encoder(req)
    return _ENCODERS[key]


def describe_encoder(req: EncoderRequest) -> tuple[dict, dict]:
    """(fingerprint, info), computed on a worker so the client never loads the model."""
    enc = _encoder(req)
    return enc.fingerprint(), enc.info()


def extract_shard(req: EncoderRequest, store: str, dataset: str, feature_set: str,
                  dialogues: list[Dialogue], window: int) -> dict:
    """Runs on a worker: extract the shard's dialogues that are not yet committed."""
    from .runner import Extraction

    enc = _encoder(req)
    writer = StoreWriter(store, dataset, feature_set)
    manifest = Manifest(dataset, {}, dialogues)
    stats = Extraction(manifest, enc, writer, workers=0, window_utterances=window).run(dialogues=dialogues)
    return {"dialogues_written": stats.dialogues_written, "utterances": sum(len(d) for d in dialogues),
            "utterances_encoded": stats.utterances_encoded, "failures": len(stats.failures),
            "notes": stats.notes}


def shard(dialogues: list[Dialogue], n_shards: int) -> list[list[Dialogue]]:
    """Contiguous shards of about equal utterance counts (contiguous keeps batching close to a local run)."""
    total = sum(len(d) for d in dialogues)
    target = max(1, total // max(1, n_shards))
    shards: list[list[Dialogue]] = [[]]
    count = 0
    for d in dialogues:
        if count >= target and len(shards) < n_shards:
            shards.append([])
            count = 0
        shards[-1].append(d)
        count += len(d)
    return [s for s in shards if s]


def make_client(workers: int | None, scheduler: str | None):
    from dask.distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler)
    cluster = LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True, dashboard_address=None)
    return Client(cluster)


def run_on_dask(client, manifest: Manifest, req: EncoderRequest, writer: StoreWriter, *, window: int = 512,
                shards_per_worker: int = 4, progress: Callable[[int], None] | None = None) -> RunStats:
    """Fan the dialogues not yet committed out to the workers as shards; `writer` is already open."""
    from dask.distributed import as_completed

    t0 = time.perf_counter()
    stats = RunStats(dialogues_total=len(manifest.dialogues))
    done = writer.done_dialogues()
    todo = [d for d in manifest.dialogues if d.id not in done]
    stats.dialogues_skipped = len(manifest.dialogues) - len(todo)
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    futures = [client.submit(extract_shard, req, str(writer.path), writer.dataset, writer.feature_set, s, window,
                             pure=False, retries=3) for s in shard(todo, n_workers * shards_per_worker)]
    for fut in as_completed(futures):
        result = fut.result()
        stats.dialogues_written += result["dialogues_written"]
        stats.utterances_encoded += result["utterances_encoded"]
        stats.notes.extend(result["notes"])
        if progress:
            progress(result["utterances"])
    stats.seconds = time.perf_counter() - t0
    return stats
