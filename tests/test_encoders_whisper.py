"""Whisper encoder family: frames trimmed to real audio, >30 s clips chunked (never silently cut), batching."""

import numpy as np
import pytest
import torch
from encoder_testing import extract_cli, tiny_model, write_csv_manifest
from media_fixtures import write_wav

from merc.data_manifests.manifest import Utterance
from merc.extract.encoders import EncoderRequest, build_encoder
from merc.extract.encoders.hf_whisper import real_frames
from merc.extract.media import AudioPolicy
from merc.extract.store import StoreReader


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("whisper")
    return {"1s": write_wav(root / "one.wav", 1.0, 200), "40s": write_wav(root / "forty.wav", 40.0, 150),
            "2.5s": write_wav(root / "two.wav", 2.5, 260)}


def _utt(uid: str, path) -> Utterance:
    return Utterance(uid, "d", "A", "x", "train", media=str(path))


def test_pooled_vector_is_the_mean_of_the_real_audio_frames(media):
    """1 s of audio = 100 log-mel frames = the first 50 of Whisper's 1500 encoder frames."""
    from transformers import WhisperFeatureExtractor, WhisperModel

    model_dir = tiny_model("whisper")
    enc = build_encoder(EncoderRequest(f"hf:{model_dir}"))
    enc.keep_frames = True
    got = enc.encode_batch([enc.preparer()(_utt("a", media["1s"]))])[0]
    # the plain Hugging Face way, by hand
    import soundfile as sf

    wave, _ = sf.read(media["1s"], dtype="float32")
    feats = WhisperFeatureExtractor.from_pretrained(model_dir)(wave, sampling_rate=16000, return_tensors="pt")
    with torch.inference_mode():
        frames = WhisperModel.from_pretrained(model_dir).get_encoder()(feats.input_features).last_hidden_state[0]
    assert frames.shape[0] == 1500 and got.frames.shape == (50, 16)
    np.testing.assert_allclose(got.frames, frames[:50].numpy(), atol=1e-5)
    np.testing.assert_allclose(got.pooled, frames[:50].mean(0).numpy(), atol=1e-5)
    assert not np.allclose(got.pooled, frames.mean(0).numpy(), atol=1e-3)  # padding would have mattered


def test_real_frames_rounding():
    assert real_frames(16000, 1500) == 50 and real_frames(480000, 1500) == 1500 and real_frames(160000, 1500) == 500
    assert real_frames(16100, 1500) == 50 and real_frames(16160, 1500) == 51 and real_frames(10, 1500) == 1


def test_cli_chunks_long_clips_and_reports_the_default_cap(media, tmp_path):
    manifest = write_csv_manifest(tmp_path / "m.csv", [
        {"dialogue_id": "d0", "utterance_id": "u0", "speaker": "A", "text": "hi", "split": "train",
         "audio": str(media["1s"]), "emotion": "joy"},
        {"dialogue_id": "d0", "utterance_id": "u1", "speaker": "B", "text": "long", "split": "train",
         "audio": str(media["40s"]), "emotion": "anger"},
        {"dialogue_id": "d0", "utterance_id": "u2", "speaker": "A", "text": "mid", "split": "train",
         "audio": str(media["2.5s"]), "emotion": "joy"}])
    model = f"hf:{tiny_model('whisper')}"
    store = tmp_path / "w.zarr"
    out = extract_cli("--dataset", "manifest", "--root", manifest, "--encoder", model, "--store", store,
                      "--keep-frames", "--max-seconds", "60", "--decode-workers", "0")
    assert "1/1 dialogues complete, dim 16, 0 utterance(s) skipped" in out and "capped" not in out
    r = StoreReader(store)
    frames, offsets = r.load_frames("m", model.rsplit("/", 1)[-1], "d0")
    assert np.diff(offsets).tolist() == [50, 2000, 125]  # 40 s = 30 s chunk (1500) + 10 s chunk (500)
    pooled = r.load_pooled("m", model.rsplit("/", 1)[-1]).pooled.astype(np.float32)
    np.testing.assert_allclose(frames[50:2050].astype(np.float32).mean(0), pooled[1], atol=2e-3)
    # with the default 30 s cap the cut is reported, never silent
    out = extract_cli("--dataset", "manifest", "--root", manifest, "--encoder", model, "--store", tmp_path / "c.zarr",
                      "--decode-workers", "0")
    assert "u1: capped 40.0 s to 30 s" in out


