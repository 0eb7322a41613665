"""merc-extract end to end on small real corpora: happy path, bad media, reports, exit codes, batching."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from media_fixtures import write_manifest_corpus, write_mp4_51, write_wav

from merc.extract.store import StoreReader

BIN = Path(sys.executable).parent / "merc-extract"


def run(*args, check_code=None):
    proc = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})
    if check_code is not None:
        assert proc.returncode == check_code, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_manifest_corpus(tmp_path_factory.mktemp("corpus"), n_dialogues=4, n_utts=4)


def test_extract_text_and_audio_then_nothing_to_do(corpus, tmp_path):
    store = tmp_path / "c.zarr"
    out = run("--dataset", "manifest", "--root", corpus, "--encoder", "egemaps", "--store", store, check_code=0).stdout
    assert "4/4 dialogues complete, dim 88, 0 utterance(s) skipped" in out
    run("--dataset", "manifest", "--root", corpus, "--encoder", "minilm", "--store", store, check_code=0)
    again = run("--dataset", "manifest", "--root", corpus, "--encoder", "minilm", "--store", store, check_code=0).stdout
    assert "already extracted; nothing to do" in again
    r = StoreReader(store)
    assert r.feature_sets("manifest") == ["egemaps", "minilm"]
    text = r.load_pooled("manifest", "minilm")
    assert text.pooled.shape == (16, 384) and text.valid.all()
    np.testing.assert_allclose(np.linalg.norm(text.pooled.astype(np.float32), axis=1), 1.0, atol=2e-3)
    status = run("status", "--store", store, check_code=0).stdout
    assert "egemaps" in status and "4/4" in status
    assert "verify" in run("verify", "--store", store, check_code=0).stdout


def test_compare_functionals_are_stored_exactly_in_float32(corpus, tmp_path):
    """ComParE values reach ~1e11: stored as float16 they would be inf. They must round-trip exactly."""
    import opensmile

    from merc.extract.media import AudioPolicy, load_audio

    store = tmp_path / "c.zarr"
    run("--dataset", "manifest", "--root", corpus, "--encoder", "compare", "--store", store, check_code=0)
    r = StoreReader(store)
    feats = r.load_pooled("manifest", "compare")
    assert feats.pooled.dtype == np.float32 and feats.pooled.shape == (16, 6373)
    assert np.isfinite(feats.pooled).all() and np.abs(feats.pooled).max() > 65504
    first = r.manifest("manifest").dialogues[0].utterances[0]
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.ComParE_2016,
                            feature_level=opensmile.FeatureLevel.Functionals)
    direct = smile.process_signal(load_audio(first.media, AudioPolicy()).samples, 16000).to_numpy()[0]
    np.testing.assert_array_equal(feats.pooled[0], direct.astype(np.float32))
    assert "OK" in run("verify", "--store", store, check_code=0).stdout


def test_changed_encoder_settings_need_overwrite(corpus, tmp_path):
    store = tmp_path / "c.zarr"
    run("--dataset", "manifest", "--root", corpus, "--encoder", "minilm", "--store", store, check_code=0)
    err = run("--dataset", "manifest", "--root", corpus, "--encoder", "minilm", "--pooling", "cls",
              "--store", store, check_code=2).stdout
    assert "another fingerprint" in err and "pooling: 'mean' -> 'cls'" in err and "--overwrite" in err
    run("--dataset", "manifest", "--root", corpus, "--encoder", "minilm", "--pooling", "cls", "--overwrite",
        "--store", store, check_code=0)


def _bad_corpus(root: Path) -> Path:
    """One dialogue of every kind of bad or awkward media the corpora hold."""
    root.mkdir()
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    sf.write(root / "empty.wav", np.zeros(0, np.float32), 16000)
    write_mp4_51(root / "surround.mp4", 1.0)
    long_wave = (0.1 * np.sin(np.arange(16000 * 600) * 0.05)).astype(np.float32)  # a 10-minute mis-cut clip
    sf.write(root / "long.wav", long_wave, 16000, subtype="PCM_16")
    write_wav(root / "ok.wav", 0.8)
    (root / "lyrics.mp4").write_text("[00:01.00]hello\n[00:02.00]world\n")  # FFmpeg probes it as LRC subtitles
    rows = [("corrupt.mp4", "a corrupt clip"), ("empty.wav", "zero samples"), ("missing.wav", "no file"),
            ("surround.mp4", "six channels"), ("long.wav", "ten minutes"), ("ok.wav", ""),
            ("lyrics.mp4", "not media")]
    path = root / "m.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["dialogue_id", "utterance_id", "speaker", "text", "split", "audio", "emotion"])
        for i, (audio, text) in enumerate(rows):
            w.writerow(["d0", f"u{i}", "A", text, "train", audio, "joy"])
    return path


def test_bad_media_is_reported_not_fatal(tmp_path):
    manifest = _bad_corpus(tmp_path / "bad")
    store = tmp_path / "b.zarr"
    proc = run("--dataset", "manifest", "--root", manifest, "--encoder", "egemaps", "--store", store, check_code=1)
    out = proc.stdout
    assert "skipped u0" in out and "corrupt.mp4" in out and "cannot decode" in out and "Fix:" in out
    assert "skipped u1" in out and "empty" in out
    assert "skipped u2" in out and "missing.wav" in out
    assert "u4: capped 600.0 s to 30 s" in out
    assert "skipped u6" in out and "lyrics.mp4" in out and "only format 'lrc'" in out
    assert "4 utterance(s) skipped" in out and "--allow-missing" in out
    r = StoreReader(store)
    feats = r.load_pooled("m", "egemaps")
    assert feats.valid.tolist() == [False, False, False, True, True, True, False]
    report = r.info("m", "egemaps")["report"]
    assert {f["utterance_id"] for f in report["failures"]} == {"u0", "u1", "u2", "u6"}
    assert all(f["fix"] for f in report["failures"])
    # a rerun retries the dialogue with failures (the clips may have been fixed); still broken, the same
    # four are reported, and --allow-missing exits 0
    again = run("--dataset", "manifest", "--root", manifest, "--encoder", "egemaps", "--store", store,
                "--allow-missing", check_code=0).stdout
    assert "retrying 1 dialogue(s) with skipped utterances" in again and "4 utterance(s) skipped" in again


def test_empty_transcript_is_a_text_failure(tmp_path):
    manifest = _bad_corpus(tmp_path / "bad")
    proc = run("--dataset", "manifest", "--root", manifest, "--encoder", "minilm", "--store", tmp_path / "t.zarr",
               check_code=1)
    assert "skipped u5" in proc.stdout and "empty transcript" in proc.stdout and "row 6" in proc.stdout
    assert "1 utterance(s) skipped" in proc.stdout


def test_surround_clip_decodes_to_mono_16k(tmp_path):
    from merc.extract.media import AudioPolicy, load_audio

    clip = write_mp4_51(tmp_path / "c.mp4", 1.0)
    audio = load_audio(clip, AudioPolicy())
    assert audio.source_rate == 48000 and audio.source_channels == 6
    assert abs(len(audio.samples) - 16000) < 400  # AAC priming adds ~20 ms
    centre = load_audio(clip, AudioPolicy(channels="center"))
    assert np.abs(centre.samples).max() > 2 * np.abs(audio.samples).max()  # speech sits in the centre channel
    cropped = load_audio(clip, AudioPolicy(), start=0.25, end=0.75)
    assert abs(len(cropped.samples) - 8000) < 10


def test_text_vectors_do_not_depend_on_batch_padding():
    from merc.extract.encoders import EncoderRequest, build_encoder
    from merc.extract.encoders.base import Prepared

    enc = build_encoder(EncoderRequest("minilm"))
    short = Prepared("a", "Fine.", 5)
    long = Prepared("b", "I cannot believe you ate the whole thing without asking anyone at all.", 70)
    alone = enc.encode_batch([short])[0].pooled
    batched = enc.encode_batch([short, long])[0].pooled
    np.testing.assert_allclose(alone, batched, atol=1e-5)


def test_batches_respect_budget_and_sort_by_length():
    from merc.extract.encoders.base import Prepared
    from merc.extract.runner import make_batches

    items = [Prepared(f"u{i}", None, length) for i, length in enumerate([5, 50, 7, 48, 6, 49, 100])]
    batches = make_batches(items, budget=100)
    assert sorted(it.utterance_id for b in batches for it in b) == sorted(it.utterance_id for it in items)
    for b in batches:
        assert max(it.length for it in b) * len(b) <= 100 or len(b) == 1
    lengths = [it.length for b in batches for it in b]
    assert lengths == sorted(lengths)


def test_missing_arguments_and_unknown_encoder_give_clear_errors(corpus, tmp_path):
    assert "--dataset, --root (or --from-store) and --encoder are required" in run("--store", tmp_path / "x.zarr", check_code=2).stdout
    out = run("--dataset", "manifest", "--root", corpus, "--encoder", "nope", "--store", tmp_path / "x.zarr",
              check_code=2).stdout
    assert "unknown encoder 'nope'" in out and "minilm" in out


class ThreadsPreparer:
    """Reports the torch thread count seen inside a worker, importing torch only when called (as HF preparers may)."""

    def __call__(self, utt):
        import torch

        from merc.extract.encoders.base import Prepared

        return Prepared(utt.id, torch.get_num_threads(), 1)


def test_worker_processes_run_torch_on_one_thread():
    import concurrent.futures as cf
    import multiprocessing as mp

    from merc.data_manifests.manifest import Utterance
    from merc.extract.runner import _init_worker, _prepare_chunk

    utts = [Utterance(f"u{i}", "d", "A", "x", "train") for i in range(4)]
    with cf.ProcessPoolExecutor(2, mp_context=mp.get_context("forkserver"), initializer=_init_worker,
                                initargs=(ThreadsPreparer(),)) as pool:
        results = [r for chunk in pool.map(_prepare_chunk, [utts[:2], utts[2:]]) for r in chunk]
    assert [r.value for r in results] == [1, 1, 1, 1]


def test_default_decode_workers_follow_the_device_and_the_cores():
    from merc.extract.encoders.base import Encoder
    from merc.extract.runner import default_workers

    class Fake(Encoder):
        def __init__(self, modality="audio", final=False, device="cpu"):
            super().__init__("fake")
            self.modality, self.final_in_preparer = modality, final
            self.opts = type("Opts", (), {"device": device})()

    assert default_workers(Fake(final=True), cores=2) == 2  # openSMILE: one per core
    assert default_workers(Fake(modality="text"), cores=16) == 0  # nothing to decode
    assert default_workers(Fake(device="cuda"), cores=16) == 15  # the CPU is free while the GPU works
    assert default_workers(Fake(device="cuda:1"), cores=2) == 1
    assert default_workers(Fake(), cores=2) == 0  # a CPU model needs both cores itself
    assert default_workers(Fake(), cores=8) == 1
