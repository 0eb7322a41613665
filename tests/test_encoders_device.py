"""Shared device helper: OOM halving (with an injected OOM on CPU), dtypes, copies; CUDA smoke test per family."""

import numpy as np
import pytest
import torch
from encoder_testing import tiny_model, write_video
from media_fixtures import write_wav

from merc.data_manifests.manifest import Dialogue, Utterance
from merc.extract.encoders import EncoderRequest, build_encoder
from merc.extract.encoders._device import OomGuard, check_device, is_oom, resolve_dtype, to_device
from merc.extract.encoders.base import EncoderError, Prepared


def _oom() -> Exception:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_oom_halves_the_batch_retries_and_shrinks_later_budgets():
    guard = OomGuard("cpu")
    calls = []

    def fn(items):
        calls.append(len(items))
        if len(items) > 2:
            raise _oom()
        return [x * 10 for x in items]

    assert guard.run(fn, list(range(7))) == [x * 10 for x in range(7)]
    assert calls == [7, 3, 1, 2, 4, 2, 2]
    assert guard.ooms == 3 and guard.budget(1000) == 125


def test_oom_on_one_item_and_other_errors():
    guard = OomGuard("cpu")
    with pytest.raises(EncoderError, match=r"out of memory on cpu encoding one utterance alone \(u7, length 9\)"):
        guard.run(lambda items: (_ for _ in ()).throw(RuntimeError("CUDA error: out of memory")),
                  [Prepared("u7", None, 9)])
    with pytest.raises(ValueError, match="not memory"):
        guard.run(lambda items: (_ for _ in ()).throw(ValueError("not memory")), [1, 2])
    assert is_oom(RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate")) and not is_oom(KeyError())


def test_encoder_survives_an_injected_oom_with_identical_vectors(monkeypatch):
    enc = build_encoder(EncoderRequest(f"llm:{tiny_model('llama')}"))
    d = Dialogue("d", "train", [Utterance(f"u{i}", "d", "A", t, "train")
                                for i, t in enumerate(["fine.", "stop that right now", "this is wonderful news"])])
    items = [enc.preparer()(u) for u in d.utterances]
    expected = enc.encode_batch(items)
    forward = enc.model.forward
    sizes = []

    def flaky(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        if kwargs["input_ids"].shape[0] > 1:
            raise _oom()
        return forward(*args, **kwargs)

    monkeypatch.setattr(enc.model, "forward", flaky)
    got = enc.encode_batch(items)
    assert sizes == [3, 1, 2, 1, 1]
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_allclose(a.pooled, b.pooled, atol=1e-5)
    assert enc.guard.scale == 0.25 and enc.batch_budget() == 2048 * 4 // 4  # later batches are cut smaller


def test_dtypes_and_host_copies():
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("fp16", "cuda") == torch.float16
    with pytest.raises(EncoderError, match="unknown dtype 'fp8'"):
        resolve_dtype("fp8", "cpu")
    batch = to_device({"x": torch.ones(2, 3), "ids": torch.ones(2, dtype=torch.long), "n": 3}, "cpu", torch.bfloat16)
    assert batch["x"].dtype == torch.bfloat16 and batch["ids"].dtype == torch.long and batch["n"] == 3
    if not torch.cuda.is_available():
        with pytest.raises(EncoderError, match="--device cuda asked for, but torch sees no CUDA device"):
            check_device("cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind, prefix", [("roberta", "hf:"), ("data2vec-audio", "hf:"), ("wav2vec2-group", "hf:"),
                                          ("whisper", "hf:"), ("llama", "llm:"), ("qwen2-audio", "sllm:"),
                                          ("clip-vision", "hf-vision:")])
def test_cuda_fp16_matches_cpu(kind, prefix, tmp_path):
    """--device cuda: half-precision weights, pinned non-blocking copies; vectors close to fp32 on CPU."""
    media = str(write_video(tmp_path / "v.mp4", 1.0) if prefix == "hf-vision:" else write_wav(tmp_path / "a.wav", 1.3))
    media2 = str(write_video(tmp_path / "w.mp4", 2.0) if prefix == "hf-vision:" else write_wav(tmp_path / "b.wav", 2.1))
    utts = [Utterance("u0", "d", "A", "this is wonderful news", "train", media=media),
            Utterance("u1", "d", "B", "stop that right now", "train", media=media2)]
    name = f"{prefix}{tiny_model(kind)}"
    cpu = build_encoder(EncoderRequest(name))
    gpu = build_encoder(EncoderRequest(name, device="cuda"))
    assert gpu.fingerprint()["dtype"] in ("float16", "bfloat16")
    items = [cpu.preparer()(u) for u in utts]
    for a, b in zip(cpu.encode_batch(items), gpu.encode_batch(items), strict=True):
        assert np.isfinite(b.pooled).all()
        np.testing.assert_allclose(a.pooled, b.pooled, atol=0.1, rtol=0.05)
