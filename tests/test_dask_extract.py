"""dask scale-out: two local workers, one SIGKILLed mid-run; the store ends complete and equal to a local run."""

import os
import signal
import threading
import time

import numpy as np
import pytest
from media_fixtures import write_manifest_corpus

from merc.data_manifests.adapters import load_manifest
from merc.extract.distributed import describe_encoder, make_client, run_on_dask, shard
from merc.extract.encoders import EncoderRequest, build_encoder
from merc.extract.runner import Extraction
from merc.extract.store import StoreReader, StoreWriter


def _writer(path, manifest, fingerprint, info):
    w = StoreWriter(path, manifest.name, "egemaps")
    w.open(manifest, fingerprint=fingerprint, info=info)
    return w


def test_shards_are_contiguous_and_cover_everything():
    from merc.data_manifests.manifest import Dialogue, Utterance

    dialogues = [Dialogue(f"d{i}", "train", [Utterance(f"d{i}u{j}", f"d{i}", "A", "x", "train")
                                               for j in range(1 + i % 3)]) for i in range(10)]
    shards = shard(dialogues, 3)
    assert [d.id for s in shards for d in s] == [d.id for d in dialogues]
    assert 2 <= len(shards) <= 3


@pytest.mark.timeout(300)
def test_lost_worker_is_redone_and_store_matches_local_run(tmp_path):
    corpus = write_manifest_corpus(tmp_path / "corpus", n_dialogues=16, n_utts=4, seconds=0.5)
    manifest = load_manifest("manifest", corpus)
    req = EncoderRequest("egemaps")

    local = build_encoder(req)
    ref = _writer(tmp_path / "ref.zarr", manifest, local.fingerprint(), local.info())
    Extraction(manifest, local, ref, workers=0, window_utterances=4).run()
    ref.finalize(manifest)

    client = make_client(2, None)
    try:
        fingerprint, info = client.submit(describe_encoder, req, pure=False).result()
        assert fingerprint == local.fingerprint()
        writer = _writer(tmp_path / "dask.zarr", manifest, fingerprint, info)
        result: dict = {}
        runner = threading.Thread(target=lambda: result.update(
            stats=run_on_dask(client, manifest, req, writer, window=4, shards_per_worker=4)))
        runner.start()
        deadline = time.time() + 120
        while len(writer.done_dialogues()) < 3 and time.time() < deadline:
            time.sleep(0.02)
        victim = next(iter(client.run(os.getpid).values()))
        os.kill(victim, signal.SIGKILL)
        killed_at = len(writer.done_dialogues())
        runner.join(240)
        assert not runner.is_alive()
    finally:
        client.close()
    assert killed_at < len(manifest.dialogues), "the run ended before a worker could be killed"
    assert result["stats"].utterances_encoded > 0
    writer.finalize(manifest)
    reader = StoreReader(tmp_path / "dask.zarr")
    assert reader.verify() == []
    got = reader.load_pooled(manifest.name, "egemaps")
    want = StoreReader(tmp_path / "ref.zarr").load_pooled(manifest.name, "egemaps")
    assert got.valid.all()
    assert got.pooled.tobytes() == want.pooled.tobytes()
    np.testing.assert_array_equal(got.dialogue_offsets, want.dialogue_offsets)
