"""The config tree: one parser (types from the dataclass fields), namespaces, errors that list what is valid, the
order of precedence of its layers, and `merc-heads train --config <run>/config.json` repeating a run exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Literal

import pytest
import torch
from heads_synth import SynthSpec, build_store, features_arg
from typer.testing import CliRunner

from merc.heads.cli import app
from merc.heads.config import (
    OptimConfig,
    Setting,
    TrainSettings,
    describe,
    parse_value,
    resolve,
)
from merc.heads.data import HeadsError
from merc.heads.runs import RunRequest, resolve_request

torch.set_num_threads(1)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# -- the parser ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, typ, expected", [
    ("3", int, 3), (3.0, int, 3), ("1e-5", float, 1e-5), ("nan", float, float("nan")), (2, float, 2.0),
    ("true", bool, True), ("off", bool, False), (" x ", str, "x"), ("Adam", Literal["adamw", "adam"], "adam"),
    ("none", float | None, None), ("1.0", float | None, 1.0), (None, int | None, None),
    ("0.9,0.99", tuple[float, float], (0.9, 0.99)), ([0.9, 0.99], tuple[float, float], (0.9, 0.99)),
    ("a,b", tuple[str, ...], ("a", "b")), (["a"], tuple[str, ...] | None, ("a",)),
    ("t=64,a=none", dict[str, int | None], {"t": 64, "a": None}), ({"a": 3}, dict[str, int | None], {"a": 3}),
    ("t=x", str | dict[str, str], "t=x"), ({"t": "x"}, str | dict[str, str], {"t": "x"}),
])
def test_parse_value_follows_the_field_type(raw, typ, expected):
    got = parse_value(raw, typ)
    assert got == expected or (got != got and expected != expected)  # NaN
    assert type(got) is type(expected)


@pytest.mark.parametrize("raw, typ, words", [
    ("fast", float, "a number"), ("2.5", int, "a whole number"), (True, int, "a whole number"),
    ("maybe", bool, "true or false"), ("sgd", Literal["adamw", "adam"], "one of adamw, adam"),
    ("0.9", tuple[float, float], "2 comma-separated numbers"), ("soon", int | None, "a whole number or none"),
])
def test_parse_errors_say_what_is_valid(raw, typ, words):
    with pytest.raises(ValueError):
        parse_value(raw, typ)
    assert describe(typ) == words


# -- namespaces and keys ----------------------------------------------------------------------------------

@dataclass
class _Cfg:
    width: int = 4
    patience: int = 2  # also a train.* key: a bare --set patience is ambiguous for this head
    kind: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = (1, 2)
    extra: dict[str, int] = field(default_factory=dict)


def settings(**kv) -> list[Setting]:
    return [Setting(k.replace("__", "."), v, f"--set {k.replace('__', '.')}={v}") for k, v in kv.items()]


def test_namespaced_and_bare_keys():
    cfg = resolve("fake", _Cfg, settings(head__width="8", optim__lr="1e-5", train__epochs="3",
                                         data__max_frames__a="300", kind="B", sizes="3,4,5", weight_decay="0.1",
                                         optimizer="adam", normalize="none", eval_batch_size="2"))
    assert cfg.head.width == 8 and cfg.head.kind == "b" and cfg.head.sizes == (3, 4, 5)
    assert cfg.optim.lr == 1e-5 and not hasattr(cfg.head, "lr")  # head configs hold no optimiser fields
    assert cfg.optim.name == "adam" and cfg.optim.weight_decay == 0.1
    assert cfg.train.epochs == 3 and cfg.train.eval_batch_size == 2
    assert cfg.data.normalize == "none" and cfg.data.max_frames == {"t": 64, "a": 300, "v": 64}
    assert cfg.sources["optim.lr"] == "--set optim.lr=1e-5" and "optim.eps" not in cfg.sources
    assert "lr" not in cfg.to_dict()["head"]  # the optimiser is in optim.*
    # one value for a role mapping sets every role
    assert resolve("fake", _Cfg, settings(data__max_frames="0")).data.max_frames == {"t": 0, "a": 0, "v": 0}


@pytest.mark.parametrize("kv, message, fix", [
    ({"colour": "red"}, "head 'fake' has no option 'colour'", "head.*: width, patience, kind, sizes, extra"),
    ({"head__colour": "red"}, "head 'fake' has no option 'colour'", "head keys: width, patience, kind"),
    ({"optim__lrr": "1"}, "optim has no key 'lrr'", "optim keys: name, lr, weight_decay, betas"),
    ({"train__epoch": "1"}, "train has no key 'epoch'", "train keys: epochs, batch_size, batch_unit"),
    ({"model__x": "1"}, "no namespace 'model'", "head.<key>, optim.<key>, train.<key>, data.<key>"),
    ({"patience": "3"}, "--set patience is ambiguous: it is head.patience and train.patience",
     "name the namespace, e.g. --set head.patience="),
    ({"head__lr": "1"}, "head.lr is an optimiser setting", "use --set optim.lr="),
    ({"data__max_frames__x": "1"}, "unknown role 'x'", "data.max_frames.t, data.max_frames.a, data.max_frames.v"),
    ({"train__epochs__x": "1"}, "train.epochs has no sub-keys", "--set train.epochs=<value>"),
])
def test_unknown_and_ambiguous_keys_list_what_is_valid(kv, message, fix):
    with pytest.raises(HeadsError) as info:
        resolve("fake", _Cfg, settings(**kv))
    assert message in str(info.value) and fix in str(info.value), str(info.value)


def test_bad_values_and_numbers_out_of_range_are_listed_together():
    with pytest.raises(HeadsError) as info:
        resolve("fake", _Cfg, settings(optim__name="sgd", kind="c", train__batch_unit="video", optim__lr="nan",
                                       train__patience="0", train__epochs="two", data__max_frames__a="-1",
                                       optim__betas="0.9,1.5"))
    text = str(info.value)
    for needle in ("invalid training settings", "--set optim.name=sgd is not one of adamw, adam",
                   "--set kind=c is not one of a, b", "--set train.batch_unit=video is not one of dialogue, utterance",
                   "--set train.epochs=two is not a whole number", "train.epochs must be a whole number >= 1",
                   "--set optim.lr=nan", "optim.lr must be a finite number > 0", "--set train.patience=0",
                   "train.patience must be a whole number >= 1", "--set data.max_frames.a=-1",
                   "data.max_frames must be a whole number >= 0 per role", "optim.betas must be two numbers in [0, 1)"):
        assert needle in text, (needle, text)


def test_the_dataclasses_hold_the_defaults():
    assert OptimConfig().name == "adamw" and OptimConfig().scheduler == "none"
    assert TrainSettings().epochs == 50 and TrainSettings().batch_unit == "dialogue"


# -- precedence ----------------------------------------------------------------------------------------------

def req(**kv) -> RunRequest:
    return RunRequest(**{"head": "ada2i", "store": "s.zarr", "dataset": "meld", "features": "t=x", **kv})


def test_precedence_defaults_head_preset_config_cli_set():
    # dataclass default (optim.eps) < head class defaults (ada2i: lr 1.7e-4) < preset (ada2i/meld: lr 1.2e-4) ...
    none = resolve_request(req(preset="none"))
    assert none.preset is None and none.optim.lr == 1.7e-4 and none.optim.eps == 1e-8
    assert none.sources["optim.lr"].startswith("ada2i default") and "optim.eps" not in none.sources
    assert none.train.batch_unit == "dialogue" and none.train.patience == 20
    auto = resolve_request(req())
    assert auto.preset == "ada2i/meld@1" and auto.optim.lr == 1.2e-4 and auto.head.hidden == 200
    assert auto.sources["optim.lr"] == "preset ada2i/meld@1: optim.lr=0.00012"
    assert resolve_request(req(dataset="other")).preset is None  # no ada2i/other preset
    # ... < --config file < explicit options < --set
    tree = {"head": {"name": "ada2i", "rank": 3}, "optim": {"lr": 5e-5}, "train": {"epochs": 7, "seed": 2}}
    cfg = resolve_request(req(config=tree))
    assert (cfg.optim.lr, cfg.train.epochs, cfg.head.rank, cfg.head.hidden) == (5e-5, 7, 3, 200)
    cfg = resolve_request(req(config=tree, epochs=5, seed=9))
    assert (cfg.train.epochs, cfg.train.seed, cfg.sources["train.epochs"]) == (5, 9, "--epochs 5")
    cfg = resolve_request(req(config=tree, epochs=5, overrides={"train.epochs": "3", "rank": "4"}))
    assert (cfg.train.epochs, cfg.head.rank) == (3, 4)
    # a named preset, and presets that do not fit
    assert resolve_request(req(preset="ada2i/meld-parity")).optim.lr == 1.3e-4
    with pytest.raises(HeadsError, match="is for dataset 'meld'"):
        resolve_request(req(dataset="iemocap", preset="ada2i/meld"))


def test_the_head_class_declares_its_schedule():
    mmolre = resolve_request(RunRequest(head="mmolre", store="s", dataset="synth", features="x"))
    assert mmolre.train.batch_unit == "utterance" and mmolre.train.batch_size == 8 and mmolre.train.patience == 8
    assert mmolre.optim.name == "adamw" and mmolre.data.max_frames == {"t": 64, "a": 299, "v": 64}
    mister = resolve_request(RunRequest(head="mister-e", store="s", dataset="synth", features="x"))
    assert (mister.train.epochs, mister.train.batch_size, mister.optim.grad_clip) == (100, 8, 1.0)
    assert resolve_request(RunRequest(head="mlp", store="s", dataset="synth", features="x")).train.batch_unit == \
        "utterance"


def test_missing_and_conflicting_options():
    with pytest.raises(HeadsError, match="missing options --head, --store"):
        resolve_request(RunRequest(dataset="x", features="y"))
    with pytest.raises(HeadsError, match="--head mlp differs from the head of the --config file"):
        resolve_request(req(head="mlp", config={"head": {"name": "ada2i"}}))
    with pytest.raises(HeadsError, match="config.json of an older merc-heads"):
        resolve_request(req(config={"head": "ada2i", "head_config": {}}))


def test_the_config_path_does_not_import_torch():
    code = ("import sys; from typer.testing import CliRunner; from merc.heads.cli import app; "
            "r = CliRunner().invoke(app, ['list', '--presets']); assert r.exit_code == 0, r.output; "
            "from merc.heads import config, presets; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stdout + out.stderr


# -- a run repeats from its config.json --------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "s.zarr"
    names = build_store(path, SynthSpec(splits={"train": 10, "dev": 4, "test": 4}, lengths=(3, 5),
                                        dims={"t": 8, "a": 8}, seed=5))
    return str(path), features_arg(names, "ta")


def test_config_json_repeats_the_run_exactly_on_cpu(store, tmp_path):
    path, features = store
    res = invoke("train", "--head", "dialogue-gru", "--store", path, "--dataset", "synth", "--features", features,
                 "--epochs", 2, "--seed", 4, "--precision", "fp32", "--device", "cpu", "--set", "head.hidden=8",
                 "--set", "head.dropout=0.3", "--set", "optim.lr=3e-3", "--out", tmp_path, "--name", "a")
    assert res.exit_code == 0, res.output
    first = tmp_path / "a"
    res = invoke("train", "--config", first / "config.json", "--out", tmp_path, "--name", "b")
    assert res.exit_code == 0, res.output
    again = tmp_path / "b"
    assert (first / "model.safetensors").read_bytes() == (again / "model.safetensors").read_bytes()
    a, b = (json.loads((d / "config.json").read_text()) for d in (first, again))
    assert {k: a[k] for k in ("head", "optim", "train", "data")} == {k: b[k] for k in ("head", "optim", "train", "data")}
    assert b["sources"]["optim.lr"].startswith(f"--config {first / 'config.json'}: optim.lr=")
    assert json.loads((first / "metrics.json").read_text())["splits"] == \
        json.loads((again / "metrics.json").read_text())["splits"]
    # --set wins over the file: another seed, other weights
    res = invoke("train", "--config", first / "config.json", "--set", "train.seed=5", "--out", tmp_path, "--name", "c")
    assert res.exit_code == 0, res.output
    assert (first / "model.safetensors").read_bytes() != (tmp_path / "c" / "model.safetensors").read_bytes()


def test_a_yaml_config_file(store, tmp_path):
    path, features = store
    (tmp_path / "run.yaml").write_text(f"head: {{name: mlp, hidden: 8}}\noptim: {{lr: 1e-2}}\ntrain: {{epochs: 1}}\n"
                                       f"data: {{store: {path}, dataset: synth, features: '{features}'}}\n")
    res = invoke("train", "--config", tmp_path / "run.yaml", "--out", tmp_path, "--name", "y")
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "y" / "config.json").read_text())
    assert config["head"]["hidden"] == 8 and config["optim"]["lr"] == 1e-2 and config["train"]["epochs"] == 1
    assert config["train"]["batch_unit"] == "utterance" and config["train"]["batch_size"] == 64  # mlp's defaults
    (tmp_path / "bad.yaml").write_text("head: {name: mlp}\ntrain: {epochs: 0, batch_unit: frame}\n")
    res = invoke("train", "--config", tmp_path / "bad.yaml", "--store", path, "--dataset", "synth", "--features",
                 features, "--out", tmp_path)
    assert res.exit_code == 2 and "train.epochs=0" in res.output and "is not one of dialogue, utterance" in res.output
