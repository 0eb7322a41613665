"""`merc-extract`: run a frozen encoder over a corpus into the Zarr store, and inspect stores.

    merc-extract --dataset meld --root /data/MELD.Raw --encoder minilm --store cache.zarr
    merc-extract import /data/IEMOCAP_features.pkl --dataset iemocap --store cache.zarr
    merc-extract --dataset iemocap --from-store --encoder minilm --store cache.zarr
    merc-extract status --store cache.zarr
    merc-extract verify --store cache.zarr

Heavy imports (torch, transformers, av) happen only once a command needs them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Extract frozen-encoder features of every utterance of a corpus into a Zarr store.")


def _console():
    from merc.data_manifests.console import make_console

    return make_console()


def _fail(exc: Exception) -> None:
    from rich.markup import escape

    _console().print(f"[bold red]error:[/] {escape(str(exc))}")
    raise typer.Exit(2)


@app.callback(invoke_without_command=True)
def extract(
    ctx: typer.Context,
    dataset: Annotated[str | None, typer.Option(help="Corpus adapter: meld, iemocap, mosi, mosei (MMSA-FET layout), manifest (a CSV/JSONL you wrote).")] = None,
    root: Annotated[Path | None, typer.Option(help="Corpus folder (or the CSV/JSONL file for --dataset manifest).")] = None,
    encoder: Annotated[str | None, typer.Option(help="Encoder short name (see `merc-extract encoders`), or hf:, llm:, sllm:, hf-vision:<id-or-path>.")] = None,
    store: Annotated[Path, typer.Option(help="Zarr store to write (created if missing).")] = Path("cache.zarr"),
    feature_set: Annotated[str | None, typer.Option(help="Name of the feature set in the store [default: the encoder name].")] = None,
    name: Annotated[str | None, typer.Option(help="Dataset name inside the store [default: --dataset].")] = None,
    modalities: Annotated[str | None, typer.Option(help="MELD/IEMOCAP: 'text' to work from the transcripts alone [default: what the encoder needs].")] = None,
    protocol: Annotated[str | None, typer.Option(help="IEMOCAP protocol: 6-erc, 4-erc or 4-ser.")] = None,
    adapter_option: Annotated[list[str] | None, typer.Option(help="A corpus adapter option as key=value, repeatable: MELD variant=dyadic, splits=train,test; manifest labels=<labels.json>.")] = None,
    workers: Annotated[int | None, typer.Option(help="Run on a local dask cluster of this many worker processes.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Run on an existing dask cluster (tcp://host:8786).")] = None,
    decode_workers: Annotated[int | None, typer.Option(help="Local run: processes that decode media / run openSMILE [default: by encoder].")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 ...")] = "cpu",
    dtype: Annotated[str, typer.Option(help="Model weights: auto (fp16 on CUDA), fp32, fp16, bf16.")] = "auto",
    pooling: Annotated[str | None, typer.Option(help="Pooling: text mean|cls; speech/whisper mean; llm mean|last (own tokens); sllm last|mean; vision auto|cls|mean.")] = None,
    layers: Annotated[str | None, typer.Option("--layers", "--layer", help="Layer: last, an index (0 = embeddings, negative from the end), last4-mean, or all (layers concatenated).")] = None,
    max_seconds: Annotated[float, typer.Option(help="Audio longer than this is cut (and reported).")] = 30.0,
    channels: Annotated[str, typer.Option(help="Multichannel audio: downmix, center or first.")] = "downmix",
    window: Annotated[int, typer.Option(help="Utterances prepared and batched together (more = fuller batches, more memory).")] = 512,
    keep_frames: Annotated[bool, typer.Option(help="Also store each utterance's frame/token vectors (frames + offsets).")] = False,
    batch_budget: Annotated[int | None, typer.Option(help="Batch size in the family's unit: padded tokens (text, llm), seconds of audio (speech SSL), 30 s chunks (whisper), clips (sllm), frames (vision).")] = None,
    prompt_context: Annotated[int, typer.Option(help="llm: previous utterances of the dialogue in each prompt.")] = 0,
    prompt_template: Annotated[str | None, typer.Option(help="llm: prompt template with {context}, {speaker}, {text} [default: '{context}{speaker}: {text}'].")] = None,
    adapter: Annotated[str | None, typer.Option(help="llm: PEFT/LoRA adapter folder, merged into the weights (needs peft).")] = None,
    instruction: Annotated[str | None, typer.Option(help="sllm: instruction after the audio [default: 'What is the emotion of the speaker?'].")] = None,
    fps: Annotated[float | None, typer.Option(help="hf-vision: video frames sampled per second [default: 2].")] = None,
    store_dtype: Annotated[str, typer.Option(help="Storage dtype: auto (float16; float32 for openSMILE), float16, float32.")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace a feature set (or dataset) built with other settings.")] = False,
    allow_missing: Annotated[bool, typer.Option(help="Exit 0 even if some utterances could not be extracted.")] = False,
    labels_from: Annotated[Path | None, typer.Option(help="IEMOCAP: take the utterance set, labels and dev split from a community pickle (conv-emotion, COSMIC ...; the papers' 7,433-utterance set), aligned with the release by dialogue, order and text.")] = None,
    from_store: Annotated[bool, typer.Option(help="Encode the manifest the store already holds for --dataset (e.g. one `merc-extract import` wrote from a text pickle) instead of reading a corpus.")] = False,
) -> None:
    """Extract features (the default command), or run a subcommand."""
    if ctx.invoked_subcommand is not None:
        return
    if from_store and root is not None:
        _fail(ValueError("--from-store takes the manifest from the store: pass either --root or --from-store"))
    if not (dataset and (root or from_store) and encoder):
        _fail(ValueError("--dataset, --root (or --from-store) and --encoder are required (see merc-extract --help)"))
    from merc.data_manifests.errors import MercError

    encoder_options = {"keep_frames": keep_frames, "batch_budget": batch_budget, "prompt_context": prompt_context,
                       "prompt_template": prompt_template, "adapter": adapter, "instruction": instruction, "fps": fps,
                       "store_dtype": store_dtype}
    try:
        code = _run_extract(dataset, root, encoder, store, feature_set, name, modalities, protocol, workers,
                            scheduler, decode_workers, device, dtype, pooling, layers, max_seconds, channels, window,
                            overwrite, allow_missing, encoder_options=encoder_options,
                            adapter_options={**_adapter_options(adapter_option),
                                             **({"labels_from": str(labels_from)} if labels_from else {})},
                            from_store=from_store)
    except MercError as exc:
        _fail(exc)
    raise typer.Exit(code)


def _run_extract(dataset, root, encoder_name, store, feature_set, name, modalities, protocol, workers, scheduler,
                 decode_workers, device, dtype, pooling, layers, max_seconds, channels, window, overwrite,
                 allow_missing, encoder_options: dict | None = None, adapter_options: dict | None = None,
                 from_store: bool = False) -> int:
    from merc.extract.encoders import EncoderRequest
    from merc.extract.media import AudioPolicy
    from merc.extract.store.writer import check_writable

    console = _console()
    check_writable(Path(store))  # a store that cannot be written is refused before any model loads
    req = EncoderRequest(encoder_name, pooling=pooling, layers=layers, device=device, dtype=dtype,
                         audio=AudioPolicy(max_seconds=max_seconds, channels=channels), **(encoder_options or {}))
    options: dict = {**(adapter_options or {}), **({"protocol": protocol} if protocol else {})}
    job = _Job(console, req, dataset, root, store, feature_set, name, modalities, options, from_store)
    try:
        return job.run(workers, scheduler, decode_workers, window, overwrite, allow_missing)
    except KeyboardInterrupt:
        done = len(job.writer.done_dialogues()) if job.writer is not None else 0
        console.print(f"\n[yellow]interrupted[/]: {done} dialogue(s) are committed and kept; rerun the same "
                      "command to resume where it stopped.")
        return 130


def _adapter_options(items: list[str] | None) -> dict:
    """`--adapter-option key=value` -> {key: value}; a value with commas is a tuple (splits=train,test)."""
    from merc.data_manifests.errors import ManifestError

    out: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ManifestError(f"--adapter-option {item!r} is not key=value", file="--adapter-option",
                                fix="write it as --adapter-option key=value, e.g. --adapter-option variant=dyadic")
        out[key.strip().replace("-", "_")] = tuple(v.strip() for v in value.split(",")) if "," in value else value
    return out


def _reference_manifest(path: str, dataset: str, console):
    """`--labels-from FILE`: the file's corpus description, read by the importer (never by pickle.load)."""
    from merc.extract.importers import read_import

    family, corpus = read_import(path, dataset)
    m = corpus.manifest
    m.root = str(Path(path).resolve())
    m.policies = {**m.policies, "label_source": f"{corpus.provenance.get('family')} ({family} importer)"}
    console.print(f"labels from {path}: {corpus.provenance.get('family')}, {len(m.dialogues)} dialogues, "
                  f"{m.n_utterances} utterances")
    return m


