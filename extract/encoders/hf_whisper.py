"""Whisper encoders (tiny ... large-v3): 30 s windows, pooled over the frames that hold real audio.

Whisper's encoder only accepts exactly 30 s of log-mel (3000 frames -> 1500 encoder frames, 20 ms
each), so a short clip is mostly padding. Averaging all 1500 frames would mostly average silence, and
other tools crop to len(wav)//320 but silently cut clips longer than 30 s. Here:
- workers cut the clip into consecutive 30 s chunks and compute each chunk's log-mel as the feature
  extractor does for the chunk padded to 30 s (as the model was trained), but with the STFT run only
  over the frames that touch real audio: the padded frames' values follow from those (`log_mel_real_frames`);
- per chunk only the first ceil(mel_frames / 2) encoder frames are kept (mel_frames = samples // 160:
  the frames computed from real audio, e.g. 50 for a 1 s clip), and the chunks' frames are concatenated,
  so a 40 s clip gives 1500 + 500 = 2000 frames - nothing is cut (raise --max-seconds above 30 for that);
- the pooled vector is the mean of those frames. Chunks of many clips share one batch: every chunk
  is a full 30 s input, so batching cannot change any clip's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from merc.data_manifests.manifest import Utterance
from merc.extract.media import AudioPolicy, load_audio

from . import ENCODER_FAMILIES
from ._device import OomGuard, check_device, resolve_dtype, to_device
from ._layers import (
    check_layer_spec,
    count_hidden_states,
    layer_multiplier,
    needs_hidden_states,
    select_layers,
)
from .base import FORMAT_VERSION, Encoded, Encoder, EncoderError, Prepared, Preparer
from .hf_audio import audio_notes
from .hf_text import load_pretrained, weights_hash

CHUNK_SECONDS = 30
HOP = 160  # samples per log-mel frame at 16 kHz
POOLINGS = ("mean",)
MIN_STFT_FRAMES = 64  # fewer frames put the mel matmul on another BLAS path, 1 ulp off the extractor


def real_frames(n_samples: int, max_frames: int) -> int:
    """Encoder frames of one chunk computed from real audio: ceil((n_samples // 160) / 2), at least 1."""
    mel_frames = n_samples // HOP
    return max(1, min(max_frames, -(-mel_frames // 2)))


@dataclass
class WhisperOptions:
    layers: str = "last"
    pooling: str = "mean"
    batch_chunks: int = 0  # 30 s chunks per batch; 0 = 4 on CPU, 32 on CUDA
    device: str = "cpu"
    dtype: str = "auto"
    audio: AudioPolicy = field(default_factory=AudioPolicy)


def trim_mel(mel_fm: np.ndarray) -> tuple[np.ndarray, float]:
    """A padded chunk's log-mel without its constant tail: (mel[:, :keep], fill value of the tail).

    Zero padding has no energy, so after Whisper's clamp to (max - 8) every padded frame holds the
    chunk's minimum; only the frames before the last non-minimum one are kept. `untrim_mel` restores
    the exact [80, 3000] array in the main process, so workers ship ~15x fewer bytes for short clips.
    """
    fill = float(mel_fm.min())
    varying = np.nonzero((mel_fm != fill).any(axis=0))[0]
    keep = int(varying[-1]) + 1 if len(varying) else 1
    return np.ascontiguousarray(mel_fm[:, :keep]), fill


def untrim_mel(trimmed_fm: np.ndarray, fill: float, n_frames: int) -> np.ndarray:
    mel_fm = np.full((trimmed_fm.shape[0], n_frames), fill, dtype=np.float32)
    mel_fm[:, : trimmed_fm.shape[1]] = trimmed_fm
    return mel_fm


def can_trim_stft(feature_extractor) -> bool:
    """Whether `log_mel_real_frames` reproduces this extractor: Whisper's recipe without dither."""
    fe = feature_extractor
    return (all(hasattr(fe, a) for a in ("n_fft", "hop_length", "n_samples", "mel_filters"))
            and not getattr(fe, "dither", 0.0) and type(fe).__name__ == "WhisperFeatureExtractor")


def window_mel_frames(feature_extractor) -> int:
    """Log-mel frames of the extractor's padded window (3,000 for 30 s; the STFT's last frame is dropped)."""
    return int(feature_extractor.n_samples) // int(feature_extractor.hop_length)


def log_mel_real_frames(samples: np.ndarray, feature_extractor) -> tuple[np.ndarray, float]:
    """Whisper's log-mel of one chunk (<= 30 s) zero-padded to 30 s, as `trim_mel` would give it, computed
    only over the STFT frames whose window touches real audio.

    The feature extractor runs the STFT over all 480,000 samples of the padded window, so a 3 s clip
    pays for 3,000 frames of which 2,700 see only zeros. Every such frame is log10(1e-10) = -10 before
    the clamp to (max - 8), which the real frames decide. So the STFT here runs over the clip plus
    n_fft/2 + 1 zeros (enough that the STFT's reflect padding at the end mirrors zeros too, so each
    computed frame sees exactly the samples it sees in the padded window), and the tail's fill value
    follows from the maximum. Same torch.stft, window and mel filters as the extractor's torch path;
    `tests/test_encoders_whisper.py` checks the result against the extractor itself.
    """
    import torch

    fe = feature_extractor
    n_fft, hop, window_samples = int(fe.n_fft), int(fe.hop_length), int(fe.n_samples)
    n_frames = window_mel_frames(fe)
    n = min(len(samples), window_samples)
    length = min(window_samples, max(n + n_fft // 2 + 1, MIN_STFT_FRAMES * hop))
    wave = np.zeros(length, np.float32)
    wave[:n] = samples[:n]
    with torch.inference_mode():
        stft = torch.stft(torch.from_numpy(wave), n_fft, hop, window=torch.hann_window(n_fft), return_complex=True)
        keep = min(stft.shape[-1], n_frames)
        magnitudes = (stft[..., :keep].abs() ** 2).contiguous()
        mel_spec = torch.from_numpy(np.asarray(fe.mel_filters, np.float32)).T @ magnitudes
        log_spec = torch.clamp(mel_spec, min=1e-10).log10()
        floor = log_spec.max() - 8.0  # the padded frames' -10 never exceeds a computed frame's value
        log_spec = (torch.maximum(log_spec, floor) + 4.0) / 4.0
        fill = (torch.maximum(torch.tensor(-10.0), floor) + 4.0) / 4.0  # in float32, as the extractor does
    return np.ascontiguousarray(log_spec.numpy(), dtype=np.float32), float(fill)


class WhisperPreparer(Preparer):
    """Worker side: decode, cut into 30 s chunks, log-mel of every chunk (padded to 30 s, sent trimmed)."""

    def __init__(self, policy: AudioPolicy, feature_extractor):
        self.policy = policy
        self.feature_extractor = feature_extractor

    def __call__(self, utt: Utterance) -> Prepared:
        audio = load_audio(utt.media, self.policy, utt.start, utt.end)
        step = CHUNK_SECONDS * self.policy.sample_rate
        chunks = [audio.samples[i: i + step] for i in range(0, len(audio.samples), step)]
        fe = self.feature_extractor
        if can_trim_stft(fe):
            trimmed = [log_mel_real_frames(c, fe) for c in chunks]
            n_frames = window_mel_frames(fe)
        else:  # an extractor of another recipe: the padded window in full, then trimmed
            mels_cfm = fe(chunks, sampling_rate=self.policy.sample_rate, return_tensors="np",
                          padding="max_length")["input_features"].astype(np.float32)
            trimmed, n_frames = [trim_mel(m) for m in mels_cfm], mels_cfm.shape[-1]
        sizes = np.array([len(c) for c in chunks], dtype=np.int64)
        # length counts 30 s chunks in samples: every chunk costs a full 30 s forward pass
        return Prepared(utt.id, (trimmed, sizes, n_frames), len(chunks) * step, audio_notes(audio, self.policy))


class WhisperEncoder(Encoder):
    modality = "audio"

    def __init__(self, name: str, model_id: str, options: WhisperOptions | None = None):
        super().__init__(name)
        self.model_id = str(model_id)
        self.opts = options or WhisperOptions()
        if self.opts.pooling not in POOLINGS:
            raise EncoderError(f"unknown pooling {self.opts.pooling!r} for a Whisper encoder",
                               fix=f"use one of {', '.join(POOLINGS)}")
        check_device(self.opts.device)
        self.dtype = resolve_dtype(self.opts.dtype, self.opts.device)
        self.feature_extractor = load_pretrained(self.model_id, "AutoFeatureExtractor")
        model = load_pretrained(self.model_id, "AutoModel", dtype=self.dtype)
        if not hasattr(model, "get_encoder"):
            raise EncoderError(f"{self.model_id} loads as {type(model).__name__}, which has no Whisper encoder",
                               file=self.model_id, fix="use a Whisper checkpoint (openai/whisper-*)")
        self.model = model.get_encoder().eval().to(self.opts.device)  # the decoder is dropped with `model`
        del model
        self.max_frames = int(self.model.config.max_source_positions)
        self.n_hidden_states = count_hidden_states(self.model.config)
        check_layer_spec(self.opts.layers, self.n_hidden_states)
        self.guard = OomGuard(self.opts.device)

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model) * layer_multiplier(self.opts.layers, self.n_hidden_states)

    def preparer(self) -> Preparer:
        return WhisperPreparer(self.opts.audio, self.feature_extractor)

    def batch_budget(self) -> int:
        chunks = self.opts.batch_chunks or (32 if self.opts.device.startswith("cuda") else 4)
        return self.guard.budget(chunks * CHUNK_SECONDS * self.opts.audio.sample_rate)

    def encode_batch(self, items: list[Prepared]) -> list[Encoded]:
        return self.guard.run(self._forward, items)

    def _forward(self, items: list[Prepared]) -> list[Encoded]:
        import torch

        mels_cfm = torch.from_numpy(np.stack([untrim_mel(mel, fill, it.value[2])
                                              for it in items for mel, fill in it.value[0]]))
        inputs = to_device({"input_features": mels_cfm}, self.opts.device, self.dtype)
        with torch.inference_mode():
            out = self.model(**inputs, output_hidden_states=needs_hidden_states(self.opts.layers))
            frames_cfd = out.last_hidden_state if self.opts.layers == "last" else select_layers(
                out.hidden_states, self.opts.layers)
            frames_cfd = frames_cfd.float().cpu().numpy()
        results: list[Encoded] = []
        c = 0
        for it in items:
            sizes = it.value[1]
            kept = [frames_cfd[c + j, : real_frames(int(n), self.max_frames)] for j, n in enumerate(sizes)]
            c += len(sizes)
            frames_td = np.concatenate(kept)
            results.append(Encoded(frames_td.mean(0), frames_td if self.keep_frames else None))
        return results

    def fingerprint(self) -> dict:
        o = self.opts
        return {"family": "hf-whisper-encoder", "model": self.model_id.rstrip("/").rsplit("/", 1)[-1],
                "weights": weights_hash(self.model_id), "layers": o.layers, "pooling": o.pooling,
                "frames": "real-audio frames of 30 s chunks, concatenated", "audio": o.audio.to_dict(),
                "dtype": str(self.dtype).replace("torch.", ""), "merc_format": FORMAT_VERSION}

    def info(self) -> dict:
        return {**super().info(), "frame_rate_hz": 50, "model_id": self.model_id}


@ENCODER_FAMILIES.register("whisper", "Whisper encoders: the frames that cover real audio, > 30 s in chunks")
def from_request(req, model_id: str) -> WhisperEncoder:
    opts = WhisperOptions(device=req.device, dtype=req.dtype, audio=req.audio)
    req.apply(opts, "batch_chunks")  # --batch-budget: 30 s chunks per batch
    return WhisperEncoder(req.name, model_id, opts)
