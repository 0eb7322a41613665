"""MOSI / MOSEI adapters on tiny MMSA-FET folders written here (label.csv + Raw/<video>/<clip>.mp4), the shipped
standard folds, located errors, and a baseline head trained on a derived sentiment task of the manifest."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from merc.data_manifests import ManifestError, fold_lists, load_manifest
from merc.data_manifests.fold_lists import load_folds
from merc.extract.store import StoreReader, StoreWriter
from merc.heads.cli import app as heads_app

HEADER = ["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V", "annotation", "mode"]
EMOTIONS = ["happy", "sad", "anger", "surprise", "disgust", "fear"]
MOSI = load_folds("mosi")
MOSEI = load_folds("mosei")


def videos_of(folds, counts=(2, 1, 1), skip=0) -> dict[str, list[str]]:
    return {s: list(folds.ids[s][skip:skip + n]) for s, n in zip(("train", "dev", "test"), counts, strict=True)}


def rows_for(videos: dict[str, list[str]], clips=("10", "2", "1", "3"), seed=0) -> list[dict]:
    """Rows in file order: clips written unsorted; labels in [-3, 3] with some exact zeros."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, ids in videos.items():
        mode = {"dev": "valid"}.get(split, split)
        for v in ids:
            for c in clips:
                label = float(np.round(rng.uniform(-3, 3) * 2) / 2)
                rows.append({"video_id": v, "clip_id": c, "text": f"{v} says {c}", "label": label, "label_T": "",
                             "label_A": "", "label_V": "", "annotation": "Positive" if label > 0 else "Negative",
                             "mode": mode})
    return rows