class _Job:
    """One merc-extract run: encoder, manifest, plan, extraction, report (kept on an object so that an
    interruption can still say what was committed)."""

    def __init__(self, console, req, dataset, root, store, feature_set, name, modalities, options, from_store=False):
        self.console, self.req, self.dataset, self.root, self.store = console, req, dataset, root, store
        self.feature_set, self.name, self.modalities, self.options = feature_set, name, modalities, options
        self.from_store = from_store
        self.writer = None

    def _manifest(self, info: dict):
        """The corpus's manifest: from its adapter, or (--from-store) the table the store holds."""
        from merc.data_manifests.adapters import load_manifest

        if self.from_store:
            from merc.extract.store import StoreReader

            return StoreReader(self.store).manifest(self.name or self.dataset), None
        options = dict(self.options)
        if self.dataset in ("meld", "iemocap", "mosi", "mosei"):
            options["modalities"] = (tuple(self.modalities.split(",")) if self.modalities else (info["modality"],))
        source = {"adapter": self.dataset, "options": {k: v for k, v in self.options.items()}}
        if isinstance(options.get("labels_from"), str):  # the adapter gets the file's manifest, the store its path
            options["labels_from"] = _reference_manifest(options["labels_from"], self.dataset, self.console)
        return load_manifest(self.dataset, self.root, **options), source


    def run(self, workers, scheduler, decode_workers, window, overwrite, allow_missing) -> int:
        from merc.extract.distributed import describe_encoder, make_client, run_on_dask
        from merc.extract.encoders import build_encoder, feature_set_name
        from merc.extract.runner import Extraction
        from merc.extract.store import StoreWriter

        console, req = self.console, self.req
        client = make_client(workers, scheduler) if (workers or scheduler) else None
        stats = None
        try:
            if client is None:
                enc = build_encoder(req)
                fingerprint, info = enc.fingerprint(), enc.info()
            else:  # the model loads on the workers only
                fingerprint, info = client.submit(describe_encoder, req, pure=False).result()
            manifest, source = self._manifest(info)
            _print_notes(console, [str(f) for f in manifest.findings])
            ds_name = self.name or (self.dataset if self.from_store else manifest.name)
            fs_name = self.feature_set or feature_set_name(req.name)
            where = f"{ds_name}/{fs_name}"
            self.writer = writer = StoreWriter(self.store, ds_name, fs_name)
            notes = writer.open(manifest, fingerprint=fingerprint, info=info, overwrite=overwrite, source=source)
            plan = writer.plan(manifest)
            _print_notes(console, notes + plan.notes(where))
            writer.forget(plan)
            done = writer.done_dialogues()
            if all(d.id in done for d in manifest.dialogues):
                console.print(f"{where}: all {len(manifest.dialogues)} dialogues already extracted; nothing to do.")
            else:
                stats = self._extract(client, manifest, writer, done, decode_workers, window,
                                      enc if client is None else None, run_on_dask, Extraction)
        finally:
            if client is not None:
                client.close()
        report = writer.finalize(manifest)
        return self._summary(stats, report, where, info, allow_missing)

    def _extract(self, client, manifest, writer, done, decode_workers, window, enc, run_on_dask, extraction_cls):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("utts"),
                      TimeRemainingColumn(), console=self.console, transient=False) as bar:
            skipped_utts = sum(len(d) for d in manifest.dialogues if d.id in done)
            on = f" on {len(client.scheduler_info()['workers'])} dask workers" if client else ""
            task = bar.add_task(f"{self.req.name} on {writer.dataset}{on}", total=manifest.n_utterances,
                                completed=skipped_utts)
            advance = lambda n: bar.advance(task, n)  # noqa: E731
            if client is None:
                return extraction_cls(manifest, enc, writer, workers=decode_workers,
                                      window_utterances=window).run(progress=advance)
            return run_on_dask(client, manifest, self.req, writer, window=window, progress=advance)

    def _summary(self, stats, report, where, info, allow_missing) -> int:
        console = self.console
        failed = report["utterances_failed"]
        if stats is not None:
            console.print(
                f"{where}: wrote {stats.dialogues_written} dialogues ({stats.utterances_encoded} utterances, "
                f"{stats.utterances_per_second:.0f} utt/s, {stats.seconds:.1f} s); {stats.dialogues_skipped} were "
                "already done.")
            _print_notes(console, stats.notes)
        for f in report["failures"][:20]:
            console.print(f"[red]skipped[/] {f['utterance_id']}: {f['file']}"
                          + (f", row {f['row']}" if f.get("row") is not None else "")
                          + f": {f['problem']}. Fix: {f['fix']} (the next run retries it)")
        if failed > 20:
            console.print(f"[red]... and {failed - 20} more skipped utterances[/] (all in the store's report: "
                          f"merc-extract status --store {self.store} --failures)")
        console.print(f"[bold]{where}[/]: {report['dialogues_complete']}/{report['dialogues_total']} dialogues "
                      f"complete, dim {info['dim']}, {failed} utterance(s) skipped; store: {self.store}")
        if failed and not allow_missing:
            console.print("[red]exit 1:[/] some utterances were skipped (pass --allow-missing to accept that).")
            return 1
        return 0