def test_batching_and_chunking_do_not_change_vectors(media):
    enc = build_encoder(EncoderRequest(f"hf:{tiny_model('whisper')}", audio=AudioPolicy(max_seconds=60),
                                       layers="last2-mean"))
    prep = enc.preparer()
    items = [prep(_utt(k, media[k])) for k in ("1s", "2.5s", "40s")]
    assert [len(it.value[1]) for it in items] == [1, 1, 2]
    together = enc.encode_batch(items)
    for item, vec in zip(items, together, strict=True):
        np.testing.assert_allclose(enc.encode_batch([item])[0].pooled, vec.pooled, atol=1e-5)
    assert enc.dim == 16 and together[0].pooled.shape == (16,)
    assert enc.fingerprint() != build_encoder(EncoderRequest(f"hf:{tiny_model('whisper')}")).fingerprint()


def test_workers_ship_trimmed_log_mels_that_restore_exactly(media):
    from merc.extract.encoders.hf_whisper import trim_mel, untrim_mel

    enc = build_encoder(EncoderRequest(f"hf:{tiny_model('whisper')}"))
    wave = enc.preparer()(_utt("a", media["2.5s"]))
    (trimmed, fill), = wave.value[0]
    assert trimmed.shape[1] < 300  # 2.5 s = 250 frames (+ the STFT window's overlap), not 3000
    import soundfile as sf

    samples, _ = sf.read(media["2.5s"], dtype="float32")
    mel = enc.feature_extractor(samples, sampling_rate=16000, return_tensors="np")["input_features"][0]
    np.testing.assert_array_equal(untrim_mel(trimmed, fill, 3000), mel)
    np.testing.assert_array_equal(untrim_mel(*trim_mel(mel), 3000), mel)


@pytest.mark.parametrize("n_samples", [1, 160, 399, 16_123, 47_999, 479_799, 479_900, 480_000])
@pytest.mark.parametrize("signal", ["noise", "silence"])
def test_log_mel_over_real_frames_equals_the_extractor_bitwise(n_samples, signal):
    """The STFT over the clip's own frames gives the extractor's padded 30 s log-mel exactly."""
    from transformers import WhisperFeatureExtractor

    from merc.extract.encoders.hf_whisper import log_mel_real_frames, untrim_mel

    fe = WhisperFeatureExtractor.from_pretrained(tiny_model("whisper"))
    rng = np.random.default_rng(n_samples)
    wave = (0.2 * rng.standard_normal(n_samples) if signal == "noise" else np.zeros(n_samples)).astype(np.float32)
    trimmed, fill = log_mel_real_frames(wave, fe)
    assert trimmed.shape[1] <= max(65, n_samples // 160 + 3)  # only the frames that see the clip (64 at least)
    expected = fe(wave, sampling_rate=16000, return_tensors="np")["input_features"][0]
    np.testing.assert_array_equal(untrim_mel(trimmed, fill, 3000), expected)


def test_extractors_of_another_recipe_take_the_full_window(monkeypatch):
    from transformers import WhisperFeatureExtractor

    from merc.extract.encoders.hf_whisper import can_trim_stft

    fe = WhisperFeatureExtractor.from_pretrained(tiny_model("whisper"))
    assert can_trim_stft(fe)
    monkeypatch.setattr(fe, "dither", 1e-5)  # random noise over the padding too: no shortcut
    assert not can_trim_stft(fe)