def write_corpus(root: Path, rows: list[dict], header=HEADER, clips: bool = True, missing: tuple = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "label.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    if clips:
        for r in rows:
            if (r["video_id"], r["clip_id"]) in missing:
                continue
            clip = root / "Raw" / r["video_id"] / f"{r['clip_id']}.mp4"
            clip.parent.mkdir(parents=True, exist_ok=True)
            clip.write_bytes(b"")
        (root / "Raw" / "._junk.mp4").write_bytes(b"")  # AppleDouble: ignored
    return root


def test_mosi_manifest_order_ids_splits_media_and_a_missing_clip(tmp_path):
    videos = videos_of(MOSI)
    rows = rows_for(videos)
    gone = (videos["train"][0], "3")
    m = load_manifest("mosi", write_corpus(tmp_path / "MOSI", rows, missing=(gone,)))
    assert {s: [d.id for d in m.split(s)] for s in ("train", "dev", "test")} == videos  # valid -> dev
    d = m.dialogue(videos["train"][0])
    assert [u.id for u in d.utterances] == [f"{d.id}_{c}" for c in ("1", "2", "3", "10")]  # numeric clip order
    by_id = {f"{r['video_id']}_{r['clip_id']}": r for r in rows}
    for u in m.utterances():
        r = by_id[u.id]
        assert (u.speaker, u.text, u.labels) == (r["video_id"], r["text"], {"sentiment": r["label"]})
        assert u.media is None if u.id == f"{gone[0]}_3" else u.media.endswith(f"Raw/{u.dialogue_id}/{r['clip_id']}.mp4")
    assert list(m.label_spaces) == ["sentiment"] and m.label_spaces["sentiment"].value_range == (-3.0, 3.0)
    assert [f.utterance_id for f in m.findings] == [f"{gone[0]}_3"] and "not found" in m.findings[0].problem
    assert m.policies["clips"]["missing"] == [f"{gone[0]}_3"]
    assert m.policies["splits"]["standard_folds"]["videos_in_another_split"] == {}


def test_mosei_numeric_ids_emotions_and_standard_folds(tmp_path):
    videos = videos_of(MOSEI, skip=3)  # starts at '81406': a numeric id that must stay a string
    rows = rows_for(videos)
    for i, r in enumerate(rows):
        for j, e in enumerate(EMOTIONS):
            r[e] = [0.0, 0.33, 1.0, 0.0, 2.66, 0.0][(i + j) % 6]
        r["mode"] = ""  # no mode column values: the shipped standard folds decide
    rows.append({**rows[0], "video_id": "notInAnyFold9", "clip_id": "0"})
    m = load_manifest("mosei", write_corpus(tmp_path / "MOSEI", rows, header=HEADER + EMOTIONS, clips=False))
    assert videos["train"][0] == "81406" and m.dialogue("81406").utterances[0].id == "81406_1"
    assert m.label_spaces["emotions"].kind == "multilabel"
    first = next(u for u in m.utterances() if u.id == f"{rows[0]['video_id']}_{rows[0]['clip_id']}")
    assert first.labels["emotions"] == tuple(e for j, e in enumerate(EMOTIONS) if [0, .33, 1, 0, 2.66, 0][j % 6] > 0)
    assert {s: [d.id for d in m.split(s)] for s in ("train", "dev", "test")} == videos
    assert m.policies["splits"]["videos_left_out"] == ["notInAnyFold9"]
    notes = " | ".join(f.problem for f in m.findings)
    assert "no Raw/ clip folder" in notes and "notInAnyFold9" in notes
    with pytest.raises(ManifestError, match="no Raw/ clip folder"):
        load_manifest("mosei", tmp_path / "MOSEI", modalities=("audio",))


def test_mode_column_that_disagrees_with_the_standard_folds_is_reported(tmp_path):
    videos = videos_of(MOSI)
    videos["dev"], videos["test"] = videos["test"], videos["dev"]
    m = load_manifest("mosi", write_corpus(tmp_path / "m", rows_for(videos), clips=False), modalities=("text",))
    assert len(m.policies["splits"]["standard_folds"]["videos_in_another_split"]) == 2
    assert any("another split than in the standard folds" in f.problem for f in m.findings)
    m2 = load_manifest("mosi", tmp_path / "m", splits="standard", modalities=("text",))
    assert [d.id for d in m2.split("dev")] == videos["test"]  # the folds win when asked


def test_located_errors(tmp_path, monkeypatch):
    videos = videos_of(MOSI)
    rows = rows_for(videos)
    rows[1]["label"] = "4.5"
    rows[2]["mode"] = "holdout"
    rows.append(dict(rows[0]))
    with pytest.raises(ManifestError) as err:  # every bad row at once
        load_manifest("mosi", write_corpus(tmp_path / "bad", rows, clips=False))
    text = str(err.value)
    assert "label.csv, row 2" in text and "not a sentiment in [-3, 3]" in text
    assert "row 3" in text and "unknown mode 'holdout'" in text
    assert f"row {len(rows)}" in text and "duplicate segment" in text
    split_video = rows_for(videos) + [{**rows_for(videos)[4], "clip_id": "77", "mode": "test"}]
    with pytest.raises(ManifestError, match=rf"row {len(split_video)} .*is in train at row 5 but in test here"):
        load_manifest("mosi", write_corpus(tmp_path / "split", split_video, clips=False))
    with pytest.raises(ManifestError, match="looks like CMU-MOSEI, not CMU-MOSI.*--dataset mosei"):
        load_manifest("mosi", write_corpus(tmp_path / "mosei", rows_for(videos_of(MOSEI)), clips=False))
    with pytest.raises(ManifestError, match="missing column.*'label'"):
        load_manifest("mosi", write_corpus(tmp_path / "nolabel", rows_for(videos), header=HEADER[:3], clips=False))
    no_mode = write_corpus(tmp_path / "nolists", [{**r, "mode": ""} for r in rows_for(videos)], clips=False)
    monkeypatch.setattr(fold_lists, "SPLIT_DIR", tmp_path / "no-lists")  # an install without the split lists
    with pytest.raises(ManifestError, match=r"mosi_standard_train\.txt.*not found"):
        load_manifest("mosi", no_mode)


def test_derived_sentiment_task_trains_on_the_manifest(tmp_path):
    """A store made from the adapter's manifest (synthetic feature set through StoreWriter): mlp on sentiment_has0."""
    m = load_manifest("mosi", write_corpus(tmp_path / "MOSI", rows_for(videos_of(MOSI, (3, 1, 1))), clips=False))
    store = tmp_path / "c.zarr"
    w = StoreWriter(store, "mosi", "synthetic8")
    w.open(m, fingerprint={"encoder": "synthetic"}, info={"dim": 8, "modality": "text", "encoder": "synthetic"},
           source={"adapter": "mosi", "options": {}})
    rng = np.random.default_rng(0)
    for d in m.dialogues:
        y = np.array([u.labels["sentiment"] for u in d.utterances], np.float32)
        x = rng.standard_normal((len(d), 8)).astype(np.float32)
        x[:, 0] += y
        w.write_dialogue(d.id, x.astype(np.float16), np.ones(len(d), bool))
    w.finalize(m)
    assert StoreReader(store).verify() == []
    res = CliRunner().invoke(heads_app, ["train", "--head", "mlp", "--store", str(store), "--dataset", "mosi",
                                         "--features", "t=synthetic8", "--task", "sentiment_has0", "--epochs", "2",
                                         "--batch-size", "4", "--set", "hidden=16", "--out", str(tmp_path / "runs"),
                                         "--name", "r", "--precision", "fp32", "--device", "cpu", "--preset", "none"])
    assert res.exit_code == 0, (res.output, res.exception)
    metrics = json.loads((tmp_path / "runs" / "r" / "metrics.json").read_text())
    test = metrics["splits"]["test"]["sentiment_has0"]
    assert test["n"] == 4 and set(test["per_class"]) == {"negative", "non-negative"}


@pytest.mark.slow
def test_merc_extract_on_the_raw_layout_text_and_audio(tmp_path):
    """The CLI a user types on an MMSA-FET folder with real clips: the embedded MiniLM and openSMILE eGeMAPS."""
    from media_fixtures import write_mp4_51

    videos = videos_of(MOSEI, (2, 1, 1), skip=40)
    rows = rows_for(videos, clips=("2", "1"))
    root = write_corpus(tmp_path / "MOSEI", rows, clips=False)
    for r in rows:
        clip = root / "Raw" / r["video_id"] / f"{r['clip_id']}.mp4"
        clip.parent.mkdir(parents=True, exist_ok=True)
        write_mp4_51(clip, 0.6, 180.0 + 40 * int(r["clip_id"]))
    bin_ = Path(sys.executable).parent / "merc-extract"
    for encoder in ("minilm", "egemaps"):
        proc = subprocess.run([str(bin_), "--dataset", "mosei", "--root", str(root), "--encoder", encoder, "--store",
                               str(tmp_path / "c.zarr")], capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "200"})
        assert proc.returncode == 0, proc.stdout + proc.stderr
    r = StoreReader(tmp_path / "c.zarr")
    text, audio = r.load_pooled("mosei", "minilm"), r.load_pooled("mosei", "egemaps")
    assert text.valid.all() and text.pooled.shape == (8, 384) and audio.valid.all() and audio.pooled.shape == (8, 88)
    m = r.manifest("mosei")
    assert [d.id for d in m.dialogues] == [v for s in videos.values() for v in s]
    assert [u.id for u in m.dialogues[0].utterances] == [f"{m.dialogues[0].id}_1", f"{m.dialogues[0].id}_2"]
    assert r.verify() == []


