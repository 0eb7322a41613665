"""A sweep file: a base config, variants and/or a grid, and seeds; expanded into one planned run per config tree.

    name: mister_e_ablations            # folder of the sweep's runs under --out
    head: mister-e                      # the base (every key may be overridden by a variant)
    dataset: meld
    features: t=minilm,a=egemaps
    preset: mister-e/meld               # optional: default = the head's preset for the dataset, "none" = none
    set: {train.epochs: 100}            # keys of the config tree (merc-heads list), as --set takes them
    seeds: 3                            # 3 = seeds 1, 2, 3; or a list [0, 7, 42]
    variants:                           # named variants, each a few changes to the base
      - name: full
      - name: no-supcon
        set: {head.supcon_weight: 0}
      - name: text-only
        roles: t                        # keep only these roles of the features (works with --features too)
    grid:                               # every combination, crossed with every variant
      head.focal_gamma: [0, 2, 3]

Every run's id is a hash of its resolved config tree (heads/config.py), so the same run in two sweeps, or the
same sweep run twice, is one run. Each planned run is resolved (every key and value checked) before any runs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from merc.heads.data import HeadsError

BASE_KEYS = ("head", "dataset", "features", "roles", "preset", "tasks", "set")
FILE_KEYS = ("name", "description", "store", "seeds", "variants", "grid", *BASE_KEYS)
VARIANT_KEYS = ("name", *BASE_KEYS)


@dataclass
class Variant:
    """One named change to the base (or the base itself): what merc-heads train would be given."""

    name: str
    head: str | None = None
    dataset: str | None = None
    features: str | None = None
    roles: str | None = None  # "ta": keep only these modality roles of the features (a modality ablation)
    preset: str | None = None
    tasks: str | None = None
    sets: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepSpec:
    name: str
    base: Variant
    variants: list[Variant]
    grid: dict[str, list[Any]]
    seeds: list[int]
    store: str | None = None
    description: str = ""
    path: str = "<dict>"


@dataclass
class PlannedRun:
    """One run of a sweep: its resolved config tree, id and where it came from."""

    run_id: str  # hash of the resolved tree (12 hex digits)
    variant: str  # the variant's name, with the grid point: "no-supcon[head.focal_gamma=2]"
    values: dict[str, Any]  # the variant's and grid point's settings (dotted key -> value), for the report
    seed: int
    head: str
    request: Any  # merc.heads.runs.RunRequest
    config: Any  # merc.heads.config.RunConfig
    cost: float = 1.0  # relative expected time (longest first)
    size: int = 0  # parameters of the head (breaks ties of cost: bigger first)

    @property
    def dirname(self) -> str:
        return f"{self.head}-s{self.seed}-{self.run_id}"


def _error(where: str, problem: str, fix: str) -> HeadsError:
    return HeadsError(f"{where}: {problem}", fix=fix)


def load_spec(path: str | Path | dict) -> SweepSpec:
    """Read and check a sweep file (YAML or JSON), or an already read mapping."""
    if isinstance(path, dict):
        raw, where = path, "sweep"
    else:
        p = Path(path)
        where = str(p)
        if not p.is_file():
            raise _error(where, "no such sweep file", "pass a YAML file (see pipelines/recipes/*.yaml)")
        import yaml

        try:
            raw = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise _error(where, f"cannot be read ({type(e).__name__}: {e})", "write valid YAML") from None
    if not isinstance(raw, dict):
        raise _error(where, "holds no mapping", "write keys name, head, dataset, features, set, variants, grid, seeds")
    unknown = sorted(set(raw) - set(FILE_KEYS))
    if unknown:
        raise _error(where, f"unknown key(s) {', '.join(unknown)}", f"use: {', '.join(FILE_KEYS)}")
    name = str(raw.get("name") or (Path(path).stem if not isinstance(path, dict) else "sweep"))
    base = _variant(raw, "base", where)
    variants = [_variant(v, f"variant {i + 1}", where) for i, v in enumerate(raw.get("variants") or [])]
    names = [v.name for v in variants]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _error(where, f"variant name(s) used twice: {', '.join(dupes)}", "give every variant its own name")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict) or any(not isinstance(v, list) or not v for v in grid.values()):
        raise _error(where, "grid must map config keys to non-empty lists of values",
                     "write e.g. grid: {head.rank: [8, 16, 32]}")
    return SweepSpec(name=name, base=base, variants=variants or [Variant(name="base")],
                     grid={str(k): list(v) for k, v in grid.items()}, seeds=_seeds(raw.get("seeds", 3), where),
                     store=str(raw["store"]) if raw.get("store") else None,
                     description=str(raw.get("description") or ""), path=where)


def _variant(raw: Any, what: str, where: str) -> Variant:
    if not isinstance(raw, dict):
        raise _error(where, f"{what} is not a mapping", "write each variant as {name: ..., set: {...}}")
    keys = VARIANT_KEYS if what != "base" else FILE_KEYS
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise _error(where, f"{what}: unknown key(s) {', '.join(unknown)}", f"use: {', '.join(keys)}")
    if what != "base" and not raw.get("name"):
        raise _error(where, f"{what} has no name", "give it name: <short label> (the report groups by it)")
    sets = raw.get("set") or {}
    if not isinstance(sets, dict):
        raise _error(where, f"{what}: set must be a mapping of config keys", "write set: {optim.lr: 1e-4}")
    return Variant(name=str(raw.get("name", "base")), head=_opt_str(raw.get("head")),
                   dataset=_opt_str(raw.get("dataset")), features=_features(raw.get("features")),
                   roles=_roles(raw.get("roles"), what, where), preset=_opt_str(raw.get("preset")), tasks=_features(raw.get("tasks")),
                   sets={str(k): v for k, v in sets.items()})


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


def _features(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, dict):
        return ",".join(f"{r}={fs}" for r, fs in v.items())
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    return str(v)


def _roles(raw: Any, what: str, where: str) -> str | None:
    if raw is None:
        return None
    roles = "".join(str(raw).replace(",", "").split())
    if not roles or any(r not in "tav" for r in roles) or len(set(roles)) != len(roles):
        raise _error(where, f"{what}: roles {raw!r} must be distinct letters of t, a, v", "write e.g. roles: ta")
    return roles


def _keep_roles(features: str | None, roles: str, label: str) -> str:
    """`t=minilm,a=egemaps` restricted to `roles` ("t" -> `t=minilm`)."""
    parts = [p.strip() for p in (features or "").split(",") if p.strip()]
    if not parts or any("=" not in p for p in parts):
        raise HeadsError(f"variant {label!r} keeps roles {roles}, but the features {features!r} do not name roles",
                         fix="write features as t=<text set>,a=<audio set> (in the file or with --features)")
    kept = [p for p in parts if p.split("=", 1)[0].strip() in roles]
    missing = [r for r in roles if r not in {p.split("=", 1)[0].strip() for p in parts}]
    if missing:
        raise HeadsError(f"variant {label!r} keeps roles {roles}, but the features {features!r} have no "
                         f"{', '.join(missing)}", fix="add those roles to the features, or drop the variant")
    return ",".join(kept)


def _seeds(raw: Any, where: str) -> list[int]:
    if isinstance(raw, bool) or not isinstance(raw, (int, list)):
        raise _error(where, f"seeds: {raw!r} is neither a count nor a list", "write seeds: 3 or seeds: [1, 2, 3]")
    if isinstance(raw, int):
        if raw < 1:
            raise _error(where, "seeds must be >= 1", "write seeds: 3")
        return list(range(1, raw + 1))
    if not raw or not all(isinstance(s, int) and not isinstance(s, bool) for s in raw) or len(set(raw)) != len(raw):
        raise _error(where, f"seeds: {raw!r} must be distinct integers", "write seeds: [1, 2, 3]")
    return list(raw)


def parse_seeds(text: str) -> list[int]:
    """`--seeds 1,2,3` or `--seeds 5` (= 1..5)."""
    parts = [p for p in text.split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise HeadsError(f"--seeds {text!r} is not a list of integers", fix="write --seeds 1,2,3 or --seeds 3") from None
    return _seeds(values[0] if len(values) == 1 else values, "--seeds")


def _merge(base: Variant, v: Variant, overrides: Variant) -> Variant:
    pick = lambda k: getattr(overrides, k) or getattr(v, k) or getattr(base, k)  # noqa: E731
    features, roles = pick("features"), v.roles or base.roles
    if roles:
        features = _keep_roles(features, roles, v.name)
    return Variant(name=v.name, head=pick("head"), dataset=pick("dataset"), features=features, roles=roles,
                   preset=pick("preset"), tasks=pick("tasks"), sets={**base.sets, **v.sets, **overrides.sets})


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def expand(spec: SweepSpec, *, store: str | None = None, out: str = "runs", overrides: Variant | None = None,
           seeds: list[int] | None = None) -> list[PlannedRun]:
    """Every (variant, grid point, seed) as a resolved config tree; any bad key or value fails here, naming the
    variant, before a single run starts. `overrides` (the command line's --dataset/--features/--set) win."""
    from merc.heads.runs import RunRequest, resolve_request

    overrides = overrides or Variant(name="")
    store = store or spec.store
    if store is None:
        raise HeadsError(f"{spec.path}: no store to read", fix="pass --store cache.zarr (or write store: in the file)")
    keys = list(spec.grid)
    points = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*spec.grid.values())] or [{}]
    planned: list[PlannedRun] = []
    seen: dict[str, str] = {}
    for v in spec.variants:
        merged = _merge(spec.base, v, overrides)
        for point in points:
            label = merged.name + (f"[{','.join(f'{k}={_show(x)}' for k, x in point.items())}]" if point else "")
            if merged.head is None:
                raise HeadsError(f"{spec.path}: variant {label!r} names no head", fix="write head: <name> in the "
                                 "file or the variant (merc-heads list)")
            sets = {**merged.sets, **point}
            for seed in seeds or spec.seeds:
                req = RunRequest(head=merged.head, store=store, dataset=merged.dataset, features=merged.features,
                                 tasks=merged.tasks, overrides={k: _set_value(x) for k, x in sets.items()},
                                 seed=seed, preset=merged.preset, out=out)
                try:
                    tree = resolve_request(req)
                except HeadsError as e:
                    raise HeadsError(f"{spec.path}: variant {label!r}: {e.finding.problem}", fix=e.finding.fix) from None
                run_id = config_id(tree)
                if run_id in seen:
                    raise HeadsError(f"{spec.path}: variants {seen[run_id]!r} and {label!r} resolve to the same "
                                     f"config (seed {seed})", fix="drop one of them, or make them differ")
                seen[run_id] = label
                planned.append(PlannedRun(run_id=run_id, variant=label, values=sets, seed=seed, head=merged.head,
                                          request=req, config=tree, cost=estimate_cost(tree)))
    sizes: dict[str, int] = {}
    for p in planned:  # runs of one head and schedule differ by size: the bigger start first (ties broken)
        tree = p.config.to_dict()
        key = json.dumps([p.head, tree["head"], tree["data"]], sort_keys=True, default=str)  # the seeds share it
        if key not in sizes:
            sizes[key] = parameter_count(p.config)
        p.size = sizes[key]
    return planned