def _print_notes(console, notes: list[str], limit: int = 10) -> None:
    for note in notes[:limit]:
        console.print(f"[yellow]note:[/] {_escape(note)}")
    if len(notes) > limit:
        console.print(f"[yellow]note:[/] ... and {len(notes) - limit} more")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


@app.command()
def status(store: Annotated[Path, typer.Option(help="Zarr store.")] = Path("cache.zarr"),
           failures: Annotated[bool, typer.Option(help="List every skipped utterance.")] = False) -> None:
    """What is in a store: datasets, feature sets, completeness, failures (reads markers, not arrays)."""
    from rich.table import Table

    from merc.data_manifests.errors import MercError
    from merc.extract.store import StoreReader

    console = _console()
    try:
        reader = StoreReader(store)
        rows = reader.status()
        summaries = []
        for ds in reader.datasets():
            try:
                summaries.append(reader.manifest(ds).summary())
            except MercError as exc:
                summaries.append(f"{ds}: {exc}")
    except MercError as exc:
        _fail(exc)
    table = Table(title=f"merc store {store}")
    for col in ("dataset", "feature set", "modality", "dim", "dialogues", "stale", "skipped utts", "packed",
                "fingerprint"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["dataset"], r["feature_set"], r["modality"], str(r["dim"]),
                      f"{r['dialogues_done']}/{r['dialogues_total']}", str(r["dialogues_stale"]),
                      str(r["utterances_failed"]), "yes" if r["packed"] else "no", str(r["fingerprint"]))
    console.print(table)
    for line in summaries:
        console.print(line)
    _print_provenance(console, reader)
    if failures:
        for r in rows:
            for f in r["failures"]:
                console.print(f"{r['dataset']}/{r['feature_set']} {f['utterance_id']}: {f['file']}: {f['problem']}")


