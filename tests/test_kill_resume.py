"""SIGKILL an extraction at three random moments, rerun each time: the final store equals an uninterrupted run.

Bitwise for openSMILE; within 1e-3 for the neural text encoder (a resumed run forms other batches).
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from media_fixtures import write_manifest_corpus

from merc.extract.store import StoreReader

BIN = Path(sys.executable).parent / "merc-extract"
ENV = {**os.environ, "COLUMNS": "200"}


def _cmd(corpus: Path, store: Path, encoder: str) -> list[str]:
    return [str(BIN), "--dataset", "manifest", "--root", str(corpus), "--encoder", encoder, "--store", str(store),
            "--window", "8"]


def _committed(store: Path, encoder: str) -> int:
    fs = store / "manifest" / encoder
    n = 0
    for meta in fs.glob("*/zarr.json"):
        try:
            n += json.loads(meta.read_text()).get("attributes", {}).get("complete", False) is True
        except (json.JSONDecodeError, OSError):
            pass  # being written right now
    return n


def _kill_when(cmd: list[str], store: Path, encoder: str, threshold: int, jitter: float) -> bool:
    """Start an extraction, SIGKILL its whole process group once `threshold` dialogues are committed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=ENV)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if _committed(store, encoder) >= threshold:
            time.sleep(jitter)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.01)
    proc.wait()
    return False


@pytest.mark.parametrize("encoder", ["egemaps", "minilm"])
def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path, encoder):
    corpus = write_manifest_corpus(tmp_path / "corpus", n_dialogues=14, n_utts=4, seconds=0.5)
    reference = tmp_path / "ref.zarr"
    subprocess.run(_cmd(corpus, reference, encoder), check=True, capture_output=True)

    store = tmp_path / "killed.zarr"
    rng = random.Random(7)
    kills = 0
    for threshold in sorted(rng.sample(range(1, 13), 3)):
        kills += _kill_when(_cmd(corpus, store, encoder), store, encoder, threshold, rng.uniform(0, 0.05))
    assert kills >= 2, "the extraction finished before it could be killed; the corpus is too small"
    assert _committed(store, encoder) < 14
    final = subprocess.run(_cmd(corpus, store, encoder), capture_output=True, text=True, env=ENV)
    assert final.returncode == 0, final.stdout + final.stderr
    assert "were already done" in final.stdout

    verify = subprocess.run([str(BIN), "verify", "--store", str(store)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout
    got = StoreReader(store).load_pooled("manifest", encoder)
    want = StoreReader(reference).load_pooled("manifest", encoder)
    assert got.dialogue_ids == want.dialogue_ids
    np.testing.assert_array_equal(got.valid, want.valid)
    if encoder == "egemaps":
        assert got.pooled.tobytes() == want.pooled.tobytes()
    else:
        np.testing.assert_allclose(got.pooled.astype(np.float32), want.pooled.astype(np.float32), atol=1e-3)


def test_ctrl_c_keeps_committed_dialogues_and_says_how_to_resume(tmp_path):
    """SIGINT to the whole process group, as a terminal sends it: a message, exit 130, no traceback."""
    corpus = write_manifest_corpus(tmp_path / "corpus", n_dialogues=14, n_utts=4, seconds=0.5)
    store = tmp_path / "s.zarr"
    proc = subprocess.Popen(_cmd(corpus, store, "egemaps"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=ENV)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and _committed(store, "egemaps") < 2:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the extraction finished before the interrupt arrived")
    assert proc.returncode == 130, out + err
    assert "interrupted" in out and "are committed and kept; rerun the same command to resume" in out
    assert "Traceback" not in out + err
    kept = _committed(store, "egemaps")
    assert kept >= 2
    final = subprocess.run(_cmd(corpus, store, "egemaps"), capture_output=True, text=True, env=ENV)
    assert final.returncode == 0 and f"{kept} were already done" in final.stdout