def _set_value(value: Any) -> Any:
    """A YAML value as `--set` takes it: scalars as text (the tree's parser types them), lists comma-separated."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, list) and all(isinstance(x, (int, float, str)) for x in value):
        return ",".join(str(x) for x in value)  # tuples and lists of the tree: comma-separated, as --set takes them
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def config_id(tree: Any) -> str:
    """The run's identity: a hash of everything in its resolved tree that changes what it computes."""
    payload = {**tree.to_dict(), "preset": tree.preset}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# relative seconds per epoch on the same data (tools/bench_heads.py, 2-core CPU): only the order matters
HEAD_COST = {"mister-e": 8.0, "summer": 3.0, "ada2i": 3.0, "mmolre": 6.0, "dialogue-gru": 1.0, "mlp": 0.5,
             "late-fusion": 0.6}


def parameter_count(tree: Any) -> int:
    """Parameters of the run's head, built on torch's meta device (no memory, no feature read; dims from the
    store's metadata): a sweep starts the bigger of otherwise equal runs first. 0 when it cannot be built."""
    try:
        import torch

        from merc.heads import feature_cache
        from merc.heads.data import resolve_roles, resolve_tasks
        from merc.heads.registry import head_class
        from merc.heads.runs import task_names

        d = tree.data
        reader = feature_cache.reader(d.store)
        roles = resolve_roles(reader, d.dataset, d.features)
        dims = {r: int(reader.info(d.dataset, name)["dim"]) for r, name in roles.items()}
        cls = head_class(tree.head_name)
        tasks = resolve_tasks(reader.label_spaces(d.dataset), task_names(cls, tree))
        with torch.device("meta"):
            head = cls(tree.head, dims, tasks)
        return sum(p.numel() for p in head.parameters())
    except Exception:  # noqa: BLE001 - only an ordering hint: the run itself reports what is wrong
        return 0


def estimate_cost(tree: Any) -> float:
    """Expected relative time of a run, so that the longest start first (a sweep ends when its last run does)."""
    stages = 2 if tree.head_name == "summer" else 1  # SUMMER trains a teacher, then a student
    return HEAD_COST.get(tree.head_name, 2.0) * tree.train.epochs * stages


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def recipe_path(name: str) -> Path:
    """A sweep file path as given, or a packaged recipe's name (`mister_e_ablations`, with or without .yaml)."""
    path = Path(name)
    if path.exists() or path.suffix in (".yaml", ".yml", ".json") and len(path.parts) > 1:
        return path
    packaged = RECIPES / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    if packaged.exists():
        return packaged
    known = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml"))) or "none"
    raise HeadsError(f"no sweep file {name!r}", fix=f"pass a YAML path, or a packaged recipe: {known}")
