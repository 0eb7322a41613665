"""Speech LLM family (a tiny Qwen2-Audio with its real processor built offline): prompt, pooling, batching, CLI."""

import numpy as np
import pytest
from encoder_testing import extract_cli, tiny_model
from media_fixtures import write_manifest_corpus, write_wav

from merc.data_manifests.manifest import Utterance
from merc.extract.encoders import EncoderRequest, build_encoder, family_of
from merc.extract.store import StoreReader


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    root = tmp_path_factory.mktemp("sllm")
    enc = build_encoder(EncoderRequest(f"sllm:{tiny_model('qwen2-audio')}"))
    utts = [Utterance(f"u{i}", "d", "A", "x", "train", media=str(write_wav(root / f"{i}.wav", s, 170 + 50 * i)))
            for i, s in enumerate([0.7, 1.9, 3.1])]
    return enc, [enc.preparer()(u) for u in utts]


def test_prompt_is_the_chat_template_up_to_the_answer(items):
    enc, _ = items
    assert enc.prompt.endswith("What is the emotion of the speaker?<|im_end|>\n<|im_start|>assistant\n")
    assert "<|audio_bos|><|AUDIO|><|audio_eos|>" in enc.prompt
    assert enc.dim == 32


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_batching_does_not_change_vectors(items, pooling):
    enc, prepared = items
    enc.opts.pooling = pooling
    enc.keep_frames = True
    together = enc.encode_batch(prepared)  # 0.7 / 1.9 / 3.1 s: different numbers of audio tokens
    for item, vec in zip(prepared, together, strict=True):
        alone = enc.encode_batch([item])[0]
        np.testing.assert_allclose(alone.pooled, vec.pooled, atol=1e-4)
        # answer side = the tokens after <|audio_eos|>: the same count for every clip
        assert alone.frames.shape == together[0].frames.shape
    enc.opts.pooling, enc.keep_frames = "last", False
    np.testing.assert_allclose(together[0].frames[-1], enc.encode_batch([prepared[0]])[0].pooled, atol=1e-4)


def test_instruction_changes_vector_and_fingerprint(items):
    enc, prepared = items
    other = build_encoder(EncoderRequest(f"sllm:{tiny_model('qwen2-audio')}", instruction="Is the speaker angry?"))
    assert "Is the speaker angry?" in other.prompt and other.fingerprint() != enc.fingerprint()
    assert not np.allclose(other.encode_batch(prepared[:1])[0].pooled, enc.encode_batch(prepared[:1])[0].pooled)


def test_cli_hf_prefix_dispatches_to_the_speech_llm(tmp_path):
    assert family_of(str(tiny_model("qwen2-audio"))) == "sllm"
    corpus = write_manifest_corpus(tmp_path / "c", n_dialogues=3, n_utts=2)
    store = tmp_path / "s.zarr"
    out = extract_cli("--dataset", "manifest", "--root", corpus, "--encoder", f"hf:{tiny_model('qwen2-audio')}",
                      "--store", store, "--feature-set", "qa", "--decode-workers", "0")
    assert "3/3 dialogues complete, dim 32, 0 utterance(s) skipped" in out
    assert StoreReader(store).info("manifest", "qa")["fingerprint"]["family"] == "hf-speech-llm"


def test_worker_log_mels_give_exactly_the_processors_inputs(items):
    """Workers ship log-mels of the real frames; the main process rebuilds what the processor would give."""
    import torch

    from merc.extract.encoders.hf_speech_llm import LogMel

    enc, prepared = items
    assert enc.fast_inputs and all(isinstance(it.value, LogMel) for it in prepared)
    rng = np.random.default_rng(3)
    clips = [(0.2 * rng.standard_normal(n)).astype(np.float32) for n in (1, 161, 11_000, 30_400, 480_000)]
    fe = enc.processor.feature_extractor
    ours = enc._inputs([LogMel.of(c, fe) for c in clips])
    theirs = enc._processor_inputs(clips)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


def test_processor_conventions_it_cannot_reproduce_fall_back_to_the_processor(items, tmp_path, monkeypatch):
    from merc.extract.encoders import hf_speech_llm

    fast, _ = items
    utt = Utterance("u", "d", "A", "x", "train", media=str(write_wav(tmp_path / "a.wav", 1.3, 210)))
    expected = fast.encode_batch([fast.preparer()(utt)])[0].pooled
    real = hf_speech_llm.log_mel_real_frames
    monkeypatch.setattr(hf_speech_llm, "log_mel_real_frames", lambda s, fe: (real(s, fe)[0] + 1e-3, real(s, fe)[1]))
    enc = build_encoder(EncoderRequest(f"sllm:{tiny_model('qwen2-audio')}"))
    assert not enc.fast_inputs  # the start-up probe saw the difference
    item = enc.preparer()(utt)
    assert isinstance(item.value, np.ndarray)  # raw samples, for the processor
    np.testing.assert_allclose(enc.encode_batch([item])[0].pooled, expected, atol=1e-5)


def test_audio_tower_over_the_clips_own_frames_gives_the_full_windows_states(items):
    """Qwen2-Audio masks the padding: the tower over the batch's cut window equals the 30 s window's."""
    from merc.extract.encoders.audio_tower import window_frames
    from merc.extract.encoders.hf_speech_llm import LogMel

    enc, _ = items
    assert enc.short_window
    fe = enc.processor.feature_extractor
    rng = np.random.default_rng(5)
    clips = [(0.2 * rng.standard_normal(n)).astype(np.float32) for n in (1, 161, 5_000, 11_000, 30_401, 64_000)]
    mels = [LogMel.of(c, fe) for c in clips]
    assert enc._inputs(mels, short=True)["input_features"].shape[-1] == window_frames(
        [-(-len(c) // 160) for c in clips], [m.trimmed_fm.shape[1] for m in mels], 3000) == 402  # not 3000
    short, full = enc._answer_states(mels, short=True), enc._answer_states(mels, short=False)
    for a, b in zip(short, full, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # each clip alone (a different cut) gives the same states too
    for mel, b in zip(mels, full, strict=True):
        np.testing.assert_allclose(enc._answer_states([mel], short=True)[0], b, atol=1e-5)


def test_window_frames_reach_past_every_clip_and_stay_even():
    from merc.extract.encoders.audio_tower import window_frames

    assert window_frames([100], [65], 3000) == 102 and window_frames([101], [65], 3000) == 104
    assert window_frames([10, 50], [65, 65], 3000) == 66  # the shipped frames reach further
    assert window_frames([2999], [3000], 3000) == 3000  # never past the window


def test_a_tower_that_does_not_match_the_full_window_is_not_cut(items, monkeypatch):
    from merc.extract.encoders import audio_tower

    fast, prepared = items
    expected = fast.encode_batch(prepared[:1])[0].pooled
    real = audio_tower.inputs_embeds
    monkeypatch.setattr(audio_tower, "inputs_embeds", lambda *a: real(*a) * 1.01)
    enc = build_encoder(EncoderRequest(f"sllm:{tiny_model('qwen2-audio')}"))
    assert enc.fast_inputs and not enc.short_window  # the start-up probe saw the difference
    np.testing.assert_allclose(enc.encode_batch(prepared[:1])[0].pooled, expected, atol=1e-5)
