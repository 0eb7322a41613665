"""Speech SSL family (data2vec-audio, wav2vec2, WavLM, HuBERT): CLI end to end, padding invariance, layers, frames."""

import numpy as np
import pytest
import torch
from encoder_testing import extract_cli, tiny_model
from media_fixtures import write_manifest_corpus, write_wav

from merc.data_manifests.manifest import Utterance
from merc.extract.encoders import EncoderRequest, build_encoder
from merc.extract.store import StoreReader


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_manifest_corpus(tmp_path_factory.mktemp("ssl"), n_dialogues=3, n_utts=3)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return [Utterance(f"u{i}", "d", "A", "x", "train", media=str(write_wav(root / f"{i}.wav", s, 180 + 40 * i, seed=i)))
            for i, s in enumerate([0.5, 1.37, 2.2])]


def test_data2vec_cli_with_frames_through_worker_processes(corpus, tmp_path):
    store = tmp_path / "a.zarr"
    out = extract_cli("--dataset", "manifest", "--root", corpus, "--encoder", f"hf:{tiny_model('data2vec-audio')}",
                      "--store", store, "--feature-set", "d2v", "--keep-frames", "--decode-workers", "1")
    assert "3/3 dialogues complete, dim 32, 0 utterance(s) skipped" in out
    r = StoreReader(store)
    feats = r.load_pooled("manifest", "d2v")
    assert feats.pooled.shape == (9, 32) and feats.valid.all()
    assert r.info("manifest", "d2v")["levels"] == ["utterance", "frames"]
    frames, offsets = r.load_frames("manifest", "d2v", "d0")
    # 0.6 / 0.7 / 0.8 s clips -> the conv front end's real output lengths, nothing for padding
    lengths = torch.tensor([int(s * 16000) for s in (0.6, 0.7, 0.8)])
    expected = build_encoder(EncoderRequest(f"hf:{tiny_model('data2vec-audio')}")).model \
        ._get_feat_extract_output_lengths(lengths).tolist()
    assert np.diff(offsets).tolist() == expected
    pooled0 = feats.pooled[0].astype(np.float32)
    np.testing.assert_allclose(frames[offsets[0]:offsets[1]].astype(np.float32).mean(0), pooled0, atol=2e-3)


@pytest.mark.parametrize("kind", ["data2vec-audio", "wav2vec2-group", "wavlm", "hubert"])
def test_padding_never_changes_a_clip_vector(kind, clips):
    enc = build_encoder(EncoderRequest(f"hf:{tiny_model(kind)}", layers="all"))
    enc.keep_frames = True
    prep = enc.preparer()
    items = [prep(u) for u in clips]
    batched = enc.encode_batch(items)  # lengths 0.5 s, 1.37 s, 2.2 s in one padded batch
    for item, together in zip(items, batched, strict=True):
        alone = enc.encode_batch([item])[0]
        np.testing.assert_allclose(alone.pooled, together.pooled, atol=1e-4)
        np.testing.assert_allclose(alone.frames, together.frames, atol=1e-4)
    assert enc.group_norm == (kind == "wav2vec2-group")


def test_group_norm_model_batches_equal_lengths_without_padding(clips, monkeypatch):
    enc = build_encoder(EncoderRequest(f"hf:{tiny_model('wav2vec2-group')}"))
    prep = enc.preparer()
    a, b = prep(clips[0]), prep(clips[1])
    seen = []
    forward = enc._forward
    monkeypatch.setattr(enc, "_forward", lambda items: seen.append([len(it.value) for it in items]) or forward(items))
    enc.encode_batch([a, a, b])
    assert seen == [[len(a.value)] * 2, [len(b.value)]]


def test_layer_choice_all_and_last_k(clips):
    model_dir = tiny_model("data2vec-audio")
    item = build_encoder(EncoderRequest(f"hf:{model_dir}")).preparer()(clips[1])
    vec = {spec: build_encoder(EncoderRequest(f"hf:{model_dir}", layers=spec)).encode_batch([item])[0].pooled
           for spec in ("all", "last", "last2-mean", "0", "-2")}
    blocks = vec["all"].reshape(3, 32)  # embeddings + 2 layers, layer-major
    assert vec["all"].shape == (96,)
    np.testing.assert_allclose(blocks[-1], vec["last"], atol=1e-5)
    np.testing.assert_allclose(blocks[0], vec["0"], atol=1e-5)
    np.testing.assert_allclose(blocks[1], vec["-2"], atol=1e-5)
    np.testing.assert_allclose(blocks[1:].mean(0), vec["last2-mean"], atol=1e-5)


def test_bad_layer_and_pooling_fail_before_extraction():
    from merc.extract.encoders.base import EncoderError

    with pytest.raises(EncoderError, match="not valid for a model with 2 layers"):
        build_encoder(EncoderRequest(f"hf:{tiny_model('wavlm')}", layers="7"))
    with pytest.raises(EncoderError, match="unknown pooling 'cls' for a speech encoder"):
        build_encoder(EncoderRequest(f"hf:{tiny_model('wavlm')}", pooling="cls"))


def test_preparer_pickles_for_worker_processes(clips):
    import pickle

    enc = build_encoder(EncoderRequest(f"hf:{tiny_model('hubert')}"))
    prep = pickle.loads(pickle.dumps(enc.preparer()))
    np.testing.assert_array_equal(prep(clips[0]).value, enc.preparer()(clips[0]).value)
