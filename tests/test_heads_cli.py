"""`merc-heads` end to end: the run directory, exact checkpoint round trip, predict, list, one-line errors."""

import csv
import json

import pytest
import torch
from heads_synth import features_arg, shared_store
from typer.testing import CliRunner

from merc.heads.cli import app
from merc.heads.runs import evaluate_run, load_head

torch.set_num_threads(1)
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small dialogue-gru run through the CLI (bf16 where the CPU has it: the round trip must hold there too)."""
    path, names = shared_store("planted")
    out = tmp_path_factory.mktemp("runs")
    res = invoke("train", "--head", "dialogue-gru", "--store", path, "--dataset", "synth",
                 "--features", features_arg(names, "ta"), "--epochs", 3, "--batch-size", 8, "--seed", 3,
                 "--set", "head.hidden=32", "--set", "optim.lr=3e-3", "--set", "train.patience=5", "--out", out,
                 "--name", "gru")
    assert res.exit_code == 0, res.output
    return out / "gru", res.output


def test_run_directory_holds_everything(trained):
    run_dir, output = trained
    for name in ("config.json", "head_config.json", "model.safetensors", "feature_stats.safetensors", "metrics.json",
                 "predictions.csv", "log.jsonl", "learning_curve.png"):
        assert (run_dir / name).exists(), name
    config = json.loads((run_dir / "config.json").read_text())
    # the config tree (what --config reads back), then what it resolved to
    assert config["head"]["name"] == "dialogue-gru" and config["head"]["hidden"] == 32
    assert config["optim"]["lr"] == 3e-3 and config["optim"]["name"] == "adamw"
    assert config["train"]["seed"] == 3 and config["train"]["patience"] == 5 and config["train"]["epochs"] == 3
    assert config["train"]["batch_unit"] == "dialogue" and config["train"]["precision"] == "auto"
    assert config["data"]["normalize"] == "zscore" and config["data"]["tasks"] == ["emotion"]
    assert config["data"]["features"] == {"t": "text32", "a": "audio32"}
    assert config["preset"] is None  # no preset for a dataset called synth
    assert config["sources"]["optim.lr"] == "--set optim.lr=3e-3" and config["sources"]["train.epochs"] == "--epochs 3"
    assert config["sources"]["optim.weight_decay"].startswith("dialogue-gru default")
    assert config["features"] == {"t": "text32", "a": "audio32"} and set(config["fingerprints"]) == {"t", "a"}
    assert config["encoders"] == {"t": "synthetic", "a": "synthetic"}  # the store's record of each feature set
    assert config["tasks"] == [{"name": "emotion", "kind": "categorical", "classes": ["neutral", "joy", "anger", "sadness"]}]
    assert config["precision"] in ("fp32", "bf16") and config["optimizer"]["lr"] == 3e-3
    assert {"torch", "numpy", "zarr", "python"} <= set(config["versions"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["splits"]["test"]["emotion"]
    assert {"accuracy", "weighted_f1", "macro_f1", "per_class", "confusion_matrix"} <= set(test)
    assert set(test["per_class"]) == {"neutral", "joy", "anger", "sadness"}
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert len(log) == 3 and "dev_weighted_f1" in log[0]
    rows = list(csv.DictReader(open(run_dir / "predictions.csv")))
    assert set(rows[0]) == {"utterance_id", "split", "task", "gold", "pred", "probabilities"}
    assert {r["split"] for r in rows} == {"train", "dev", "test"}
    assert abs(sum(json.loads(rows[0]["probabilities"]).values()) - 1) < 1e-4
    # the first line says which preset applies; the summary line names the test metrics at the best-dev checkpoint,
    # the encoders the features came from, and the run directory
    assert output.startswith("dialogue-gru on synth: no preset (head defaults); 3 epochs, batch 8 dialogues")
    assert "test emotion: weighted_f1" in output and "run:" in output
    assert "features t=text32 (synthetic), a=audio32 (synthetic)" in output


def test_checkpoint_round_trip_is_exact(trained):
    run_dir, _ = trained
    metrics, recorded = evaluate_run(run_dir, "test")
    assert json.loads(json.dumps(metrics)) == recorded
    res = invoke("eval", run_dir, "--split", "test")
    assert res.exit_code == 0 and "reproduces the recorded test metrics exactly" in res.output, res.output
    res = invoke("eval", run_dir, "--split", "dev", "--json")
    assert json.loads(res.output)["emotion"]["weighted_f1"] == recorded_dev(run_dir)


def recorded_dev(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())["splits"]["dev"]["emotion"]["weighted_f1"]


def test_weights_reload_bit_for_bit(trained):
    from safetensors.torch import load_file

    run_dir, _ = trained
    head = load_head(run_dir)
    saved = load_file(str(run_dir / "model.safetensors"))
    for k, v in head.state_dict().items():
        assert torch.equal(v, saved[k]), k


def test_predict_writes_csv(trained, tmp_path):
    run_dir, _ = trained
    out = tmp_path / "p.csv"
    res = invoke("predict", run_dir, "--out", out, "--split", "test")
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(out)))
    assert rows and {r["split"] for r in rows} == {"test"}
    in_run = [r for r in csv.DictReader(open(run_dir / "predictions.csv")) if r["split"] == "test"]
    assert [r["pred"] for r in rows] == [r["pred"] for r in in_run]


def test_list_names_heads_needs_and_options():
    res = invoke("list")
    assert res.exit_code == 0
    for text in ("mlp", "late-fusion", "dialogue-gru", "levels utterance", "hidden=256", "optional t,a,v",
                 "optim.name=adam optim.lr=1e-05", "train.batch_unit=utterance"):
        assert text in res.output
    assert "lr=0.001 weight_decay" not in res.output  # the optimiser is in optim.*, not among a head's options


def test_list_presets_shows_versions_values_and_sources():
    res = invoke("list", "--presets")
    assert res.exit_code == 0, res.output
    for text in ("ada2i/meld@1", "mister-e/mosi@1", "mmolre/mosei@1", "summer/iemocap@1", "mister-e/meld-parity@1",
                 "optim.lr = 0.00012", "[paper] Table 2: learning rate (spec 4.5)", "extends mister-e/meld, mister-e/parity"):
        assert text in res.output, text


@pytest.mark.parametrize("args, message", [
    (["--head", "nope"], "unknown head 'nope'"),
    (["--head", "mlp", "--set", "colour=red"], "has no option 'colour'"),
    (["--head", "mlp", "--set", "hidden"], "is not key=value"),
    (["--head", "mlp", "--set", "head.colour=red"], "head 'mlp' has no option 'colour'"),
    (["--head", "mlp", "--set", "optim.lrr=1"], "optim has no key 'lrr'"),
    (["--head", "mlp", "--set", "optim.name=sgd"], "--set optim.name=sgd is not one of adamw, adam"),
    (["--head", "mlp", "--set", "train.batch_unit=video"], "is not one of dialogue, utterance"),
    (["--head", "mlp", "--set", "data.max_frames.x=3"], "unknown role 'x'"),
    (["--head", "mlp", "--set", "head.lr=1"], "use --set optim.lr="),
    (["--head", "mlp", "--preset", "ada2i/meld"], "preset ada2i/meld is for the ada2i head"),
    (["--head", "ada2i", "--preset", "ada2i/nope"], "unknown preset 'ada2i/nope'"),
    (["--head", "mlp", "--features", "text32,nope"], "feature set 'nope'"),
    (["--head", "mlp", "--dataset", "meld"], "dataset 'meld' is not in the store"),
    (["--head", "mlp", "--task", "sentiment"], "no label space 'sentiment'"),
    (["--head", "mlp", "--precision", "fp16", "--device", "cpu"], "fp16 needs a CUDA device"),
    (["--head", "mister-e", "--features", "text32"], "needs modality roles t, a"),
])
def test_user_errors_are_one_clear_message(args, message, tmp_path):
    path, names = shared_store("planted")
    base = {"--store": path, "--dataset": "synth", "--features": features_arg(names, "ta"), "--out": tmp_path,
            "--epochs": "1"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    flat = ["train"] + [str(x) for kv in base.items() if kv[0] != "--set" for x in kv]
    if "--set" in args:
        flat += ["--set", args[args.index("--set") + 1]]
    res = invoke(*flat)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Fix:" in res.output and "Traceback" not in res.output


def test_same_seed_same_run_from_a_fresh_process_state(tmp_path):
    """Two `train` commands with one seed give identical weights and metrics (initial weights included), even when
    the global torch generator was left elsewhere in between; another seed gives other weights."""
    from safetensors.torch import load_file

    path, names = shared_store("planted")

    def train(seed: int, name: str):
        torch.manual_seed(1000 + len(name))  # whatever ran before must not matter
        res = invoke("train", "--head", "mlp", "--store", path, "--dataset", "synth", "--features",
                     features_arg(names, "ta"), "--epochs", 2, "--seed", seed, "--set", "hidden=16",
                     "--out", tmp_path, "--name", name)
        assert res.exit_code == 0, res.output
        run = tmp_path / name
        return load_file(str(run / "model.safetensors")), json.loads((run / "metrics.json").read_text())["splits"]

    w1, m1 = train(5, "a")
    w2, m2 = train(5, "bb")
    w3, _ = train(6, "ccc")
    assert m1 == m2 and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert not all(torch.equal(w1[k], w3[k]) for k in w1)


def test_piped_output_is_not_hard_wrapped(tmp_path):
    """CliRunner's stdout is not a terminal: the summary line with a long run path stays one line."""
    path, names = shared_store("planted")
    name = "a-run-name-long-enough-that-an-80-column-console-would-have-broken-the-line-" + "x" * 60
    res = invoke("train", "--head", "mlp", "--store", path, "--dataset", "synth", "--features",
                 features_arg(names, "ta"), "--epochs", 1, "--set", "hidden=8", "--out", tmp_path, "--name", name)
    assert res.exit_code == 0, res.output
    summary = [line for line in res.output.splitlines() if line.startswith("test ")]
    assert len(summary) == 1 and summary[0].endswith(f"run: {tmp_path / name}"), res.output
