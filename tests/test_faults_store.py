"""Fault suite, stage 1 and the store: each test breaks one thing a user broke, through the real commands,
and checks the exit code, the message (dialogue or file named, a fix that exists) and that nothing else in
the store changed. Run-directory faults are in test_faults_runs.py, corpus faults in test_faults_manifest.py.
"""

from __future__ import annotations

import csv
import errno
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from encoder_testing import extract_cli
from media_fixtures import write_manifest_corpus, write_wav
from typer.testing import CliRunner

from merc.extract.store import StoreReader, dialogue_key

BIN = Path(sys.executable).parent


@pytest.fixture
def corpus(tmp_path):
    return write_manifest_corpus(tmp_path / "corpus", n_dialogues=5, n_utts=3, seconds=0.4)


def extract(corpus: Path, store: Path, encoder: str = "egemaps", *extra, code: int | None = 0) -> str:
    return extract_cli("--dataset", "manifest", "--root", corpus, "--encoder", encoder, "--store", store, *extra,
                       code=code)


def snapshot(store: Path) -> dict[str, bytes]:
    """Every file of the store but the feature sets' report attrs (what 'nothing else changed' compares)."""
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def chunk(store: Path, fs: str, dialogue: str, array: str = "pooled") -> Path:
    return store / "manifest" / fs / dialogue_key(dialogue) / array / "c" / "0" / "0"


def pooled(store: Path, fs: str = "egemaps") -> np.ndarray:
    return StoreReader(store).load_pooled("manifest", fs).pooled


def heads_train(store: Path, out: Path, features: str = "egemaps", code: int = 0) -> str:
    from merc.heads.cli import app

    res = CliRunner().invoke(app, ["train", "--head", "mlp", "--store", str(store), "--dataset", "manifest",
                                   "--features", features, "--epochs", "1", "--out", str(out)],
                             env={"COLUMNS": "200"})
    assert res.exit_code == code, res.output + repr(res.exception)
    return res.output


# -- 2. a missing or damaged chunk is never read as zeros ------------------------------------------------------
@pytest.mark.parametrize("damage", ["delete", "random-bytes"])
def test_a_damaged_dialogue_is_named_by_verify_and_re_extracted(corpus, tmp_path, damage):
    store = tmp_path / "s.zarr"
    extract(corpus, store)
    want = pooled(store)
    before = snapshot(store)
    target = chunk(store, "egemaps", "d2")
    if damage == "delete":
        target.unlink()
    else:
        target.write_bytes(np.random.default_rng(1).bytes(target.stat().st_size))
    res = extract_cli("verify", "--store", store, code=1)
    assert "manifest/egemaps/d2: dialogue 'd2' is damaged: pooled/c/0/0" in res
    assert "fix: rerun merc-extract --dataset manifest --root" in res and "--encoder egemaps" in res
    assert "1 problem(s)" in res
    out = extract(corpus, store)
    assert "dialogue 'd2' is damaged" in out and "re-extracting it" in out and "wrote 1 dialogues" in out
    np.testing.assert_array_equal(pooled(store), want)
    after = snapshot(store)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert all(k.startswith("manifest/egemaps/d2/") or k == "manifest/egemaps/zarr.json" for k in changed), changed
    assert "OK" in extract_cli("verify", "--store", store)


def test_a_deleted_packed_chunk_never_trains_on_zeros(corpus, tmp_path):
    store = tmp_path / "s.zarr"
    extract(corpus, store)
    want = pooled(store)
    (store / "manifest" / "egemaps" / "packed" / "pooled" / "c" / "0" / "0").unlink()
    np.testing.assert_array_equal(pooled(store), want)  # the per-dialogue arrays, checked, not fill values
    assert "packed: does not match" in extract_cli("verify", "--store", store, code=1)
    heads_train(store, tmp_path / "runs")  # trains on the real values
    extract(corpus, store)  # repacks
    assert "OK" in extract_cli("verify", "--store", store)


