"""`merc-heads`: train context/fusion heads on cached features, evaluate and predict from saved runs.

    merc-heads train --head mister-e --store cache.zarr --dataset meld --features minilm,egemaps
    merc-heads train --head ada2i --store cache.zarr --dataset iemocap --features t=minilm,a=egemaps,v=clip --set modulation=false
    merc-heads eval runs/<run> --split test
    merc-heads predict runs/<run> --out predictions.csv
    merc-heads list

Imports stay inside the commands: nothing heavier than typer loads before a command runs, and no
encoder, transformers or media library loads at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Train context, fusion and mixture-of-experts heads on features cached by merc-extract.")


def _console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)  # no hard line breaks inside paths and commands to copy


def _fail(exc: Exception) -> None:
    from rich.markup import escape

    _console().print(f"[bold red]error:[/] {escape(str(exc))}")
    raise typer.Exit(2)


def _user_errors() -> tuple[type[Exception], ...]:
    from merc.data_manifests.errors import MercError

    return (MercError,)


def _parse_sets(items: list[str] | None) -> dict[str, str]:
    """`--set key=value` (repeatable; `--set a=1,b=2` is not split because values may hold commas)."""
    from merc.heads.data import HeadsError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise HeadsError(f"--set {item!r} is not key=value", fix="write it as --set key=value, e.g. --set lr=3e-4")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = value.strip()
    return out


# ---------------------------------------------------------------------------------------------------

@app.command()
def train(
    head: Annotated[str, typer.Option(help="Head name (see `merc-heads list`).")],
    store: Annotated[Path, typer.Option(help="Zarr feature store written by merc-extract.")],
    dataset: Annotated[str, typer.Option(help="Dataset name inside the store (meld, iemocap, mosi, mosei, ...).")],
    features: Annotated[str, typer.Option(help="Feature sets: 'minilm,egemaps' (roles from their modality) or 't=minilm,a=egemaps,v=clip'.")],
    task: Annotated[str | None, typer.Option(help="Label space(s) to predict, comma-separated, first = primary; 'all' for every one [default: the dataset's first].")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a head option, optimiser key (lr, weight_decay, optimizer, scheduler, grad_clip...) or trainer key (patience, monitor, eval_batch_size, max_frames). Repeatable.")] = None,
    seed: Annotated[int, typer.Option(help="Seed: a CPU run with the same seed repeats exactly.")] = 0,
    precision: Annotated[str, typer.Option(help="auto (bf16 where the hardware runs it natively), fp32, bf16, fp16 (CUDA only).")] = "auto",
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs per training stage [default: the head's, else 50].")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Dialogues per batch [default: the head's, else 16].")] = None,
    out: Annotated[Path, typer.Option(help="Folder that receives the run directory.")] = Path("runs"),
    device: Annotated[str, typer.Option(help="auto (cuda if available), cpu, cuda, cuda:1 ...")] = "auto",
    name: Annotated[str | None, typer.Option(help="Run directory name [default: head-dataset-features-seed-time].")] = None,
) -> None:
    """Train a head; the best-dev checkpoint, metrics, predictions and log go to a new run directory."""
    try:
        from merc.heads.runs import RunRequest, train_run

        req = RunRequest(head=head, store=str(store), dataset=dataset, features=features, tasks=task,
                         overrides=_parse_sets(set_), seed=seed, precision=precision, epochs=epochs,
                         batch_size=batch_size, out=str(out), device=device, name=name)
        console = _console()
        with _Progress(console) as progress:
            result = train_run(req, callbacks=[progress])
    except _user_errors() as e:
        _fail(e)
        return
    _print_summary(console, result)


class _Progress:
    """A rich progress bar over each epoch's batches, and one line per finished epoch (a trainer Callback)."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[loss]}"), console=console,
                                 transient=True)
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def on_stage_start(self, stage: str, epochs: int) -> None:
        if stage != "main":
            self.console.print(f"[bold]stage {stage}[/]")

    def on_epoch_start(self, stage: str, epoch: int, n_batches: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"epoch {epoch + 1}", total=n_batches, loss="")

    def on_step(self, loss: float) -> None:
        self.progress.update(self.task, advance=1, loss=f"loss {loss:.4f}")

    def on_epoch_end(self, record: dict) -> None:
        dev = "  ".join(f"dev {k[4:]} {v:.4f}" for k, v in record.items()
                        if k.startswith("dev_") and k[4:] in ("loss", "weighted_f1", "accuracy", "mae", "acc2_has0",
                                                             "avg_weighted_f1"))
        mark = " [green]*[/]" if record.get("best") else ""
        self.console.print(f"epoch {record['epoch'] + 1:>3}  train loss {record.get('train_loss', float('nan')):.4f}  "
                           f"{dev}  ({record['seconds']:.1f}s){mark}")


_SUMMARY_KEYS = {"categorical": ("weighted_f1", "accuracy", "macro_f1"),
                 "regression": ("mae", "pearson", "acc2_has0", "acc2_non0", "acc7"),
                 "multilabel": ("avg_weighted_f1", "avg_accuracy")}


def _summary_line(task_metrics: dict, kinds: dict[str, str]) -> str:
    parts = []
    for task, m in task_metrics.items():
        nums = " ".join(f"{k} {m[k]:.4f}" for k in _SUMMARY_KEYS[kinds[task]] if k in m)
        parts.append(f"{task}: {nums}")
    return "; ".join(parts)


