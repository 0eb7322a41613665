"""Vision family: frames sampled from mp4 video at --fps, per-frame embeddings (ViT, CLIP), mean over frames."""

import numpy as np
import pytest
from encoder_testing import extract_cli, tiny_model, write_csv_manifest, write_video
from media_fixtures import write_wav

from merc.data_manifests.manifest import Utterance
from merc.extract.encoders import EncoderRequest, build_encoder, family_of
from merc.extract.encoders.hf_vision import read_frames
from merc.extract.store import StoreReader


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    return {"2s": write_video(root / "a.mp4", 2.0, seed=1), "1s": write_video(root / "b.mp4", 1.0, seed=2, with_audio=True),
            "wav": write_wav(root / "c.wav", 1.0)}


def test_frames_are_sampled_at_fps_within_the_span(videos):
    frames, notes = read_frames(str(videos["2s"]), fps=2)
    assert len(frames) == 4 and frames[0].shape == (32, 32, 3) and not notes
    assert len(read_frames(str(videos["2s"]), fps=5)[0]) == 10
    assert len(read_frames(str(videos["2s"]), fps=2, start=0.5, end=1.5)[0]) == 2
    assert len(read_frames(str(videos["2s"]), fps=0.1)[0]) == 1  # at least one frame
    assert not np.array_equal(frames[0], frames[-1])


def test_cli_vit_with_frames_and_audio_only_clip_reported(videos, tmp_path):
    rows = [{"dialogue_id": "d0", "utterance_id": f"u{i}", "speaker": "A", "text": "hi", "split": "train",
             "video": str(videos[k]), "emotion": "joy"} for i, k in enumerate(["2s", "1s", "wav"])]
    manifest = write_csv_manifest(tmp_path / "m.csv", rows)
    store = tmp_path / "v.zarr"
    out = extract_cli("--dataset", "manifest", "--root", manifest, "--encoder", f"hf-vision:{tiny_model('vit')}",
                      "--store", store, "--feature-set", "vit", "--keep-frames", "--decode-workers", "0", code=1)
    assert "dim 16, 1 utterance(s) skipped" in out and "no video stream" in out
    r = StoreReader(store)
    frames, offsets = r.load_frames("m", "vit", "d0")
    assert np.diff(offsets).tolist() == [4, 2, 0]  # 2 s and 1 s at 2 fps; the wav has no video
    pooled = r.load_pooled("m", "vit")
    assert pooled.valid.tolist() == [True, True, False]
    np.testing.assert_allclose(frames[:4].astype(np.float32).mean(0), pooled.pooled[0].astype(np.float32), atol=2e-3)
    assert r.info("m", "vit")["fingerprint"]["fps"] == 2.0


def test_clip_vision_uses_projected_image_embeddings_and_batching_is_invariant(videos):
    assert family_of(str(tiny_model("clip-vision"))) == "vision"
    enc = build_encoder(EncoderRequest(f"hf:{tiny_model('clip-vision')}", fps=4))
    assert enc.dim == 12  # projection_dim, not hidden_size
    prep = enc.preparer()
    items = [prep(Utterance(k, "d", "A", "x", "train", media=str(videos[k]))) for k in ("2s", "1s")]
    assert [it.length for it in items] == [8, 4]
    together = enc.encode_batch(items)
    for item, vec in zip(items, together, strict=True):
        np.testing.assert_allclose(enc.encode_batch([item])[0].pooled, vec.pooled, atol=1e-5)
    cls = build_encoder(EncoderRequest(f"hf-vision:{tiny_model('clip-vision')}", pooling="cls", layers="all"))
    assert cls.dim == 3 * 16 and cls.fingerprint() != enc.fingerprint()
    assert cls.encode_batch(items[:1])[0].pooled.shape == (48,)


def test_workers_ship_uint8_frames_that_normalise_like_the_processor(videos):
    from merc.extract.encoders.hf_vision import pixels

    enc = build_encoder(EncoderRequest(f"hf-vision:{tiny_model('clip-vision')}"))
    item = enc.preparer()(Utterance("a", "d", "A", "x", "train", media=str(videos["2s"])))
    assert item.value.dtype == np.uint8 and item.value.shape == (4, 3, 32, 32)
    frames, _ = read_frames(str(videos["2s"]), fps=2)
    expected = enc.image_processor(images=frames, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(pixels(enc.image_processor, item.value), expected, atol=1e-6)