def test_heads_refuse_a_damaged_dialogue_with_its_name_and_the_fix(corpus, tmp_path):
    store = tmp_path / "s.zarr"
    extract(corpus, store)
    shutil.rmtree(store / "manifest" / "egemaps" / "packed")
    chunk(store, "egemaps", "d1").write_bytes(b"garbage")
    out = heads_train(store, tmp_path / "runs", code=2)
    assert "dialogue 'd1' is damaged: pooled/c/0/0 does not match its recorded checksum" in out
    assert "rerun merc-extract --dataset manifest" in out
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# -- 3. a label fix keeps every feature; an input change redoes exactly its dialogue --------------------------
def _edit_csv(path: Path, row: int, **values) -> None:
    rows = list(csv.DictReader(path.open()))
    rows[row].update(values)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_a_label_fix_keeps_every_feature_set_and_a_text_fix_redoes_one_dialogue(corpus, tmp_path):
    store = tmp_path / "s.zarr"
    extract(corpus, store)
    extract(corpus, store, "minilm")
    audio, text = pooled(store), pooled(store, "minilm")
    first = next(csv.DictReader(corpus.open()))
    _edit_csv(corpus, 0, emotion="anger" if first["emotion"] != "anger" else "joy")
    out = extract(corpus, store)
    assert "the manifest changed since the store was written (emotion of 1 utterance(s))" in out
    assert "nothing to do" in out and "--overwrite" not in out
    np.testing.assert_array_equal(pooled(store), audio)
    np.testing.assert_array_equal(pooled(store, "minilm"), text)  # the other feature set is current too
    assert StoreReader(store).manifest("manifest").dialogues[0].utterances[0].labels["emotion"] != first["emotion"]

    _edit_csv(corpus, 4, text="an utterance whose transcript was corrected")  # d1_u1
    out = extract(corpus, store, "minilm")
    assert "1 dialogue(s) were extracted from other inputs" in out and "re-extracting them: d1" in out
    assert "wrote 1 dialogues" in out
    new = pooled(store, "minilm")
    rows = StoreReader(store).load_pooled("manifest", "minilm").dialogue_offsets
    changed = np.flatnonzero((new != text).any(axis=1))
    assert rows[1] <= changed.min() and changed.max() < rows[2]  # only d1's rows changed
    np.testing.assert_array_equal(pooled(store), audio)  # the audio features read no text: still current
    assert "nothing to do" in extract(corpus, store)


def test_a_changed_clip_redoes_its_dialogue_and_a_moved_corpus_redoes_nothing(corpus, tmp_path):
    store = tmp_path / "s.zarr"
    extract(corpus, store)
    audio = pooled(store)
    write_wav(corpus.parent / "d3_u0.wav", 0.9, 400.0)
    out = extract(corpus, store)
    assert "re-extracting them: d3" in out and "wrote 1 dialogues" in out
    moved = tmp_path / "moved"
    shutil.copytree(corpus.parent, moved)
    shutil.rmtree(corpus.parent)
    out = extract(moved / corpus.name, store)
    assert "nothing to do" in out
    assert not np.array_equal(pooled(store), audio)


def test_overwrite_lists_what_it_deletes_and_touches_no_other_feature_set(corpus, tmp_path):
    store = tmp_path / "s.zarr"
    extract(corpus, store)
    extract(corpus, store, "minilm")
    text_files = {k: v for k, v in snapshot(store).items() if k.startswith("manifest/minilm/")}
    out = extract(corpus, store, "egemaps", "--max-seconds", "10", code=2)
    assert "already exists with another fingerprint" in out and "--overwrite" in out
    out = extract(corpus, store, "egemaps", "--max-seconds", "10", "--overwrite")
    assert "--overwrite: deleting manifest/egemaps (5 committed dialogues)" in out and "max_seconds" in out
    assert {k: v for k, v in snapshot(store).items() if k.startswith("manifest/minilm/")} == text_files


# -- 4. failures are retried ------------------------------------------------------------------------------------
def test_a_fixed_clip_is_retried_and_leaves_the_report(corpus, tmp_path):
    store = tmp_path / "s.zarr"
    clip = corpus.parent / "d1_u2.wav"
    good = clip.read_bytes()
    clip.write_bytes(good[:50])  # truncated: no audio left
    out = extract(corpus, store, code=1)
    assert "skipped d1_u2" in out and "(the next run retries it)" in out
    again = extract(corpus, store, code=1)
    assert "retrying 1 dialogue(s) with skipped utterances: d1" in again
    clip.write_bytes(good)
    fixed = extract(corpus, store)
    assert "0 utterance(s) skipped" in fixed and "wrote 1 dialogues" in fixed
    r = StoreReader(store)
    assert r.info("manifest", "egemaps")["report"]["failures"] == []
    assert r.load_pooled("manifest", "egemaps").valid.all()


# -- 9. I/O errors are messages, before any model loads ----------------------------------------------------------
def test_store_path_that_is_a_file_is_refused_before_the_model_loads(corpus, tmp_path, monkeypatch):
    import merc.extract.encoders as encoders

    monkeypatch.setattr(encoders, "build_encoder", lambda req: pytest.fail("the model was loaded"))
    path = tmp_path / "cache.zarr"
    path.write_text("not a store")
    out = extract(corpus, path, "minilm", code=2)
    assert "--store points at a file, not a Zarr store folder" in out and "Traceback" not in out
    for cmd in ("status", "verify"):
        out = extract_cli(cmd, "--store", path, code=2)
        assert "points at a file" in out


