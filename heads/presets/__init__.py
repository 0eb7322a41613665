"""Presets: a paper's (or its released code's) settings for one head and dataset, as plain YAML files.

    heads/presets/<head>/<name>.yaml
      name: ada2i/meld                  # <head>/<name>, as the file's path says
      version: 1                        # bumped whenever a value changes; config.json records name@version
      description: Ada2I on MELD, the paper's Table 2 column
      dataset: meld                     # the store dataset it is for (optional: dataset-agnostic presets)
      extends: ada2i/base               # optional, a name or a list: presets applied first
      values:
        head.hidden: {value: 200, source: "[paper] Ada2I Table 2 (spec 4.5)"}
        optim.lr: {value: 1.2e-4, source: "[paper] Ada2I Table 2 (spec 4.5)"}

Every value cites its source: [paper], [code] (the released code's file), or [default] (no source published;
the reason is in the text). `merc-heads train --dataset meld --head ada2i` applies `ada2i/meld` when it exists
(`--preset none` turns that off, `--preset <name>` picks another); the values are parsed by heads/config.py
like any other setting, between the head's class defaults and a `--config` file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parent
NONE = "none"


@dataclass(frozen=True)
class Preset:
    name: str  # "<head>/<name>"
    version: int
    description: str
    dataset: str | None
    values: dict[str, Any]  # dotted key -> value, the extended presets' values first
    sources: dict[str, str]  # dotted key -> source
    extends: tuple[str, ...] = ()
    path: Path = field(default=ROOT)

    @property
    def head(self) -> str:
        return self.name.split("/", 1)[0]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def preset_names(head: str | None = None) -> list[str]:
    """Every preset, `<head>/<name>`, sorted (only one head's with `head`)."""
    files = sorted(ROOT.glob(f"{head or '*'}/*.yaml"))
    return [f"{p.parent.name}/{p.stem}" for p in files]


def _error(problem: str, fix: str) -> Exception:
    from ..config import config_error

    return config_error(problem, fix)


def load_preset(name: str, _chain: tuple[str, ...] = ()) -> Preset:
    """The preset `<head>/<name>` (an `@version` suffix is checked), its `extends` applied first."""
    name, _, want = name.partition("@")
    path = ROOT / f"{name}.yaml"
    if "/" not in name or not path.is_file():
        raise _error(f"unknown preset {name!r}", fix=f"use --preset none or one of: {', '.join(preset_names())} "
                                                     "(merc-heads list --presets)")
    if name in _chain:
        raise _error(f"preset {name} extends itself ({' -> '.join([*_chain, name])})", fix=f"fix {path}")
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise _error(f"preset file {path} cannot be read ({e})", fix="fix the YAML") from None
    problem = _shape_problem(doc, name)
    if problem:
        raise _error(f"preset file {path}: {problem}", fix="see heads/presets/__init__.py for the format")
    if want and str(doc["version"]) != want:
        raise _error(f"preset {name} is at version {doc['version']}, not {want}",
                     fix=f"use --preset {name} (its values: merc-heads list --presets)")
    extends = doc.get("extends") or ()
    extends = (extends,) if isinstance(extends, str) else tuple(extends)
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for parent in extends:
        base = load_preset(parent, (*_chain, name))
        values.update(base.values)
        sources.update(base.sources)
    for key, entry in doc["values"].items():
        values[key] = entry["value"]
        sources[key] = str(entry["source"])
    return Preset(name, int(doc["version"]), str(doc["description"]).strip(), doc.get("dataset"), values, sources,
                  extends, path)


def _shape_problem(doc: Any, name: str) -> str | None:
    if not isinstance(doc, dict):
        return "not a mapping"
    missing = [k for k in ("name", "version", "description", "values") if k not in doc]
    if missing:
        return f"missing {', '.join(missing)}"
    if doc["name"] != name:
        return f"name {doc['name']!r} differs from its path ({name})"
    if not isinstance(doc["version"], int) or isinstance(doc["version"], bool) or doc["version"] < 1:
        return "version must be a whole number >= 1"
    if not isinstance(doc["values"], dict):
        return "values must map dotted keys to {value, source}"
    for key, entry in doc["values"].items():
        if not isinstance(entry, dict) or "value" not in entry or not str(entry.get("source") or "").strip():
            return f"{key}: every value needs `value` and a non-empty `source`"
    return None


def preset_for(head: str, dataset: str) -> Preset | None:
    """The preset applied by default: `<head>/<dataset>` when it exists."""
    if not dataset or "/" in dataset or not (ROOT / head / f"{dataset}.yaml").is_file():
        return None
    return load_preset(f"{head}/{dataset}")


def choose(head: str, dataset: str, wanted: str | None) -> Preset | None:
    """The preset of a run: `wanted` (a name, or "none"), else the head's preset for the dataset, if any.
    A named preset must be this head's, and for this dataset when it names one."""
    if wanted is None:
        return preset_for(head, dataset)
    if wanted.strip().lower() == NONE:
        return None
    preset = load_preset(wanted.strip())
    if preset.head != head:
        raise _error(f"preset {preset.name} is for the {preset.head} head, not {head}",
                     fix=f"use --preset none or one of: {', '.join(preset_names(head)) or '(none for this head)'}")
    if preset.dataset and dataset and preset.dataset != dataset:
        raise _error(f"preset {preset.name} is for dataset {preset.dataset!r}, the run's is {dataset!r}",
                     fix=f"use --preset none or one of: {', '.join(preset_names(head))}")
    return preset
