"""Small real media files for extraction tests: tones in wav, and 5.1 48 kHz AAC mp4 like MELD's clips."""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf


def tone(seconds: float, freq: float = 220.0, rate: int = 16000, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    wave = 0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    return (wave + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def write_wav(path: Path, seconds: float, freq: float = 220.0, rate: int = 16000, seed: int = 0) -> Path:
    sf.write(path, tone(seconds, freq, rate, seed), rate)
    return path


def write_mp4_51(path: Path, seconds: float, freq: float = 220.0, rate: int = 48000) -> Path:
    """A MELD-like clip: 6-channel (5.1) AAC at 48 kHz, speech-like tone in the centre channel."""
    import av

    mono = tone(seconds, freq, rate)
    planes = np.stack([0.1 * mono, 0.1 * mono, mono, 0.05 * mono, 0.1 * mono, 0.1 * mono]).astype(np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=rate, layout="5.1")
        pts = 0
        for i in range(0, planes.shape[1], 1024):
            chunk = np.ascontiguousarray(planes[:, i: i + 1024])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="5.1")
            frame.sample_rate = rate
            frame.pts = pts
            frame.time_base = Fraction(1, rate)
            pts += chunk.shape[1]
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def write_manifest_corpus(root: Path, n_dialogues: int = 4, n_utts: int = 4, seconds: float = 0.6,
                          seed: int = 0) -> Path:
    """A generic-manifest corpus (CSV + wavs) whose audio pitch follows the emotion label."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    emotions = ["neutral", "joy", "anger", "sadness"]
    words = {"neutral": "the weather is fine", "joy": "this is wonderful news",
             "anger": "stop that right now", "sadness": "i miss them so much"}
    rows = []
    for d in range(n_dialogues):
        split = "train" if d < n_dialogues - 2 else ("dev" if d == n_dialogues - 2 else "test")
        for u in range(n_utts):
            emo = emotions[int(rng.integers(len(emotions)))]
            wav = write_wav(root / f"d{d}_u{u}.wav", seconds + 0.1 * u, 150 + 60 * emotions.index(emo), seed=d * 100 + u)
            rows.append({"dialogue_id": f"d{d}", "utterance_id": f"d{d}_u{u}", "speaker": "AB"[u % 2],
                         "text": f"{words[emo]} number {u}", "split": split, "audio": wav.name, "emotion": emo})
    path = root / "manifest.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path
