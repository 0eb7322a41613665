"""The contract between the stages, tested with the real producer: `merc-extract` writes the store, and every
registered head trains on it, evaluates and predicts. No hand-built store in between.

A head added to the registry is added to this test by the parametrisation; one that cannot read what
stage 1 writes fails here.
"""

from __future__ import annotations

import json

import pytest
from encoder_testing import extract_cli, tiny_model
from media_fixtures import write_manifest_corpus
from typer.testing import CliRunner

from merc.extract.store import StoreReader
from merc.heads.registry import available_heads, head_class

FEATURES = "t=text,a=ssl"  # both with frames, so the frame-level head (MMoLRE) trains on the same store


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A speech corpus with a categorical and a regression label, extracted three ways by the real CLI."""
    root = tmp_path_factory.mktemp("contract")
    corpus = write_manifest_corpus(root / "corpus", n_dialogues=8, n_utts=4, seconds=0.5)
    lines = corpus.read_text().splitlines()
    lines = [lines[0] + ",sentiment"] + [f"{line},{(i % 7 - 3) / 2}" for i, line in enumerate(lines[1:])]
    corpus.write_text("\n".join(lines) + "\n")
    (corpus.parent / "manifest.csv.labels.json").write_text(json.dumps({
        "emotion": {"kind": "categorical", "classes": ["neutral", "joy", "anger", "sadness"]},
        "sentiment": {"kind": "regression", "value_range": [-3, 3]}}))
    store = root / "cache.zarr"
    common = ("--dataset", "manifest", "--root", corpus, "--store", store)
    extract_cli(*common, "--encoder", f"hf:{tiny_model('roberta')}", "--feature-set", "text", "--keep-frames")
    extract_cli(*common, "--encoder", f"hf:{tiny_model('data2vec-audio')}", "--feature-set", "ssl", "--keep-frames")
    extract_cli(*common, "--encoder", "egemaps")
    return store


def heads_cli(*args, code: int = 0) -> str:
    from merc.heads.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    out = result.output + (f"\n{result.exception!r}" if result.exception and not isinstance(result.exception,
                                                                                           SystemExit) else "")
    assert result.exit_code == code, out
    return out


def test_the_extracted_store_is_whole(extracted):
    r = StoreReader(extracted)
    assert r.feature_sets("manifest") == ["egemaps", "ssl", "text"]
    for fs in ("text", "ssl"):
        assert r.info("manifest", fs)["levels"] == ["utterance", "frames"]
    assert r.verify() == []
    assert sorted(r.label_spaces("manifest")) == ["emotion", "sentiment"]


@pytest.mark.parametrize("head", available_heads())
def test_every_registered_head_trains_on_what_merc_extract_wrote(extracted, tmp_path, head):
    out = heads_cli("train", "--head", head, "--store", extracted, "--dataset", "manifest", "--features", FEATURES,
                    "--epochs", "1", "--out", tmp_path, "--name", "run", "--precision", "fp32")
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["splits"]) == {"train", "dev", "test"}, out
    config = json.loads((run / "config.json").read_text())
    assert config["features"] == {"t": "text", "a": "ssl"}
    if "frames" in head_class(head).levels:
        assert config["levels"] == ["frames"]
    evaluated = heads_cli("eval", run, "--split", "test")
    assert "reproduces the recorded test metrics exactly" in evaluated
    heads_cli("predict", run, "--out", tmp_path / "p.csv")
    assert len((tmp_path / "p.csv").read_text().splitlines()) > 1


def test_openSMILE_features_train_a_baseline(extracted, tmp_path):
    heads_cli("train", "--head", "mlp", "--store", extracted, "--dataset", "manifest", "--features",
              "t=text,a=egemaps", "--epochs", "1", "--out", tmp_path, "--name", "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["features"]["a"] == "egemaps"
