"""Decode any audio/video file to float32 mono at a target rate, cropped and capped.

PyAV (bundled FFmpeg) reads every container the corpora use (MELD mp4 with 6-channel 48 kHz AAC,
IEMOCAP 16 kHz wav, mkv, mp3, flac); soundfile is a faster path for plain wav/flac; soxr resamples.
torchaudio is deliberately not used (its PyPI wheel needs CUDA libraries; environment.md).
Every failure is a MercError naming the file and the fix, so extraction can record it and go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from merc.data_manifests.errors import MercError

CHANNEL_POLICIES = ("downmix", "center", "first")
CORRUPT_FIX = "the file is corrupt or not audio/video; re-copy it from the corpus"


class MediaError(MercError):
    """A media file that cannot give usable audio for an utterance."""


@dataclass(frozen=True)
class AudioPolicy:
    """How raw media becomes model input. Part of every audio feature fingerprint."""

    sample_rate: int = 16000
    channels: str = "downmix"  # downmix | center (5.1 centre channel, index 2) | first
    max_seconds: float = 30.0  # longer clips are cut to this and the cut is reported
    min_seconds: float = 0.05  # shorter is an error: nothing to encode

    def to_dict(self) -> dict:
        return {"sample_rate": self.sample_rate, "channels": self.channels, "max_seconds": self.max_seconds,
                "min_seconds": self.min_seconds}


@dataclass
class Audio:
    samples: np.ndarray  # [n] float32 mono at policy.sample_rate
    source_rate: int
    source_channels: int
    capped_from: float | None = None  # original duration in seconds when the cap cut it


def load_audio(path: str | Path | None, policy: AudioPolicy, start: float | None = None,
               end: float | None = None) -> Audio:
    """Decode, pick/mix channels, crop to [start, end), cap duration and resample."""
    if not path:
        raise MediaError("the utterance has no media file", fix="add the clip, or extract text features only")
    path = Path(path)
    if not path.exists():
        raise MediaError("media file not found", file=str(path), fix="restore the file or fix the manifest path")
    if path.stat().st_size == 0:
        raise MediaError("media file is empty (0 bytes)", file=str(path), fix="re-copy the clip from the corpus")
    try:
        if path.suffix.lower() in {".wav", ".flac", ".ogg"}:
            data, rate = _read_soundfile(path)
        else:
            data, rate = _read_pyav(path)
    except MediaError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a per-utterance failure
        raise MediaError(f"cannot decode media ({type(exc).__name__}: {exc})", file=str(path),
                         fix=CORRUPT_FIX) from None
    channels = data.shape[1]
    mono = _to_mono(data, policy.channels)
    if start is not None or end is not None:
        a = int(round((start or 0.0) * rate))
        b = int(round(end * rate)) if end is not None else len(mono)
        mono = mono[max(0, a): max(0, b)]
    capped_from = None
    if len(mono) > policy.max_seconds * rate:
        capped_from = len(mono) / rate
        mono = mono[: int(policy.max_seconds * rate)]
    if len(mono) < policy.min_seconds * rate:
        raise MediaError(f"no usable audio ({len(mono) / rate:.3f} s)", file=str(path),
                         fix="the clip is empty or the start/end span is wrong; check the manifest times")
    if rate != policy.sample_rate:
        import soxr

        mono = soxr.resample(mono, rate, policy.sample_rate, quality="HQ")
    return Audio(np.ascontiguousarray(mono, dtype=np.float32), rate, channels, capped_from)


def _to_mono(data: np.ndarray, policy: str) -> np.ndarray:
    if data.shape[1] == 1:
        return data[:, 0]
    if policy == "downmix":
        return data.mean(axis=1)
    if policy == "center":
        return data[:, 2] if data.shape[1] >= 6 else data.mean(axis=1)
    if policy == "first":
        return data[:, 0]
    raise ValueError(f"unknown channel policy {policy!r}; use one of {CHANNEL_POLICIES}")


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return data, int(rate)


def _read_pyav(path: Path) -> tuple[np.ndarray, int]:
    import av

    with av.open(str(path)) as container:
        streams = container.streams.audio
        if not streams and not container.streams.video:  # garbage can probe as e.g. an LRC subtitle file
            raise MediaError(f"cannot decode media (FFmpeg finds no audio or video in it, only format "
                             f"{container.format.name!r})", file=str(path),
                             fix=CORRUPT_FIX)
        if not streams:
            raise MediaError("the file has no audio stream", file=str(path),
                             fix="use a clip with sound, or extract text/visual features only")
        stream = streams[0]
        chunks: list[np.ndarray] = []
        for frame in container.decode(stream):
            arr = frame.to_ndarray()  # planar: [channels, n]; packed: [1, n * channels]
            if frame.format.is_planar:
                chunks.append(arr.T)
            else:
                chunks.append(arr.reshape(-1, len(frame.layout.channels)))
        rate = stream.rate or stream.codec_context.sample_rate
    if not chunks:
        raise MediaError("the audio stream holds no samples", file=str(path), fix="re-copy the clip from the corpus")
    data = np.concatenate(chunks).astype(np.float32)
    if np.issubdtype(chunks[0].dtype, np.integer):
        data /= float(np.iinfo(chunks[0].dtype).max)
    return data, int(rate)
