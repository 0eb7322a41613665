"""`merc-heads`: train context/fusion heads on cached features, evaluate and predict from saved runs.

    merc-heads train --head mister-e --store cache.zarr --dataset meld --features minilm,egemaps   # preset mister-e/meld
    merc-heads train --head ada2i --store cache.zarr --dataset iemocap --features t=minilm,a=egemaps,v=clip \
        --set head.modulation=false --set optim.lr=1e-4
    merc-heads train --config runs/<run>/config.json   # repeat a run from its resolved config tree
    merc-heads train --resume runs/<run>        # continue an interrupted run (Ctrl-C prints this command)
    merc-heads eval runs/<run> --split test
    merc-heads predict runs/<run> --out predictions.csv
    merc-heads report runs/ --by head,features   # mean ± std over seeds (dev, test), best row chosen on dev
    merc-heads plot runs/<run> [--split test]     # confusion matrices, curves, per-class F1, the head's figures
    merc-heads plot runs/ --against head.rank    # a metric against one swept option, mean ± std over seeds
    merc-heads list [--presets]

Imports stay inside the commands: nothing heavier than typer loads before a command runs, and no
encoder, transformers or media library loads at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from merc.data_manifests.console import TerminalBar

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Train context, fusion and mixture-of-experts heads on features cached by merc-extract.")


def _console():
    from merc.data_manifests.console import make_console

    return make_console()  # no hard line breaks inside paths and commands to copy; whole tables when piped


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
            raise HeadsError(f"--set {item!r} is not key=value",
                             fix="write it as --set namespace.key=value, e.g. --set optim.lr=3e-4")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = value.strip()
    return out


# ---------------------------------------------------------------------------------------------------

# options of `train` that a --resume takes from the run instead
_REQUEST_OPTIONS = {"head": "--head", "store": "--store", "dataset": "--dataset", "features": "--features",
                    "task": "--task", "set_": "--set", "seed": "--seed", "precision": "--precision",
                    "epochs": "--epochs", "batch_size": "--batch-size", "out": "--out", "device": "--device",
                    "name": "--name", "config": "--config", "preset": "--preset"}


@app.command()
def train(
    ctx: typer.Context,
    head: Annotated[str | None, typer.Option(help="Head name (see `merc-heads list`). Required unless --config or --resume.")] = None,
    store: Annotated[Path | None, typer.Option(help="Zarr feature store written by merc-extract (data.store).")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset name inside the store: meld, iemocap, mosi, mosei, ... (data.dataset). Picks the head's preset for it.")] = None,
    features: Annotated[str | None, typer.Option(help="Feature sets: 'minilm,egemaps' (roles from their modality) or 't=minilm,a=egemaps,v=clip' (data.features).")] = None,
    task: Annotated[str | None, typer.Option(help="Label space(s) to predict, comma-separated, first = primary; 'all' for every one; derived X_has0, X_non0, X7 of a regression space X (data.tasks) [default: the preset's, the head's, else the dataset's first].")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Set a key of the config tree: head.<option> (merc-heads list), optim.lr/weight_decay/name/betas/eps/grad_clip/scheduler/plateau_factor/plateau_patience, train.epochs/batch_size/batch_unit/patience/monitor/precision/eval_batch_size/seed/device, data.normalize/tasks/max_frames (data.max_frames.a=300). Repeatable; wins over everything else.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (train.seed): a CPU run with the same seed repeats exactly [default: 0].")] = None,
    precision: Annotated[str | None, typer.Option(help="auto (bf16 where the hardware runs it natively), fp32, bf16, fp16 (CUDA only) (train.precision) [default: auto].")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs per training stage, >= 1 (train.epochs) [default: the preset's or the head's].")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Dialogues (or utterances, for utterance-level heads) per batch, >= 1 (train.batch_size) [default: the preset's or the head's].")] = None,
    out: Annotated[Path, typer.Option(help="Folder that receives the run directory.")] = Path("runs"),
    device: Annotated[str | None, typer.Option(help="auto (cuda if available), cpu, cuda, cuda:1 ... (train.device) [default: auto].")] = None,
    name: Annotated[str | None, typer.Option(help="Run directory name [default: head-dataset-features-seed-time].")] = None,
    config: Annotated[Path | None, typer.Option(help="A config tree to start from: a run's config.json (repeats that run) or a YAML/JSON file with head/optim/train/data sections. Options and --set win over it.")] = None,
    preset: Annotated[str | None, typer.Option(help="Preset to apply (merc-heads list --presets), or 'none' [default: <head>/<dataset> when it exists].")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue an interrupted run directory (runs/<run>) from its last completed epoch, with the config it was started with; it ends with the weights an uninterrupted run would have.")] = None,
) -> None:
    """Train a head; the best-dev checkpoint, metrics, predictions and log go to a new run directory.

    Values come from, later ones winning: the config dataclasses' defaults, the head's declared defaults (its
    paper's optimiser and schedule), the preset, the --config file, the options above, then --set.
    Ctrl-C stops cleanly (exit 130) and prints the command that resumes the run.
    """
    console = _console()
    try:
        from merc.heads.data import HeadsError

        if resume is not None:
            given = [flag for param, flag in _REQUEST_OPTIONS.items()
                     if getattr(ctx.get_parameter_source(param), "name", "DEFAULT") in ("COMMANDLINE", "ENVIRONMENT")]
            if given:
                raise HeadsError(f"--resume continues a run with the options it was started with; "
                                 f"{', '.join(given)} cannot be changed", fix=f"drop {', '.join(given)}, or start a new "
                                 "run without --resume")
            try:
                _resume(console, resume)
            except KeyboardInterrupt as e:
                _interrupted(console, e, resume)
            return
        from merc.heads.runs import RunRequest, resolve_request, train_run

        req = RunRequest(head=head, store=str(store) if store is not None else None, dataset=dataset,
                         features=features, tasks=task, overrides=_parse_sets(set_), seed=seed, precision=precision,
                         epochs=epochs, batch_size=batch_size, device=device, preset=preset, config=config,
                         out=str(out), name=name)
        tree = resolve_request(req)  # every value parsed and checked before anything loads
        _print_start(console, tree)
        with _Progress(console) as progress:
            result = train_run(req, callbacks=[progress], config=tree)
    except KeyboardInterrupt as e:
        _interrupted(console, e)
        return
    except _user_errors() as e:
        _fail(e)
        return
    _print_summary(console, result)


def _print_start(console, tree) -> None:
    """One line before training: the preset (name@version) and the schedule it resolved to."""
    from rich.markup import escape

    t, o = tree.train, tree.optim
    what = f"preset {tree.preset}" if tree.preset else "no preset (head defaults)"
    console.print(escape(f"{tree.head_name} on {tree.data.dataset}: {what}; {t.epochs} epochs, batch {t.batch_size} "
                         f"{t.batch_unit}s, patience {t.patience}, {o.name} lr {o.lr:g}"))


def _resume(console, run: Path) -> None:
    from rich.markup import escape

    from merc.heads.runs import resumable_status, resume_run

    status = resumable_status(run)
    if status is None:
        console.print(f"{escape(str(run))} is complete; nothing to resume. Evaluate it with: "
                      f"merc-heads eval {escape(_quote(run))}")
        return
    done = status.get("epochs_done", 0)
    console.print(f"resuming {escape(str(run))} ({status['status']}) after {done} completed epoch{'s' * (done != 1)}")
    with _Progress(console) as progress:
        result = resume_run(run, callbacks=[progress])
    _print_summary(console, result)


def _quote(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


def _interrupted(console, exc: KeyboardInterrupt, resuming: Path | None = None) -> None:
    """Ctrl-C: say where the run stopped and how to resume it; exit 130 (128 + SIGINT), no traceback."""
    from rich.markup import escape

    if getattr(exc, "run_dir", None) is not None:  # a RunInterrupted (no import: Ctrl-C may land in one)
        st = exc.status
        done = st.get("epochs_done", 0)
        where = f"after {done} completed epoch{'s' * (done != 1)}" if done else "before the first epoch ended"
        console.print(f"interrupted {where}; the run is saved as interrupted in {escape(str(exc.run_dir))}")
        console.print(f"resume with: {escape(exc.resume_command)}")
    elif resuming is not None:
        console.print(f"interrupted before training continued; {escape(str(resuming))} is as it was")
        console.print(f"resume with: merc-heads train --resume {escape(_quote(resuming))}")
    else:
        console.print("interrupted before the run directory was written; nothing to resume")
    raise typer.Exit(130)


class _Progress(TerminalBar):
    """A rich progress bar over each epoch's batches (on a terminal only: a log file gets no bar residue), and one
    line per finished epoch (a trainer Callback)."""

    def __init__(self, console):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.progress = None
        if console.is_terminal:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("{task.fields[loss]}"), console=console,
                                     transient=True)
        self.task = None

    def on_stage_start(self, stage: str, epochs: int) -> None:
        if stage != "main":
            self.console.print(f"[bold]stage {stage}[/]")

    def on_epoch_start(self, stage: str, epoch: int, n_batches: int) -> None:
        if self.progress is None:
            return
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(f"epoch {epoch + 1}", total=n_batches, loss="")

    def on_step(self, loss: float) -> None:
        if self.progress is not None:
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
    features = ""
    if result.config is not None:  # frozen-feature honesty: which encoders the cached features came from
        roles = result.config.data.features if isinstance(result.config.data.features, dict) else {}
        features = "  features " + ", ".join(f"{r}={fs} ({result.encoders.get(r, '?')})" for r, fs in roles.items())
    console.print(f"[bold]{split}[/] {_summary_line(result.metrics[split], kinds)}  ({chosen}, {fit.precision}, "
                  f"{fit.seconds:.1f}s){_escape(features)}  run: {result.run_dir}")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _kind_of(m: dict) -> str:
    if "mae" in m:
        return "regression"
    if "avg_weighted_f1" in m:
        return "multilabel"
    return "categorical"


# ---------------------------------------------------------------------------------------------------

@app.command()
def report(
    runs: Annotated[Path, typer.Argument(help="Folder of run directories, searched recursively (e.g. runs/).")],
    by: Annotated[str, typer.Option(help="Keys to group runs on, comma-separated: head, dataset, features, preset, seed, task, run, sweep, variant, or any dotted key of config.json (head.rank, optim.lr, train.epochs ...).")] = "head,features",
    metric: Annotated[list[str] | None, typer.Option("--metric", help="Another metric to report next to the main one (repeatable): accuracy, macro_f1, acc7, pearson ... (metrics.json names).")] = None,
    primary_metric: Annotated[str | None, typer.Option(help="The main metric, used for selection and the baseline comparison [default: what the runs selected their checkpoint with, metrics.json 'monitor'].")] = None,
    task: Annotated[str | None, typer.Option(help="Task to report [default: each run's primary task].")] = None,
    select: Annotated[str | None, typer.Option(help="Keys whose rows form a selection group: the row with the best dev mean in each is marked (test is never used). 'all': the best over the whole table; 'none': no marks [default: every --by key but the last].")] = None,
    baseline: Annotated[list[str] | None, typer.Option(help="KEY=VALUE naming the baseline row in each selection group (repeatable, to name one row); every other row gets the mean dev/test difference over shared seeds and the seeds it wins.")] = None,
    per_class: Annotated[bool, typer.Option("--per-class", help="Also report the per-class F1 (test in the markdown, dev and test in the CSV).")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write OUT.md and OUT.csv (numbers unformatted in the CSV).")] = None,
) -> None:
    """Mean ± std over seeds of dev and test metrics, grouped by --by; the best row chosen on dev, never on test.

    Prints a markdown table (copy it into BENCHMARKS.md). Incomplete runs are counted in a note, not reported.
    """
    try:
        from merc.pipelines import report as reporting

        table, written = reporting.report(runs, by, metrics=metric, primary_metric=primary_metric, task=task,
                                          select=select, baseline=baseline, per_class=per_class, out=out)
    except _user_errors() as e:
        _fail(e)
        return
    typer.echo(reporting.markdown(table), nl=False)
    for path in written:
        typer.echo(f"wrote {path}", err=True)


@app.command("eval")
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run directory written by merc-heads train.")],
    split: Annotated[str, typer.Option(help="train, dev or test.")] = "test",
    store: Annotated[Path | None, typer.Option(help="Store to read [default: the one recorded in the run].")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Reload a run's best checkpoint and recompute a split's metrics (compared with the recorded ones)."""
    console = _console()
    try:
        from merc.heads.runs import evaluate_run, verify_run

        notes = verify_run(run)  # complete, and the weights match their recorded checksum
        metrics, recorded = evaluate_run(run, split, str(store) if store else None, device, verify=False)
    except _user_errors() as e:
        _fail(e)
        return
    _print_notes(notes, json_out)
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
    elif notes:
        console.print(f"[yellow]differs from the recorded {split} metrics[/] (another machine, device or precision; "
                      "without a recorded checksum, damaged weights cannot be ruled out)")
    else:
        console.print(f"[yellow]differs from the recorded {split} metrics[/] (the weights match their checksum: "
                      "another machine, device or precision?)")


def _print_notes(notes: list[str], to_stderr: bool = False) -> None:
    """Notes about a run (no checksum to check) go to stderr when stdout carries JSON."""
    from rich.markup import escape

    from merc.data_manifests.console import make_console

    console = make_console(stderr=to_stderr)
    for note in notes:
        console.print(f"[yellow]note:[/] {escape(note)}")


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
        from merc.heads.runs import predict_run, verify_run

        notes = verify_run(run)  # complete, and the weights match their recorded checksum
        n = predict_run(run, out, split, str(store) if store else None, device, verify=False)
    except _user_errors() as e:
        _fail(e)
        return
    _print_notes(notes)
    _console().print(f"wrote {n} predictions to {out}")


@app.command()
def plot(
    run: Annotated[Path, typer.Argument(help="A run directory (runs/<run>); with --against, a folder of runs (searched recursively).")],
    out: Annotated[Path | None, typer.Option(help="Folder for the PNGs [default: <run>/plots, or <folder>/plots with --against].")] = None,
    split: Annotated[str, typer.Option(help="Split of the confusion matrices, the head figures that use one, and --against: train, dev or test.")] = "test",
    against: Annotated[str | None, typer.Option(help="Plot a metric against this option of the config tree (head.rank, optim.lr, ...; a run's sweep.json wins), mean ± std over the runs of each value (seeds), over every complete run under the folder.")] = None,
    metric: Annotated[str | None, typer.Option(help="Metric for --against, a metrics.json name of the primary task [default: the metric the runs monitored on dev, e.g. weighted_f1].")] = None,
) -> None:
    """Draw a run's figures from its files (nothing is re-run): confusion matrices, learning curves, per-class F1 and
    the head's own figures (MiSTER-E gate weights, Ada2I disparity ratios, MMoLRE expert usage, SUMMER expert
    activation). With --against: one metric against one swept option, with a CSV of the numbers drawn."""
    try:
        from merc.heads.data import HeadsError

        if against is None:
            if metric is not None:
                raise HeadsError("--metric applies to --against only",
                                 fix="add --against <option> (e.g. --against head.rank), or drop --metric")
            from merc.pipelines.plots import plot_run

            notes: list[str] = []
            paths = plot_run(run, out, split, notes=notes)
            result = None
        else:
            from merc.pipelines.plot_against import metric_against

            result = metric_against(run, against, metric=metric, split=split, out_dir=out)
            paths = [result.png, result.csv]
    except _user_errors() as e:
        _fail(e)
        return
    for path in paths:
        typer.echo(str(path))
    if result is None:
        for note in notes:
            typer.echo(f"note: {note}", err=True)
    else:
        for g in result.groups:
            std = "" if g.std != g.std else f" ± {g.std:.4f}"
            typer.echo(f"  {result.key}={g.label}: {result.metric} {g.mean:.4f}{std} (n={g.n})", err=True)
        if result.skipped:
            typer.echo(f"  {len(result.skipped)} run(s) left out: " + "; ".join(f"{p.name} ({why})"
                                                                               for p, why in result.skipped[:5]),
                       err=True)


@app.command("list")
def list_heads(
    presets: Annotated[bool, typer.Option("--presets", help="List the presets instead: name@version, description, "
                                                             "every value with its source.")] = False,
) -> None:
    """Heads, what they need (feature levels, modality roles, context) and their options with defaults."""
    console = _console()
    if presets:
        _list_presets(console)  # YAML files only: no torch, no head module
        return
    import dataclasses

    from rich.markup import escape

    from merc.heads.registry import available_heads, head_class

    for name in available_heads():
        try:
            cls = head_class(name)
        except (ImportError, KeyError) as e:
            console.print(f"[bold]{name}[/]  [dim]not available here ({escape(str(e))})[/]\n")
            continue
        from merc.heads.config import head_defaults, show

        required = ",".join(cls.required_roles) or "none"
        optional = ",".join(r for r in cls.optional_roles if r not in cls.required_roles) or "none"
        context = "dialogue context" if cls.uses_context else "utterance only"
        console.print(f"[bold]{name}[/]  {escape(cls.description)}")
        console.print(f"  needs: levels {'+'.join(cls.levels)}; roles required {required}, optional {optional}; "
                      f"{context}")
        if dataclasses.is_dataclass(cls.config_cls):
            opts = " ".join(f"{f.name}={_default(f)}" for f in dataclasses.fields(cls.config_cls))
            console.print(f"  options (head.*): {escape(opts)}")
        defaults = " ".join(f"{k}={show(v)}" for k, v in head_defaults(cls).items())
        console.print(f"  defaults: {escape(defaults)}")
        console.print()
    console.print("Roles: t = text, a = audio, v = video. `--features minilm,egemaps` gives each set the role of its "
                  "recorded modality; `--features t=minilm,a=egemaps` names them.\n"
                  "--set takes any key of the config tree: head.<option> as above; optim.name (adamw|adam), lr, "
                  "weight_decay, betas, eps, grad_clip, scheduler (none|plateau), plateau_factor, plateau_patience; "
                  "train.epochs, batch_size, batch_unit (dialogue|utterance), patience, monitor, precision, "
                  "eval_batch_size, seed, device; data.normalize (zscore|none), tasks, max_frames (per role: "
                  "data.max_frames.a=300). Presets: merc-heads list --presets.")


def _list_presets(console) -> None:
    from rich.markup import escape

    from merc.heads.config import show
    from merc.heads.presets import load_preset, preset_names

    for name in preset_names():
        p = load_preset(name)
        where = f"dataset {p.dataset}" if p.dataset else "any dataset"
        extends = f"; extends {', '.join(p.extends)}" if p.extends else ""
        console.print(f"[bold]{escape(p.ref)}[/]  ({where}{escape(extends)})  {escape(p.description)}")
        for key, value in p.values.items():
            console.print(f"  {escape(key)} = {escape(show(value))}  [dim]{escape(p.sources[key])}[/]")
        console.print()
    console.print("A preset named <head>/<dataset> is applied when --dataset names that dataset (--preset none turns "
                  "it off); --preset <name> picks another. Options and --set win over its values.")


def _default(f) -> str:
    import dataclasses

    if f.default is not dataclasses.MISSING:
        return str(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return str(f.default_factory())  # type: ignore[misc]
    return "?"


@app.command()
def sweep(
    spec: Annotated[str, typer.Argument(help="Sweep file (YAML: base, variants and/or grid, seeds), or the name of "
                                             "a packaged recipe (pipelines/recipes/<name>.yaml).")],
    store: Annotated[Path | None, typer.Option(help="Feature store every run reads [default: the file's store:].")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the runs; they go to <out>/<sweep name>/.")] = Path("runs"),
    workers: Annotated[int, typer.Option(help="Runs trained at once (local processes, or dask workers with "
                                              "--dask); torch threads per worker = cores / workers.")] = 1,
    dask: Annotated[bool, typer.Option("--dask", help="Run on a dask.distributed LocalCluster of --workers "
                                                     "single-thread processes.")] = False,
    scheduler: Annotated[str | None, typer.Option(help="Address of an existing dask scheduler (tcp://host:8786): "
                                                       "the runs go to its workers, which must see --store and --out.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List every run and what a sweep would do with it "
                                                           "(skip, resume, train); change nothing.")] = False,
    dataset: Annotated[str | None, typer.Option(help="Override the file's dataset (its presets follow).")] = None,
    features: Annotated[str | None, typer.Option(help="Override every variant's features.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="A config-tree key for every run, e.g. "
                                                                  "--set train.epochs=3 (wins over the file).")] = None,
    seeds: Annotated[str | None, typer.Option(help="Override the file's seeds: '1,2,3', or a count '5' (= 1..5).")] = None,
) -> None:
    """Train every run of a sweep (variants x grid x seeds); a rerun skips complete runs, resumes interrupted
    ones and retrains failed ones. Each run's directory is named by the hash of its config tree."""
    import sys

    if not (dry_run or dask or scheduler):
        from merc.pipelines.sweep.procs import start_server

        start_server()  # the workers' server imports torch while this process does (pipelines/sweep/procs.py)
    console = _console()
    try:
        from merc.pipelines.sweep import Variant, parse_seeds, run_sweep
        from merc.pipelines.sweep.spec import recipe_path

        outcome = run_sweep(recipe_path(spec), store=str(store) if store else None, out=out, workers=workers,
                            scheduler=scheduler, use_dask=dask, dry_run=dry_run,
                            overrides=Variant(name="", dataset=dataset, features=features, sets=_parse_sets(set_)),
                            seeds=parse_seeds(seeds) if seeds else None, console=console,
                            argv=["merc-heads", *sys.argv[1:]])
    except KeyboardInterrupt:
        console.print("sweep interrupted before any run started; nothing changed")
        raise typer.Exit(130) from None
    except _user_errors() as e:
        _fail(e)
        return
    if outcome.interrupted:
        raise typer.Exit(130)
    if outcome.count("failed"):
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