def _print_provenance(console, reader) -> None:
    """Where imported tables and feature sets came from (file, SHA-256, family, dev split, label map)."""
    from merc.extract.importers.summary import provenance_line
    from merc.extract.store.verify import provenance_rows

    rows = provenance_rows(reader)
    if rows:
        console.print("provenance:")
    for where, prov, is_dataset in rows:
        console.print(f"  {_escape(provenance_line(where, prov, full=is_dataset))}", soft_wrap=True)


@app.command("import")
def import_file(
    file: Annotated[Path, typer.Argument(help="The file to import: a legacy ERC pickle (DialogueRNN, DialogueGCN, MMGCN, SDT, COSMIC, COGMEN, CORECT), a COSMIC text pickle, an MMSA pickle or a .csd.")],
    dataset: Annotated[str, typer.Option(help="The corpus the file holds: iemocap, meld, mosi, mosei.")],
    store: Annotated[Path, typer.Option(help="Zarr store to write (created if missing).")] = Path("cache.zarr"),
    labels: Annotated[Path | None, typer.Option(help="The labels file, for families that keep them apart (.csd).")] = None,
    name: Annotated[str | None, typer.Option(help="Dataset name inside the store [default: --dataset].")] = None,
    family: Annotated[str | None, typer.Option(help="Importer family (erc, cosmic-text, mmsa, csd) [default: detected from the file's structure].")] = None,
    dev_split: Annotated[str | None, typer.Option(help="Files without a dev list: auto (MELD official, from the dialogue keys; else none), first-10% (COGMEN's rule) or none.")] = None,
    option: Annotated[list[str] | None, typer.Option(help="An importer option as key=value, repeatable (erc: classes=4).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a feature set or dataset table made from another file.")] = False,
) -> None:
    """Import a feature file the community shares into the store: checked, checksummed, verified like an extraction."""
    from merc.data_manifests.errors import MercError

    console = _console()
    try:
        from merc.extract.importers import read_import, write_import
        from merc.extract.importers.summary import detected_lines

        options = {k: _typed(v) for k, v in _adapter_options(option).items()}
        if labels is not None:
            options["labels"] = labels
        if dev_split is not None:
            options["dev_split"] = dev_split
        found, corpus = read_import(file, dataset, family, **options)
        for line in detected_lines(found, corpus):
            console.print(_escape(line), soft_wrap=True)
        summary = write_import(store, corpus, name or dataset, overwrite=overwrite)
    except MercError as exc:
        _fail(exc)
    _print_notes(console, summary["notes"])
    for fs in summary["feature_sets"]:
        console.print(f"{summary['dataset']}/{fs['name']}: dim {fs['dim']} {fs['modality']} ({fs['dtype']}), "
                      f"{fs['written']} dialogue(s) written, {fs['kept']} already committed")
    sets = ", ".join(fs["name"] for fs in summary["feature_sets"])
    console.print(f"[bold]imported[/] {_escape(file.name)} ({summary['family']}) into {store} as {summary['dataset']}: "
                  f"{summary['dialogues']} dialogues, {summary['utterances']} utterances, "
                  + (f"{len(summary['feature_sets'])} feature set(s): {sets}" if sets else
                     f"manifest only; encode it with merc-extract --dataset {summary['dataset']} --from-store "
                     f"--encoder <text encoder> --store {store}"), soft_wrap=True)


