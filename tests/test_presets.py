"""Presets: every file loads, cites a source for every value, resolves into the config tree with exactly the
values it cites, and trains one epoch on a synthetic store named like its dataset (heads shrunk for speed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from heads_synth import SynthSpec, build_store, features_arg, small_overrides

from merc.heads.config import Schema, parse_value
from merc.heads.presets import load_preset, preset_names
from merc.heads.registry import head_class
from merc.heads.runs import RunRequest, resolve_request, train_run

torch.set_num_threads(1)
PRESETS = preset_names()
TAG = re.compile(r"^\[(paper|code|default|review)\] \S")
# a synthetic store per dataset a preset names: MOSI/MOSEI-like ones have sentiment + emotions and frames
KIND = {"meld": "planted", "iemocap": "planted", "mosi": "mosei", "mosei": "mosei"}
_STORES: dict[str, tuple[str, str]] = {}


def store_for(dataset: str, root: Path) -> tuple[str, str]:
    if dataset not in _STORES:
        path = root / f"{dataset}.zarr"
        names = build_store(path, SynthSpec(kind=KIND[dataset], splits={"train": 6, "dev": 3, "test": 3},
                                            lengths=(2, 4), dims={"t": 8, "a": 8}, frames=(2, 3), invalid_rate=0.0,
                                            seed=len(_STORES)), dataset=dataset)
        _STORES[dataset] = (str(path), features_arg(names, "ta"))
    return _STORES[dataset]


def expected_values(name: str) -> dict[str, object]:
    """The preset's values parsed to their fields' types (dotted key, sub-keys of role mappings kept)."""
    p = load_preset(name)
    schema = Schema(p.head, head_class(p.head).config_cls)
    out = {}
    for key, value in p.values.items():
        field_key, sub = schema.canonical(key)
        typ = schema.type_of(field_key)
        out[key] = parse_value(value, typ.__args__[1] if sub else typ)
    return out


def tree_value(tree: dict, key: str, typ_of) -> object:
    ns, name, *sub = key.split(".")
    value = tree[ns][name]
    return value[sub[0]] if sub else value


def test_there_are_presets_for_every_paper_head():
    for name in ("mister-e/iemocap", "mister-e/meld", "mister-e/mosi", "ada2i/iemocap", "ada2i/meld", "ada2i/mosei",
                 "mmolre/mosi", "mmolre/mosei", "summer/iemocap", "summer/meld"):
        assert name in PRESETS, name


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_and_cites_a_source_for_every_value(name):
    p = load_preset(name)
    assert p.name == name and p.version >= 1 and p.description and p.ref == f"{name}@{p.version}"
    assert set(p.sources) == set(p.values)
    for key, source in p.sources.items():
        assert TAG.match(source), (key, source)  # [paper], [code], [default] or [review], then the citation
        if source.startswith("[default]"):
            assert len(source) > len("[default] ") + 10, (key, source)  # says why
    expected_values(name)  # every key is a key of the head's tree and every value parses


def test_parity_presets_exist_where_the_code_was_released():
    for head, datasets in (("mister-e", ("iemocap", "meld", "mosi")), ("ada2i", ("iemocap", "meld", "mosei"))):
        assert f"{head}/parity" in PRESETS
        for ds in datasets:
            p = load_preset(f"{head}/{ds}-parity")
            assert p.values["head.parity"] is True and p.values["data.normalize"] == "none"
            assert p.values["train.precision"] == "fp32" and "train.eval_batch_size" in p.values
    for head in ("mmolre", "summer"):  # no released code: no parity variant, and the description says so
        assert not [n for n in PRESETS if n.startswith(head) and "parity" in n]
        assert all("parity" in load_preset(n).description for n in preset_names(head))


@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_resolves_to_the_values_it_cites(name):
    p = load_preset(name)
    cfg = resolve_request(RunRequest(head=p.head, store="s.zarr", dataset=p.dataset or "meld", features="x",
                                     preset=name))
    assert cfg.preset == p.ref
    tree = json.loads(json.dumps(cfg.to_dict()))
    for key, want in expected_values(name).items():
        got = tree_value(tree, key, None)
        assert got == (list(want) if isinstance(want, tuple) else want), (key, got, want)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_trains_one_epoch(name, tmp_path, tmp_path_factory):
    p = load_preset(name)
    dataset = p.dataset or "meld"
    path, features = store_for(dataset, tmp_path_factory.getbasetemp())
    shrink = {f"head.{k}": v for k, v in small_overrides(p.head).items() if k != "lr"}
    over = {**shrink, "train.epochs": "1"}
    res = train_run(RunRequest(head=p.head, store=path, dataset=dataset, features=features, preset=name,
                               overrides=over, device="cpu", out=str(tmp_path), name="run"))
    config = json.loads((res.run_dir / "config.json").read_text())
    assert config["preset"] == p.ref and config["train"]["epochs"] == 1
    for key, want in expected_values(name).items():
        if key in over:
            continue
        got = tree_value(config, key, None)
        assert got == (list(want) if isinstance(want, tuple) else want), (key, got, want)
    assert set(res.metrics) == {"train", "dev", "test"}