def test_a_read_only_store_is_a_message_not_a_traceback(corpus, tmp_path):
    store = tmp_path / "s.zarr"
    extract(corpus, store)
    shared = Path(tempfile.mkdtemp(prefix="merc-ro-"))
    try:
        shutil.copytree(store, shared / "s.zarr")
        shutil.copytree(corpus.parent, shared / "corpus")
        cmd = [str(BIN / "merc-extract"), "--dataset", "manifest", "--root", str(shared / "corpus" / corpus.name),
               "--encoder", "egemaps", "--store", str(shared / "s.zarr")]
        if os.geteuid() == 0:  # root writes anywhere: run as an unprivileged user instead
            if shutil.which("setpriv") is None:
                pytest.skip("needs setpriv to drop root")
            os.chmod(shared, 0o755)
            drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            probe = subprocess.run([*drop, str(BIN / "merc-extract"), "--help"], capture_output=True, text=True)
            if probe.returncode != 0:  # e.g. a checkout under a mode-700 folder (mktemp -d): nobody cannot run it
                pytest.skip(f"an unprivileged user cannot run this checkout's merc-extract ({probe.stderr.strip()[-120:]})")
            cmd = [*drop, *cmd]
        else:
            subprocess.run(["chmod", "-R", "a-w", str(shared / "s.zarr")], check=True)
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HOME": str(shared)})
        assert res.returncode == 2, res.stdout + res.stderr
        assert "the store is not writable" in res.stdout and "Traceback" not in res.stdout + res.stderr
        assert "merc-extract status" in res.stdout
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(shared)], check=False)
        shutil.rmtree(shared, ignore_errors=True)


def test_disk_full_on_a_commit_leaves_that_dialogue_uncommitted_and_the_rest_kept(corpus, tmp_path, monkeypatch):
    from merc.extract.store import files

    store = tmp_path / "s.zarr"
    real = files._write
    calls = {"n": 0}

    def full_after_a_while(path, data):
        if "d3" in str(path):
            calls["n"] += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(files, "_write", full_after_a_while)
    out = extract(corpus, store, code=2)
    assert "could not write dialogue 'd3'" in out and "No space left on device" in out
    assert "it stays uncommitted" in out and "rerun the same command" in out
    monkeypatch.setattr(files, "_write", real)
    assert not (store / "manifest" / "egemaps" / dialogue_key("d3")).exists()
    verify = extract_cli("verify", "--store", store, code=1)
    assert "not extracted yet (first: d3)" in verify and "damaged" not in verify
    assert "wrote 1 dialogues" in extract(corpus, store)
    assert "OK" in extract_cli("verify", "--store", store)


# -- 10. piped output is whole ---------------------------------------------------------------------------------
def test_piped_output_is_not_wrapped_or_cut(corpus, tmp_path):
    store = tmp_path / ("a-rather-long-folder-name-for-a-store-" * 3) / "s.zarr"
    extract(corpus, store)
    res = subprocess.run([str(BIN / "merc-extract"), "status", "--store", str(store)], capture_output=True,
                         text=True, env={k: v for k, v in os.environ.items() if k != "COLUMNS"})
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert any("dialogues" in line and "fingerprint" in line and "skipped utts" in line for line in lines)
    fp = StoreReader(store).info("manifest", "egemaps")["fingerprint_hash"]
    assert any(fp in line and "5/5" in line for line in lines)
    assert any(f"merc store {store}" in line for line in lines)  # the title with its whole path, on one line


def test_adapter_options_reach_the_adapter_and_the_redo_command(tmp_path):
    corpus = write_manifest_corpus(tmp_path / "corpus", n_dialogues=4, n_utts=2, seconds=0.3)
    labels = tmp_path / "declared.json"
    labels.write_text('{"emotion": {"kind": "categorical", "classes": ["neutral", "joy", "anger", "sadness"]}}')
    store = tmp_path / "s.zarr"
    out = extract(corpus, store, "egemaps", "--adapter-option", f"labels={labels}")
    assert "inferred" not in out  # the declaration was used
    assert f"--adapter-option labels={labels}" in StoreReader(store).extract_command("manifest", "egemaps", None)
    out = extract(corpus, store, "egemaps", "--adapter-option", "nonsense=1", code=2)
    assert "has no option(s) nonsense" in out and "labels" in out


@pytest.mark.parametrize("target", ["store", "dataset", "feature set", "dialogue marker"])
def test_verify_never_crashes_on_damaged_metadata(corpus, tmp_path, target):
    store = tmp_path / "s.zarr"
    extract(corpus, store)
    path = {"store": store, "dataset": store / "manifest", "feature set": store / "manifest" / "egemaps",
            "dialogue marker": store / "manifest" / "egemaps" / dialogue_key("d0")}[target] / "zarr.json"
    path.write_bytes(b"\x00not json")
    out = extract_cli("verify", "--store", store, code=2 if target == "store" else 1)
    assert "Traceback" not in out and ("damaged" in out or "problem" in out)
    if target != "store":
        assert "fix:" in out
