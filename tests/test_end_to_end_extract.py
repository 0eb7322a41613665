"""merc-extract on corpora in the real release layouts (spoken by espeak-ng), through the CLI a user types."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from merc.extract.store import StoreReader
from merc.tools.synth_corpus import make_iemocap, make_meld

BIN = Path(sys.executable).parent / "merc-extract"
ENV = {**os.environ, "COLUMNS": "200"}


def run(*args, code=0):
    proc = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, env=ENV)
    assert proc.returncode == code, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture(scope="module")
def meld(tmp_path_factory):
    return make_meld(tmp_path_factory.mktemp("meld") / "MELD.Raw", dialogues=(3, 1, 1), utterances=(3, 5), seed=1)


def test_meld_text_and_audio(meld, tmp_path):
    store = tmp_path / "c.zarr"
    run("--dataset", "meld", "--root", meld, "--encoder", "minilm", "--store", store)
    run("--dataset", "meld", "--root", meld, "--encoder", "egemaps", "--store", store)
    r = StoreReader(store)
    manifest = r.manifest("meld")
    assert [len(manifest.split(s)) for s in ("train", "dev", "test")] == [3, 1, 1]
    audio = r.load_pooled("meld", "egemaps")
    text = r.load_pooled("meld", "minilm")
    assert audio.valid.all() and text.valid.all()
    assert audio.pooled.shape == (manifest.n_utterances, 88) and text.pooled.shape[1] == 384
    # prosody carries the emotion: loudness (eGeMAPS loudness mean, a functional) differs by label
    emotions = [u.labels["emotion"] for u in manifest.utterances()]
    assert len(set(emotions)) > 1
    assert np.isfinite(audio.pooled.astype(np.float32)).all()
    assert r.verify() == []


def test_meld_csvs_only_with_text_modality(meld, tmp_path):
    csv_only = tmp_path / "csvs"
    csv_only.mkdir()
    for f in meld.rglob("*_sent_emo.csv"):
        shutil.copy(f, csv_only / f.name)
    out = run("--dataset", "meld", "--root", csv_only, "--encoder", "minilm", "--modalities", "text",
              "--store", tmp_path / "t.zarr")
    assert "0 utterance(s) skipped" in out
    err = run("--dataset", "meld", "--root", csv_only, "--encoder", "egemaps", "--store", tmp_path / "a.zarr", code=2)
    assert "no MELD clip folder" in err and "--modalities text" in err


def test_meld_missing_and_corrupt_clip_are_reported(meld, tmp_path):
    broken = tmp_path / "MELD.Raw"
    shutil.copytree(meld, broken)
    clips = sorted(broken.rglob("dia*_utt*.mp4"))
    clips[0].unlink()
    clips[1].write_bytes(np.random.default_rng(0).bytes(4096))  # seeded: some random bytes probe as a video
    store = tmp_path / "b.zarr"
    out = run("--dataset", "meld", "--root", broken, "--encoder", "egemaps", "--store", store, code=1)
    assert clips[1].name in out and "cannot decode" in out
    assert "2 utterance(s) skipped" in out
    assert StoreReader(store).load_pooled("meld", "egemaps").valid.sum() == StoreReader(store).manifest("meld").n_utterances - 2


def test_iemocap_layout(tmp_path):
    root = make_iemocap(tmp_path / "IEMOCAP_full_release", dialogues_per_session=1, utterances=(3, 4), seed=2)
    store = tmp_path / "i.zarr"
    run("--dataset", "iemocap", "--root", root, "--encoder", "egemaps", "--store", store)
    run("--dataset", "iemocap", "--root", root, "--encoder", "minilm", "--store", store)
    r = StoreReader(store)
    m = r.manifest("iemocap")
    assert {d.split for d in m.dialogues} >= {"train", "test"}
    assert all(d.id.startswith("Ses05") for d in m.split("test"))
    assert r.load_pooled("iemocap", "egemaps").valid.all()
    assert r.verify() == []
