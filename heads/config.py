"""One typed config tree per run: `head.*`, `optim.*`, `train.*`, `data.*`, one parser, one validator.

    head.*   the head's own config dataclass (heads/models/*.py), e.g. head.rank, head.parity
    optim.*  OptimConfig: name, lr, weight_decay, betas, eps, grad_clip, scheduler, plateau_factor, ...
    train.*  TrainSettings: epochs, batch_size, batch_unit, patience, monitor, precision, eval_batch_size, seed, device
    data.*   DataConfig: store, dataset, features, tasks, normalize, max_frames (per role: data.max_frames.a=300)

Every value is parsed from the type of its dataclass field (int, float, bool, str, Literal choices, Optional,
tuples, role mappings), so a `--set optim.lr=1e-5`, a preset's YAML value and a config.json value go through
the same code. Each default lives in one place: the dataclass field here (or in the head's config), overridden
by the head class's `defaults` declaration (the paper's optimiser and schedule, each with its source).

Layers, later ones win (heads/runs.py builds them): dataclass defaults < head class defaults < preset
(heads/presets/) < `--config` file < explicit command-line options (--epochs, --seed ...) < `--set`.

Nothing here imports torch: `merc-heads list --presets` and argument errors stay instant.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin

NAMESPACES = ("head", "optim", "train", "data")
ROLES = ("t", "a", "v")
# Fields the head configs carried before the config tree (head_config.json of older runs): they belong to optim.*
LEGACY_HEAD_FIELDS = ("lr", "weight_decay", "grad_clip")
# command-line flags that set a tree key (how a value's origin is shown in messages)
FLAGS = {"train.epochs": "--epochs", "train.batch_size": "--batch-size", "train.seed": "--seed",
         "train.precision": "--precision", "train.device": "--device", "data.store": "--store",
         "data.dataset": "--dataset", "data.features": "--features", "data.tasks": "--task"}
# bare `--set` keys of earlier versions whose name differs from their field
LEGACY_ALIASES = {"optimizer": "optim.name"}


@dataclass
class OptimConfig:
    name: Literal["adamw", "adam"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = None  # max gradient L2 norm; none or <= 0: no clipping
    scheduler: Literal["none", "plateau"] = "none"  # plateau: ReduceLROnPlateau stepped on the dev loss
    plateau_factor: float = 0.1
    plateau_patience: int = 10


@dataclass
class TrainSettings:
    epochs: int = 50  # per stage
    batch_size: int = 16  # dialogues, or utterances with batch_unit=utterance
    batch_unit: Literal["dialogue", "utterance"] = "dialogue"  # a head's default follows its uses_context
    patience: int = 10  # epochs without dev improvement before a stage stops
    monitor: str | None = None  # dev metric of the primary task (or "loss"); None = the task kind's primary metric
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    eval_batch_size: int = 32  # dialogues per evaluation batch
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N


def _max_frames_default() -> dict[str, int | None]:
    return dict.fromkeys(ROLES, 64)


@dataclass
class DataConfig:
    store: str = ""
    dataset: str = ""
    features: str | dict[str, str] = ""  # "minilm,egemaps", "t=minilm,a=egemaps" or {role: feature set}
    tasks: tuple[str, ...] | None = None  # label spaces, first = primary; None = the head's or the dataset's default
    normalize: Literal["zscore", "none"] = "zscore"  # zscore: standardise with the train split's mean and std
    max_frames: dict[str, int | None] = field(default_factory=_max_frames_default)  # per role; 0 or none = all


SECTIONS: dict[str, type] = {"optim": OptimConfig, "train": TrainSettings, "data": DataConfig}


@dataclass
class RunConfig:
    """The resolved tree of one run (what config.json holds and `--config` reads back)."""

    head_name: str
    head: Any  # the head's config dataclass
    optim: OptimConfig
    train: TrainSettings
    data: DataConfig
    preset: str | None = None  # name@version of the preset applied, None = none
    sources: dict[str, str] = field(default_factory=dict)  # dotted key -> where a non-default value came from

    def to_dict(self) -> dict[str, Any]:
        head = {"name": self.head_name, **_asdict(self.head)}
        return {"head": head, "optim": _asdict(self.optim), "train": _asdict(self.train), "data": _asdict(self.data)}

    def optim_settings(self) -> dict[str, Any]:
        """The optimiser section as the trainer takes it."""
        return _asdict(self.optim)


def config_error(problem: str, fix: str = "") -> Exception:
    """A HeadsError (imported on demand: heads/data.py imports torch, and this module must not)."""
    from .data import HeadsError

    return HeadsError(problem, fix=fix)


def _asdict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


# ---------------------------------------------------------------------------------------------------
# the parser: a value (a command-line string, or a YAML/JSON value) -> the type of its field
# ---------------------------------------------------------------------------------------------------

_NONE = ("none", "null", "~", "")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def parse_value(raw: Any, typ: Any) -> Any:
    """`raw` as a value of type `typ`; ValueError when it is not one (describe(typ) says what would be)."""
    origin, args = get_origin(typ), get_args(typ)
    if typ is Any:
        return raw
    if origin in (Union, types.UnionType):
        if type(None) in args and (raw is None or (isinstance(raw, str) and raw.strip().lower() in _NONE)):
            return None
        for member in (a for a in args if a is not type(None)):
            try:
                return parse_value(raw, member)
            except ValueError:
                continue
        raise ValueError(describe(typ))
    if origin is Literal:
        key = raw.strip().lower() if isinstance(raw, str) else raw
        for choice in args:
            if key == choice or (isinstance(choice, str) and isinstance(key, str) and key == choice.lower()):
                return choice
        raise ValueError(describe(typ))
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE + _FALSE:
            return raw.strip().lower() in _TRUE
        raise ValueError(describe(typ))
    if typ is int:
        if isinstance(raw, bool):
            raise ValueError(describe(typ))
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and math.isfinite(raw) and raw == int(raw):
            return int(raw)
        if isinstance(raw, str):
            try:
                return int(raw.strip())
            except ValueError:
                pass
        raise ValueError(describe(typ))
    if typ is float:
        if isinstance(raw, bool):
            raise ValueError(describe(typ))
        if isinstance(raw, (int, float)):
            return float(raw)
        if isinstance(raw, str):
            try:
                return float(raw.strip())
            except ValueError:
                pass
        raise ValueError(describe(typ))
    if typ is str:
        if isinstance(raw, str):
            return raw.strip()
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return str(raw)
        raise ValueError(describe(typ))
    if origin in (tuple, list):
        items = [p.strip() for p in raw.split(",") if p.strip()] if isinstance(raw, str) else raw
        if not isinstance(items, (list, tuple)):
            raise ValueError(describe(typ))
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ValueError(describe(typ))
            return tuple(parse_value(v, t) for v, t in zip(items, args, strict=True))
        item_type = args[0] if args else Any
        out = [parse_value(v, item_type) for v in items]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        key_type, value_type = args or (str, Any)
        if isinstance(raw, str):
            pairs = [p.split("=", 1) for p in raw.split(",") if p.strip()]
            if not all(len(p) == 2 for p in pairs):
                raise ValueError(describe(typ))
            raw = {k.strip(): v for k, v in pairs}
        if not isinstance(raw, dict):
            raise ValueError(describe(typ))
        return {parse_value(k, key_type): parse_value(v, value_type) for k, v in raw.items()}
    raise TypeError(f"config fields of type {typ!r} are not supported")


def describe(typ: Any) -> str:
    """What a value of `typ` looks like, in words (for error messages)."""
    origin, args = get_origin(typ), get_args(typ)
    if origin in (Union, types.UnionType):
        words = [describe(a) for a in args if a is not type(None)]
        return " or ".join(words + (["none"] if type(None) in args else []))
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"{len(args)} comma-separated {_plural(args[0])}"
        return f"comma-separated {_plural(args[0] if args else str)}"
    if origin is dict:
        return f"role=value pairs ({describe(args[1]) if args else 'values'} each)"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}.get(typ, str(typ))


def _plural(typ: Any) -> str:
    return {int: "whole numbers", float: "numbers", str: "names"}.get(typ, describe(typ))


def type_hints(cls: type) -> dict[str, Any]:
    """Field name -> type of a config dataclass (string annotations resolved)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


