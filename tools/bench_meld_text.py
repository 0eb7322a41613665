"""Real-data table: every text-capable head on the real MELD transcripts with the embedded `minilm` features,
mean ± std over seeds, each head's variant selected on dev, next to a logistic-regression floor on the same
cached vectors.

    .venv/bin/python tools/bench_meld_text.py [--root ../shared/data/meld-text] [--work /tmp/meld-text-bench]
                                              [--seeds 1,2,3] [--heads mlp,dialogue-gru,ada2i,summer]

1. `merc-extract --dataset meld --root <root> --modalities text --encoder minilm` into <work>/cache.zarr (once);
2. the floor: scikit-learn LogisticRegression on the train split's standardised vectors, C chosen on dev;
3. every (head, variant) x seed: `merc-heads train` with the head's preset for MELD where it has one, plus the
   variant's `--set`s; the run directories are kept, so a rerun only trains what is missing;
4. a markdown table: dev and test weighted F1 (mean ± std, n), test minus the floor, and which variant of each
   head is selected on dev (the mean dev weighted F1; test is never used to choose).

The MELD CSVs are not part of the repository (../shared/data/meld-text holds them on the project's machines);
nothing here is a test. MiSTER-E and MMoLRE need audio (roles t and a), so they cannot run on transcripts alone.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent
# head -> [(variant name, extra merc-heads arguments)]; the first line of each head is its preset/default
VARIANTS: dict[str, list[tuple[str, list[str]]]] = {
    "mlp": [("default", [])],
    "dialogue-gru": [
        ("default (hidden 256, dropout 0.3)", ["--preset", "none"]),
        ("preset dialogue-gru/meld", ["--preset", "dialogue-gru/meld"]),
    ],
    "ada2i": [
        ("preset ada2i/meld", []),
        # one modality: AMW's cosine logits (no scale, spec 4.2) are bounded by +-1, too flat for 7 classes
        ("preset ada2i/meld, head.amw=false", ["--set", "head.amw=false"]),
    ],
    "summer": [
        ("preset summer/meld, d_model 256", ["--set", "head.d_model=256"]),
        # SDT's MELD lr (5e-6) leaves SUMMER at the majority class on these features; its IEMOCAP lr
        ("preset summer/meld, d_model 256, optim.lr=1e-4", ["--set", "head.d_model=256", "--set", "optim.lr=1e-4"]),
    ],
}


def extract(root: Path, store: Path) -> None:
    if (store / "zarr.json").exists():
        return
    cmd = [str(BIN / "merc-extract"), "--dataset", "meld", "--root", str(root), "--modalities", "text",
           "--encoder", "minilm", "--store", str(store)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def floor(store: Path) -> dict:
    """Logistic regression on the cached vectors: C selected on dev weighted F1, test reported at that C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from merc.extract.store import StoreReader

    reader = StoreReader(store)
    x = reader.load_pooled("meld", "minilm").pooled.astype(np.float32)
    cols = reader.manifest_columns("meld")
    y, split = cols["label_emotion"].astype(int), cols["split"].astype(str)
    train = split == "train"
    mean, std = x[train].mean(0), x[train].std(0)
    x = (x - mean) / np.where(std > 0, std, 1.0)
    rows = []
    for c in (0.003, 0.01, 0.03, 0.1, 0.3, 1.0):
        model = LogisticRegression(C=c, max_iter=3000).fit(x[train], y[train])
        dev = f1_score(y[split == "dev"], model.predict(x[split == "dev"]), average="weighted")
        test = f1_score(y[split == "test"], model.predict(x[split == "test"]), average="weighted")
        rows.append({"C": c, "dev": float(dev), "test": float(test)})
    best = max(rows, key=lambda r: r["dev"])
    return {"grid": rows, "chosen": best}


def train(store: Path, runs: Path, head: str, variant: str, extra: list[str], seed: int) -> dict:
    name = f"{head}-{slug(variant)}-s{seed}"
    metrics = runs / name / "metrics.json"
    if not metrics.exists():
        cmd = [str(BIN / "merc-heads"), "train", "--head", head, "--store", str(store), "--dataset", "meld",
               "--features", "t=minilm", "--seed", str(seed), "--out", str(runs), "--name", name, *extra]
        print("$", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if res.returncode != 0:
            raise SystemExit(f"{name} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
        print(f"  {res.stdout.strip().splitlines()[-1]}  [{time.perf_counter() - t0:.0f} s]", flush=True)
    m = json.loads(metrics.read_text())
    task = m["primary_task"]
    config = json.loads((runs / name / "config.json").read_text())
    return {"dev": m["splits"]["dev"][task]["weighted_f1"], "test": m["splits"]["test"][task]["weighted_f1"],
            "preset": config.get("preset"), "epoch": next(iter(m["best"].values()))["epoch"] + 1}


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def fmt(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/meld-text")
    ap.add_argument("--work", type=Path, default=Path("/tmp/meld-text-bench"))
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--heads", default=",".join(VARIANTS))
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    store = args.work / "cache.zarr"
    extract(args.root, store)
    base = floor(store)
    print(f"floor: logistic regression, C={base['chosen']['C']} (chosen on dev): dev {base['chosen']['dev']:.4f}, "
          f"test {base['chosen']['test']:.4f}", flush=True)
    rows = []
    for head in args.heads.split(","):
        results = {}
        for variant, extra in VARIANTS[head]:
            results[variant] = [train(store, args.work / "runs", head, variant, extra, s) for s in seeds]
        chosen = max(results, key=lambda v: np.mean([r["dev"] for r in results[v]]))
        for variant, rs in results.items():
            rows.append((head, variant, variant == chosen, rs))
    print(f"\nMELD transcripts, minilm features, {len(seeds)} seeds ({args.seeds}); weighted F1 of the 7 emotions; "
          "variants chosen on dev (mean dev W-F1), never on test.\n")
    print("| head | variant | preset (config.json) | chosen on dev | dev W-F1 | test W-F1 | test − floor | best epochs |")
    print("|---|---|---|---|---|---|---|---|")
    f = base["chosen"]
    print(f"| logistic regression (floor) | C={f['C']} chosen on dev | - | yes | {f['dev']:.4f} | {f['test']:.4f} | 0 "
          "| - |")
    for head, variant, chosen, rs in rows:
        dev, test = [r["dev"] for r in rs], [r["test"] for r in rs]
        presets = sorted({str(r["preset"]) for r in rs})
        print(f"| {head} | {variant} | {', '.join(presets)} | {'**yes**' if chosen else 'no'} | {fmt(dev)} | {fmt(test)} | "
              f"{np.mean(test) - f['test']:+.4f} | {', '.join(str(r['epoch']) for r in rs)} |")


if __name__ == "__main__":
    main()