def test_shipped_standard_folds():
    """The SDK's standard folds: video counts of formats.md C, disjoint, ids as written (numeric MOSEI ids)."""
    assert {s: len(v) for s, v in MOSI.ids.items()} == {"train": 52, "dev": 10, "test": 31}
    assert {s: len(v) for s, v in MOSEI.ids.items()} == {"train": 2249, "dev": 300, "test": 678}
    for folds in (MOSI, MOSEI):
        all_ids = [v for ids in folds.ids.values() for v in ids]
        assert len(set(all_ids)) == len(all_ids) and all(v == v.strip() and v for v in all_ids)
        assert "cmu_mos" in folds.source
    assert MOSEI.split_of("81406") == "train" and MOSEI.split_of("188343") == "dev"
    assert MOSI.split_of("OQvJTdtJ2H4") == "train" and MOSI.split_of("81406") is None


def test_a_video_in_two_lists_is_an_error(tmp_path):
    for split, ids in {"train": ["a", "b"], "dev": ["c"], "test": ["b"]}.items():
        (tmp_path / f"toy_standard_{split}.txt").write_text("# toy\n" + "\n".join(ids) + "\n")
    with pytest.raises(ManifestError, match=r"toy_standard_test\.txt, row 2: video id 'b' is listed in both train"):
        load_folds("toy", folder=tmp_path)
