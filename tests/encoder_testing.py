"""Helpers for the encoder-family tests: tiny models built once per test session, the CLI in-process, media.

Tiny models come from merc.tools.tiny_models (configs -> save_pretrained -> a folder that the real
`from_pretrained` code loads with HF_HUB_OFFLINE=1). They are built lazily, once per session, in a
temporary folder removed at exit. The CLI runs in-process (typer's CliRunner) so the ~3 s torch +
transformers import is paid once, not per command.
"""

from __future__ import annotations

import atexit
import csv
import functools
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from merc.tools import tiny_models

_ROOT = Path(tempfile.mkdtemp(prefix="merc-tiny-models-"))
atexit.register(shutil.rmtree, _ROOT, True)


@functools.cache
def tiny_model(kind: str) -> Path:
    """Folder of the tiny model `kind` (a tiny_models.BUILDERS key), built on first use."""
    return tiny_models.build(kind, _ROOT / kind)


def extract_cli(*args, code: int | None = 0) -> str:
    """`merc-extract ARGS` in this process; asserts the exit code and returns the output."""
    from merc.extract.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    out = result.output + (f"\n{result.exception!r}" if result.exception and not isinstance(result.exception, SystemExit) else "")
    if code is not None:
        assert result.exit_code == code, out
    return out


def write_csv_manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def write_video(path: Path, seconds: float, fps: int = 10, size: int = 32, seed: int = 0,
                with_audio: bool = False) -> Path:
    """An mp4 (H.264, yuv420p) whose colour drifts over time, optionally with a mono AAC tone."""
    import av

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, size=3)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        audio = out.add_stream("aac", rate=16000, layout="mono") if with_audio else None
        for i in range(int(seconds * fps)):
            img = np.zeros((size, size, 3), np.uint8)
            img[...] = (base + 5 * i) % 255
            img[: size // 2, : size // 2] = 255 - img[: size // 2, : size // 2]
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        if audio is not None:
            t = np.arange(int(seconds * 16000)) / 16000
            wave = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[None, :]
            pts = 0
            for i in range(0, wave.shape[1], 1024):
                chunk = np.ascontiguousarray(wave[:, i: i + 1024])
                af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = 16000, pts, Fraction(1, 16000)
                pts += chunk.shape[1]
                for packet in audio.encode(af):
                    out.mux(packet)
            for packet in audio.encode(None):
                out.mux(packet)
    return path