def _print_summary(console, result) -> None:
    fit = result.fit
    kinds = {t: _kind_of(m) for t, m in next(iter(result.metrics.values())).items()}
    last_stage = list(fit.best)[-1]
    best = fit.best[last_stage]
    split = "test" if "test" in result.metrics else list(result.metrics)[-1]
    chosen = (f"best dev {fit.monitor} {best['value']:.4f} at epoch {best['epoch'] + 1}"
              if best["value"] is not None else "no dev split: last epoch kept")
    console.print(f"[bold]{split}[/] {_summary_line(result.metrics[split], kinds)}  ({chosen}, {fit.precision}, "
                  f"{fit.seconds:.1f}s)  run: {result.run_dir}")


def _kind_of(m: dict) -> str:
    if "mae" in m:
        return "regression"
    if "avg_weighted_f1" in m:
        return "multilabel"
    return "categorical"


# ---------------------------------------------------------------------------------------------------

@app.command("eval")
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run directory written by merc-heads train.")],
    split: Annotated[str, typer.Option(help="train, dev or test.")] = "test",
    store: Annotated[Path | None, typer.Option(help="Store to read [default: the one recorded in the run].")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Reload a run's best checkpoint and recompute a split's metrics (compared with the recorded ones)."""
    try:
        from merc.heads.runs import evaluate_run

        metrics, recorded = evaluate_run(run, split, str(store) if store else None, device)
    except _user_errors() as e:
        _fail(e)
        return
    console = _console()
    if json_out:
        import json

        typer.echo(json.dumps(metrics, indent=2))
        return
    kinds = {t: _kind_of(m) for t, m in metrics.items()}
    console.print(f"[bold]{split}[/] {_summary_line(metrics, kinds)}")
    for task, m in metrics.items():
        if kinds[task] == "categorical":
            per = "  ".join(f"{c} {v['f1']:.3f}" for c, v in m["per_class"].items())
            console.print(f"  {task} F1 per class: {per}")
        elif kinds[task] == "multilabel":
            per = "  ".join(f"{c} {v['weighted_f1']:.3f}" for c, v in m["per_class"].items())
            console.print(f"  {task} weighted F1 per emotion (present/absent): {per}")
    if recorded is None:
        console.print("no recorded metrics for this split in metrics.json")
    elif _same(metrics, recorded):
        console.print(f"reproduces the recorded {split} metrics exactly")
    else:
        console.print(f"[yellow]differs from the recorded {split} metrics[/] (another machine, device or precision?)")


def _same(a, b) -> bool:
    """Deep equality where NaN equals NaN (JSON round trip of the recorded metrics)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return a == b


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run directory written by merc-heads train.")],
    out: Annotated[Path, typer.Option(help="CSV to write: utterance_id, split, task, gold, pred, probabilities.")],
    split: Annotated[str, typer.Option(help="train, dev, test or all.")] = "all",
    store: Annotated[Path | None, typer.Option(help="Store to read [default: the one recorded in the run].")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
) -> None:
    """Write a run's predictions (best checkpoint) for a split, or every split, to a CSV."""
    try:
        from merc.heads.runs import predict_run

        n = predict_run(run, out, split, str(store) if store else None, device)
    except _user_errors() as e:
        _fail(e)
        return
    _console().print(f"wrote {n} predictions to {out}")


@app.command("list")
def list_heads() -> None:
    """Heads, what they need (feature levels, modality roles, context) and their options with defaults."""
    import dataclasses

    from rich.markup import escape

    from merc.heads.registry import available_heads, head_class

    console = _console()
    for name in available_heads():
        try:
            cls = head_class(name)
        except (ImportError, KeyError) as e:
            console.print(f"[bold]{name}[/]  [dim]not available here ({escape(str(e))})[/]\n")
            continue
        required = ",".join(cls.required_roles) or "none"
        optional = ",".join(r for r in cls.optional_roles if r not in cls.required_roles) or "none"
        context = "dialogue context" if cls.uses_context else "utterance only"
        console.print(f"[bold]{name}[/]  {escape(cls.description)}")
        console.print(f"  needs: levels {'+'.join(cls.levels)}; roles required {required}, optional {optional}; "
                      f"{context}")
        if dataclasses.is_dataclass(cls.config_cls):
            opts = " ".join(f"{f.name}={_default(f)}" for f in dataclasses.fields(cls.config_cls))
            console.print(f"  options: {escape(opts)}")
        console.print()
    console.print("Roles: t = text, a = audio, v = video. `--features minilm,egemaps` gives each set the role of its "
                  "recorded modality; `--features t=minilm,a=egemaps` names them.\n"
                  "Also settable with --set: optimiser lr, weight_decay, optimizer (adamw|adam), betas, eps, "
                  "grad_clip, scheduler (plateau|none); trainer patience, monitor, eval_batch_size, max_frames, "
                  "normalize (zscore = standardise with train-split statistics, the default | none = raw values).")


def _default(f) -> str:
    import dataclasses

    if f.default is not dataclasses.MISSING:
        return str(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return str(f.default_factory())  # type: ignore[misc]
    return "?"


def main() -> None:
    app()


if __name__ == "__main__":
    main()
