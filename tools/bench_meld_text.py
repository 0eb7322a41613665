"""Real-data table: every text-capable head on the real MELD transcripts with the embedded `minilm` features,
mean ± std over 3 seeds, each head's variant selected on dev, next to a logistic-regression floor on the same
cached vectors.

    .venv/bin/python tools/bench_meld_text.py [--root ../shared/data/meld-text] [--work /tmp/meld-text-bench]
                                              [--workers 2]

1. `merc-extract --dataset meld --root <root> --modalities text --encoder minilm --store <work>/cache.zarr` (once);
2. the floor: scikit-learn LogisticRegression on the train split's standardised vectors, C chosen on dev;
3. `merc-heads sweep meld_text_heads --store <work>/cache.zarr --out <work>/sweep --workers N`: the recipe
   pipelines/recipes/meld_text_heads.yaml (each head with its MELD preset and the variants it names, 3 seeds); a
   rerun trains only what is missing;
4. `merc-heads report <work>/sweep/meld_text_heads --by head,variant --select head`, plus the floor row and each
   row's test mean minus the floor. Variants are chosen per head on the mean dev weighted F1; test is never used.

The MELD CSVs are not part of the repository (../shared/data/meld-text holds them on the project's machines);
nothing here is a test. MiSTER-E and MMoLRE need audio (roles t and a), so they cannot run on transcripts alone.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/meld-text")
    ap.add_argument("--work", type=Path, default=Path("/tmp/meld-text-bench"))
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    store = args.work / "cache.zarr"
    extract(args.root, store)
    base = floor(store)["chosen"]
    print(f"floor: logistic regression, C={base['C']} (chosen on dev): dev {base['dev']:.4f}, test {base['test']:.4f}",
          flush=True)
    sweep = [str(BIN / "merc-heads"), "sweep", "meld_text_heads", "--store", str(store), "--out",
             str(args.work / "sweep"), "--workers", str(args.workers)]
    print("$", " ".join(sweep), flush=True)
    subprocess.run(sweep, check=True, env=ENV)
    prefix = args.work / "report"
    report = [str(BIN / "merc-heads"), "report", str(args.work / "sweep" / "meld_text_heads"), "--by", "head,variant",
              "--select", "head", "--out", str(prefix)]
    print("$", " ".join(report), flush=True)
    subprocess.run(report, check=True, env=ENV, stdout=subprocess.DEVNULL)
    with open(f"{prefix}.csv") as f:
        rows = list(csv.DictReader(f))
    print("\nMELD transcripts, minilm features; weighted F1 of the 7 emotions (dev-selected checkpoint), mean ± std "
          "(ddof=1) over seeds; variants chosen per head on the mean dev weighted F1, never on test.\n")
    print("| head | variant | n | dev W-F1 | test W-F1 | chosen on dev | test − floor |")
    print("|---|---|---|---|---|---|---|")
    print(f"| logistic regression (floor) | C={base['C']} chosen on dev | 1 | {base['dev']:.4f} | {base['test']:.4f} "
          "| yes | 0 |")
    for r in rows:
        dev, test = float(r["dev_mean"]), float(r["test_mean"])
        sd = lambda v: f" ± {float(v):.4f}" if v else ""  # noqa: E731
        print(f"| {r['head']} | {r['variant']} | {r['n']} | {dev:.4f}{sd(r['dev_std'])} | {test:.4f}{sd(r['test_std'])} "
              f"| {'**yes**' if r['selected'] == 'true' else 'no'} | {test - base['test']:+.4f} |")


if __name__ == "__main__":
    main()