# ---------------------------------------------------------------------------------------------------
# the validator: ranges of numbers (types and choices are the parser's job)
# ---------------------------------------------------------------------------------------------------

def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _whole(v: Any, low: int | None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and (low is None or v >= low)


CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "optim.lr": (lambda v: _finite(v) and v > 0, "a finite number > 0, e.g. --set optim.lr=3e-4"),
    "optim.weight_decay": (lambda v: _finite(v) and v >= 0, "a finite number >= 0 (0 = no weight decay)"),
    "optim.eps": (lambda v: _finite(v) and v > 0, "a finite number > 0, e.g. --set optim.eps=1e-8"),
    "optim.betas": (lambda v: len(v) == 2 and all(_finite(b) and 0 <= b < 1 for b in v),
                    "two numbers in [0, 1), e.g. --set optim.betas=0.9,0.999"),
    "optim.grad_clip": (lambda v: v is None or not math.isnan(v),
                        "a number (<= 0 or none = no clipping), e.g. --set optim.grad_clip=1.0"),
    "optim.plateau_factor": (lambda v: _finite(v) and 0 < v < 1, "a number in (0, 1), e.g. --set optim.plateau_factor=0.5"),
    "optim.plateau_patience": (lambda v: _whole(v, 0), "a whole number >= 0"),
    "train.epochs": (lambda v: _whole(v, 1), "a whole number >= 1 (per stage)"),
    "train.batch_size": (lambda v: _whole(v, 1), "a whole number >= 1 (dialogues, or utterances with "
                                                 "train.batch_unit=utterance)"),
    "train.patience": (lambda v: _whole(v, 1), "a whole number >= 1 (epochs without dev improvement before a "
                                               "stage stops)"),
    "train.eval_batch_size": (lambda v: _whole(v, 1), "a whole number >= 1"),
    "train.seed": (lambda v: _whole(v, None), "a whole number"),
    "data.max_frames": (lambda v: all(x is None or _whole(x, 0) for x in v.values()),
                        "a whole number >= 0 per role (0 or none = every frame), e.g. --set data.max_frames.a=300"),
}


