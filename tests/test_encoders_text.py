"""Text family (RoBERTa through hf:), short names -> hub ids, hf: dispatch on model_type, helpful errors."""

import time

import numpy as np
import pytest
from encoder_testing import extract_cli, tiny_model
from media_fixtures import write_manifest_corpus

from merc.extract.encoders import ENCODERS, HUB_MODELS, EncoderRequest, build_encoder, family_of
from merc.extract.encoders.base import EncoderError, Prepared
from merc.extract.store import StoreReader


def test_roberta_cli_cls_and_last4_mean(tmp_path):
    corpus = write_manifest_corpus(tmp_path / "c", n_dialogues=3, n_utts=3)
    store = tmp_path / "t.zarr"
    model = tiny_model("roberta")
    out = extract_cli("--dataset", "manifest", "--root", corpus, "--encoder", f"hf:{model}", "--pooling", "cls",
                      "--layers", "last4-mean", "--store", store, "--feature-set", "rob", "--keep-frames")
    assert "3/3 dialogues complete, dim 32, 0 utterance(s) skipped" in out
    r = StoreReader(store)
    fp = r.info("manifest", "rob")["fingerprint"]
    assert (fp["pooling"], fp["layers"], fp["family"]) == ("cls", "last4-mean", "hf-text")
    frames, offsets = r.load_frames("manifest", "rob", "d0")
    pooled = r.load_pooled("manifest", "rob").pooled
    np.testing.assert_allclose(frames[0].astype(np.float32), pooled[0].astype(np.float32), atol=2e-3)  # cls = token 0
    assert (np.diff(offsets) > 3).all()  # real tokens of each utterance, no padding


def test_text_pooling_and_layers_in_process():
    model = tiny_model("roberta")
    items = [Prepared("a", "fine.", 5), Prepared("b", "i cannot believe you ate the whole thing", 40)]
    vec = {}
    for pooling in ("mean", "cls"):
        for layers in ("last", "all", "last4-mean", "1"):
            enc = build_encoder(EncoderRequest(f"hf:{model}", pooling=pooling, layers=layers))
            vec[pooling, layers] = enc.encode_batch(items)
            alone = enc.encode_batch(items[:1])[0].pooled
            np.testing.assert_allclose(alone, vec[pooling, layers][0].pooled, atol=1e-5)
            assert vec[pooling, layers][0].pooled.shape == ((128,) if layers == "all" else (32,))
    all_ = vec["mean", "all"][1].pooled.reshape(4, 32)  # embeddings + 3 layers
    np.testing.assert_allclose(all_[-1], vec["mean", "last"][1].pooled, atol=1e-5)
    np.testing.assert_allclose(all_[1], vec["mean", "1"][1].pooled, atol=1e-5)
    np.testing.assert_allclose(all_.mean(0), vec["mean", "last4-mean"][1].pooled, atol=1e-5)
    with pytest.raises(EncoderError, match="unknown pooling 'last' for a text encoder"):
        build_encoder(EncoderRequest(f"hf:{model}", pooling="last"))


def test_short_names_map_to_hub_ids():
    expected = {"roberta-base": "FacebookAI/roberta-base", "roberta-large": "FacebookAI/roberta-large",
                "data2vec": "facebook/data2vec-audio-base", "data2vec-large": "facebook/data2vec-audio-large",
                "wavlm-large": "microsoft/wavlm-large", "hubert-large": "facebook/hubert-large-ll60k",
                "whisper-tiny": "openai/whisper-tiny", "whisper-base": "openai/whisper-base",
                "whisper-small": "openai/whisper-small", "whisper-medium": "openai/whisper-medium",
                "whisper-large-v3": "openai/whisper-large-v3"}
    assert {k: v[0] for k, v in HUB_MODELS.items()} == expected
    assert set(expected) <= set(ENCODERS)
    assert [HUB_MODELS[n][1] for n in ("roberta-base", "data2vec", "whisper-tiny")] == ["text", "audio", "whisper"]


def test_missing_model_says_how_to_fetch_it():
    t0 = time.perf_counter()
    with pytest.raises(EncoderError) as err:
        build_encoder(EncoderRequest("roberta-base"))  # HF_HUB_OFFLINE=1 and not in the cache
    msg = str(err.value)
    assert "FacebookAI/roberta-base" in msg and "hf download FacebookAI/roberta-base --local-dir" in msg
    assert time.perf_counter() - t0 < 15


def test_hf_prefix_dispatches_on_model_type():
    kinds = {"roberta": "text", "data2vec-audio": "audio", "wav2vec2-group": "audio", "whisper": "whisper",
             "llama": "llm", "qwen2": "llm", "qwen2-audio": "sllm", "vit": "vision", "clip-vision": "vision"}
    assert {k: family_of(str(tiny_model(k))) for k in kinds} == kinds
    assert type(build_encoder(EncoderRequest(f"hf:{tiny_model('whisper')}"))).__name__ == "WhisperEncoder"


def test_family_only_options_are_errors_elsewhere():
    with pytest.raises(EncoderError, match="--fps applies to vision encoders"):
        build_encoder(EncoderRequest(f"hf:{tiny_model('roberta')}", fps=4))
    with pytest.raises(EncoderError, match="--instruction applies to sllm encoders"):
        build_encoder(EncoderRequest(f"hf:{tiny_model('whisper')}", instruction="why?"))