def _typed(value):
    """`--option` values: integers and numbers as such, the rest as text."""
    if isinstance(value, str):
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
    return value


@app.command()
def verify(store: Annotated[Path, typer.Option(help="Zarr store.")] = Path("cache.zarr")) -> None:
    """Read every committed dialogue against its checksums and the manifest; exit 1 if anything is wrong."""
    import time

    from merc.data_manifests.errors import MercError
    from merc.extract.store import StoreReader
    from merc.extract.store.verify import verify_store

    t0 = time.perf_counter()
    try:
        report = verify_store(StoreReader(store))
    except MercError as exc:
        _fail(exc)
    console = _console()
    for p in report.problems:
        console.print(f"[red]problem:[/] {_escape(p)}")
    for f in report.fixes:
        console.print(f"[bold]fix:[/] {_escape(f)}")
    seconds = time.perf_counter() - t0
    console.print(f"verify {store}: " + ("OK" if not report.problems else f"{len(report.problems)} problem(s)")
                  + f" ({seconds:.1f} s)")
    raise typer.Exit(1 if report.problems else 0)


@app.command()
def encoders() -> None:
    """List the encoder short names."""
    from merc.extract.encoders import ENCODERS

    for name in ENCODERS.names():
        print(f"{name:16s} {ENCODERS.description(name)}")
    for prefix, what in (("hf:<id>", "any Hugging Face id or local folder; the family comes from its config "
                                      "(text, speech SSL, Whisper, vision, speech LLM, LLM)"),
                         ("llm:<id>", "decoder-only LLM: own-token pooling, --prompt-context, --adapter"),
                         ("sllm:<id>", "speech LLM (Qwen2-Audio): audio + --instruction"),
                         ("hf-vision:<id>", "image model over video frames sampled at --fps")):
        print(f"{prefix:16s} {what}")


def main() -> None:
    app(prog_name="merc-extract")


if __name__ == "__main__":
    sys.exit(main())