def problems(values: dict[str, Any], origins: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(what was given, what is valid) for every out-of-range value among dotted keys -> values."""
    out = []
    for key, value in values.items():
        check = CHECKS.get(key)
        if check is None:
            continue
        try:
            ok = check[0](value)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            out.append((show_origin(key, value, origins), f"{label(key, origins)} must be {check[1]}"))
    return out


def show_origin(key: str, value: Any, origins: dict[str, str] | None = None) -> str:
    """How a value was given: `--set lr=nan` as typed, `--epochs 0`, or `--set optim.lr=nan` by default."""
    if origins and key in origins:
        return origins[key]
    if key in FLAGS and key != "data.tasks":
        return f"{FLAGS[key]} {show(value)}"
    return f"--set {key}={show(value)}"


def label(key: str, origins: dict[str, str] | None = None) -> str:
    """The name a message uses for a key: its flag when the value came from one, else the dotted key."""
    origin = (origins or {}).get(key, "")
    if key in FLAGS and (origin.startswith(FLAGS[key] + " ") or not origins):
        return FLAGS[key]
    return key


def show(value: Any) -> str:
    """A value as a user types it: 0.9,0.999 for a tuple, nan for a float NaN, none for None."""
    if value is None:
        return "none"
    if isinstance(value, (tuple, list)):
        return ",".join(show(v) for v in value)
    if isinstance(value, dict):
        return ",".join(f"{k}={show(v)}" for k, v in value.items())
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def check_settings(found: list[tuple[str, str]]) -> None:
    """One error listing every invalid value (given, valid) and what each accepts."""
    seen, unique = set(), []
    for given, valid in found:
        if given not in seen:
            seen.add(given)
            unique.append((given, valid))
    if unique:
        raise config_error(f"invalid training setting{'s' if len(unique) > 1 else ''}: "
                         f"{', '.join(g for g, _ in unique)}", fix="; ".join(v for _, v in unique))


# ---------------------------------------------------------------------------------------------------
# the schema of one head's tree, and resolving layers of settings into a RunConfig
# ---------------------------------------------------------------------------------------------------

@dataclass
class Setting:
    """One value of one layer: a dotted (or bare, legacy) key, the raw value, and how it was given."""

    key: str
    value: Any
    origin: str  # e.g. "--set lr=1e-4", "--epochs 3", "preset ada2i/meld@1", "config runs/x/config.json"


class Schema:
    """The keys of one head's tree and their types."""

    def __init__(self, head_name: str, head_config_cls: type):
        self.head_name = head_name
        self.head_cls = head_config_cls
        self.types: dict[str, dict[str, Any]] = {
            "head": dict(type_hints(head_config_cls)),
            **{ns: type_hints(cls) for ns, cls in SECTIONS.items()}}

    def keys(self, ns: str) -> list[str]:
        return list(self.types[ns])

    def canonical(self, key: str) -> tuple[str, str | None]:
        """(ns.field, sub-key or None) of a --set key; bare keys of earlier versions when unambiguous."""
        key = key.strip().replace("-", "_")
        if key in LEGACY_ALIASES:
            return LEGACY_ALIASES[key], None
        parts = key.split(".")
        if len(parts) == 1:
            homes = [ns for ns in NAMESPACES if key in self.types[ns]]
            if len(homes) == 1:
                return f"{homes[0]}.{key}", None
            if len(homes) > 1:
                raise config_error(f"--set {key} is ambiguous: it is {' and '.join(f'{ns}.{key}' for ns in homes)}",
                                 fix=f"name the namespace, e.g. --set {homes[0]}.{key}=...")
            raise config_error(f"head {self.head_name!r} has no option {key!r}", fix=self.all_keys_hint())
        ns, name, sub = parts[0], parts[1], ".".join(parts[2:]) or None
        if ns not in NAMESPACES:
            raise config_error(f"unknown setting {key!r}: no namespace {ns!r}",
                             fix=f"use one of {', '.join(f'{n}.<key>' for n in NAMESPACES)}; " + self.all_keys_hint())
        if ns == "head" and name in LEGACY_HEAD_FIELDS and name not in self.types["head"]:
            raise config_error(f"head.{name} is an optimiser setting", fix=f"use --set optim.{name}=...")
        if name not in self.types[ns]:
            what = f"head {self.head_name!r} has no option {name!r}" if ns == "head" else f"{ns} has no key {name!r}"
            raise config_error(what, fix=f"{ns} keys: {', '.join(self.keys(ns)) or 'none'} (merc-heads list)")
        if sub is not None:
            if get_origin(self.types[ns][name]) is not dict:
                raise config_error(f"{ns}.{name} has no sub-keys ({key!r})", fix=f"use --set {ns}.{name}=<value>")
            if ns == "data" and name == "max_frames" and sub not in ROLES:
                raise config_error(f"unknown role {sub!r} in {key!r}",
                                 fix=f"use one of {', '.join(f'data.max_frames.{r}' for r in ROLES)}")
        return f"{ns}.{name}", sub

    def all_keys_hint(self) -> str:
        return "; ".join(f"{ns}.*: {', '.join(self.keys(ns)) or 'none'}" for ns in NAMESPACES) + \
            " (merc-heads list shows the head's options)"

    def type_of(self, dotted: str) -> Any:
        ns, name = dotted.split(".", 1)
        return self.types[ns][name]


def resolve(head_name: str, head_config_cls: type, layers: Iterable[Setting], *,
            preset: str | None = None) -> RunConfig:
    """Apply settings in order (later wins) over the dataclass defaults; parse each with its field's type and
    check every number. Unknown keys, values of the wrong type and numbers out of range are HeadsErrors that
    list what is valid, raised before anything is loaded."""
    schema = Schema(head_name, head_config_cls)
    values: dict[str, Any] = {f"head.{k}": v for k, v in _asdict(head_config_cls()).items()}
    for ns, cls in SECTIONS.items():
        values.update({f"{ns}.{k}": v for k, v in _asdict(cls()).items()})
    origins: dict[str, str] = {}
    bad: list[tuple[str, str]] = []
    for s in layers:
        key, sub = schema.canonical(s.key)
        typ = schema.type_of(key)
        try:
            if sub is not None:  # data.max_frames.a=300: one entry of a mapping
                value = {**values[key], sub: parse_value(s.value, get_args(typ)[1])}
            elif get_origin(typ) is dict and not isinstance(s.value, dict) and not (
                    isinstance(s.value, str) and "=" in s.value):
                value = dict.fromkeys(values[key], parse_value(s.value, get_args(typ)[1]))  # one value, every role
            else:
                value = parse_value(s.value, typ)
        except ValueError:
            valid = CHECKS.get(key, (None, describe(typ)))[1]
            bad.append((f"{s.origin} is not {describe(get_args(typ)[1] if sub or get_origin(typ) is dict else typ)}",
                        f"{key if sub is None else key + '.' + sub} must be {valid}"))
            continue
        values[key] = value
        origins[key] = s.origin
    check_settings(bad + problems(values, origins))
    sections = {ns: {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(ns + ".")} for ns in NAMESPACES}
    head_cfg = head_config_cls(**sections["head"])
    cfg = RunConfig(head_name, head_cfg, OptimConfig(**sections["optim"]), TrainSettings(**sections["train"]),
                    DataConfig(**sections["data"]), preset=preset, sources=origins)
    return cfg


def tree_settings(tree: dict[str, Any], origin: str) -> tuple[str | None, list[Setting]]:
    """(head name, settings) of a config tree read from a file (config.json or a YAML of the same shape)."""
    head = tree.get("head")
    if isinstance(head, str):
        raise config_error(f"{origin} is a config.json of an older merc-heads (no config tree)",
                         fix="train the run again, or write the tree by hand: head/optim/train/data sections")
    out: list[Setting] = []
    name = None
    for ns in NAMESPACES:
        section = tree.get(ns) or {}
        if not isinstance(section, dict):
            raise config_error(f"{origin}: {ns} must be a mapping of keys to values", fix="see merc-heads train --help")
        for k, v in section.items():
            if ns == "head" and k == "name":
                name = str(v)
                continue
            out.append(Setting(f"{ns}.{k}", v, f"{origin}: {ns}.{k}={show(v)}"))
    return name, out


# ---------------------------------------------------------------------------------------------------
# what a head class declares: its paper's optimiser and schedule
# ---------------------------------------------------------------------------------------------------

def head_defaults(head_cls: type) -> dict[str, object]:
    """The head class's declared defaults (dotted key -> value); the batch unit follows `uses_context` unless
    declared."""
    declared = getattr(head_cls, "defaults", {})
    unit = "dialogue" if getattr(head_cls, "uses_context", True) else "utterance"
    return {"train.batch_unit": unit, **declared}


def default_settings(head_cls: type) -> list[Setting]:
    """The head class's declared defaults as the first layer of a run's settings (origin "<head> default")."""
    name = getattr(head_cls, "name", "head")
    return [Setting(k, v, f"{name} default: {k}={show(v)}") for k, v in head_defaults(head_cls).items()]
