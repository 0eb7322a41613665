"""A corpus any user can describe in one CSV/TSV/JSONL file -> Manifest (registered as "manifest").

So that a new corpus needs no new code: one row per utterance with ``dialogue_id, utterance_id,
speaker, text, split``; optional ``audio``/``video``/``media`` (a path relative to the file's folder,
or absolute), ``start``/``end`` (seconds within that file) and ``index``/``position`` (order within
the dialogue; file order otherwise). Every other column is a label space, named after the column
(``label:emotion`` or just ``emotion``).

Label kinds come from a sidecar ``<file>.labels.json`` (or ``<stem>.labels.json``, or the `labels`
option) such as ``{"emotion": {"kind": "categorical", "classes": ["neutral", "joy"]}}``. With a
sidecar only the declared columns are labels. Without one the kind is inferred and recorded in the
manifest policies: numbers -> regression, strings -> categorical with sorted class names, JSON
lists -> multilabel. A guess can be wrong (class ids 0..6 look like numbers), so every inference is
also a note saying how to declare the column, and a column mixing kinds (``3`` and ``anger``) is an
error rather than a guess. Multilabel cells in CSV separate classes with ``|``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Finding, ManifestError
from ..manifest import Dialogue, LabelSpace, LabelValue, Manifest, Utterance
from . import ADAPTERS
from ._common import raise_problems, read_csv, read_lines

REQUIRED = ("dialogue_id", "utterance_id", "speaker", "text", "split")
MEDIA_COLUMNS = ("media", "audio", "video")
ORDER_COLUMNS = ("index", "position")
RESERVED = REQUIRED + MEDIA_COLUMNS + ("start", "end") + ORDER_COLUMNS
HEADER_HINT = "dialogue_id,utterance_id,speaker,text,split,audio,start,end,emotion"
SPLIT_ALIASES = {"train": "train", "training": "train", "dev": "dev", "development": "dev", "valid": "dev",
                 "val": "dev", "validation": "dev", "test": "test", "testing": "test"}
KINDS = ("categorical", "multilabel", "regression")
DEFAULT_NAMES = ("manifest.csv", "manifest.tsv", "manifest.jsonl")
MAX_EXAMPLE_CLASSES = 12  # a suggested declaration lists the classes only up to this many
SIDECAR_SCOPE = "a sidecar declares every label space, so declare your other label columns in it too"


@dataclass
class _Table:
    path: Path
    columns: list[str]
    rows: list[tuple[int, dict[str, Any]]]
    encoding: str = "utf-8"
    problems: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)  # non-fatal: lines decoded as cp1252


@ADAPTERS.register("manifest", "a CSV/TSV/JSONL manifest you write")
def load_generic(path: str | Path, *, labels: str | Path | dict | None = None, name: str | None = None) -> Manifest:
    """Build a validated manifest from a user's CSV/TSV/JSONL file (or a folder holding manifest.csv/jsonl).

    labels: label-space declarations (a dict, or a path to a JSON file); default: the sidecar
    ``<file>.labels.json`` if it exists, else inference.
    name: the manifest (dataset) name; default: the file's stem.
    """
    file = _resolve_file(Path(path).expanduser())
    table = _read_table(file)
    findings: list[Finding] = list(table.notes)
    encodings = {str(file): table.encoding}
    spec, spec_source = _label_spec(file, labels, findings, encodings)
    columns = _label_columns(table, spec, spec_source)
    policies: dict = {"source": str(file), "label_spec": spec_source, "ignored_columns": columns.ignored,
                      "media_column": next((c for c in MEDIA_COLUMNS if c in table.columns), None),
                      "order_column": next((c for c in ORDER_COLUMNS if c in table.columns), None),
                      "split_aliases": "valid/val/validation/development -> dev, training -> train, testing -> test",
                      "label_inference": {}, "empty_text_rows": 0, "missing_media": [],
                      "encodings": encodings}
    problems = list(table.problems)
    spaces = _label_spaces(table, columns.by_space, spec, policies, problems, findings)
    if len(spaces) < len(columns.by_space):  # a column's kind is unknown: rows cannot be parsed
        raise_problems(problems)
    records = [r for r in (_parse_row(table, row, rec, columns.by_space, spaces, policies, problems, findings)
                           for row, rec in table.rows) if r is not None]
    _check_ids(table.path, records, problems)
    raise_problems(problems)
    dialogues = _group(table.path, records, problems)
    raise_problems(problems)
    manifest = Manifest(name=name or file.stem, root=str(file), label_spaces=spaces, dialogues=dialogues,
                        policies=policies, findings=findings)
    manifest.validate()
    return manifest


# --- reading ------------------------------------------------------------------------------------------
def _resolve_file(path: Path) -> Path:
    if path.is_dir():
        for candidate in DEFAULT_NAMES:
            if (path / candidate).is_file():
                return (path / candidate).resolve()
        raise ManifestError(f"no {' / '.join(DEFAULT_NAMES)} in this folder", file=str(path),
                            fix="pass the manifest file itself, or name it manifest.csv")
    if not path.is_file():
        raise ManifestError("manifest file not found", file=str(path), fix="check the path")
    return path.resolve()


def _read_table(path: Path) -> _Table:
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return _read_jsonl(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    csv_table = read_csv(path, required=REQUIRED, optional=RESERVED, header_hint=HEADER_HINT, delimiter=delimiter)
    return _Table(path=path, columns=csv_table.header, rows=list(csv_table.rows), encoding=csv_table.encoding,
                  problems=csv_table.problems, notes=csv_table.notes)


def _read_jsonl(path: Path) -> _Table:
    """Rows are numbered by physical line (blank lines count), as an editor shows them."""
    source = read_lines(path)
    table = _Table(path=path, columns=[], rows=[], encoding=source.encoding, notes=source.notes())
    lookup = {c: c for c in RESERVED}
    for line_no, line in source.numbered():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            table.problems.append(Finding(file=str(path), row=line_no, problem=f"invalid JSON: {exc.msg}",
                                          fix="write one JSON object per line"))
            continue
        if not isinstance(rec, dict):
            table.problems.append(Finding(file=str(path), row=line_no, problem="the line is not a JSON object",
                                          fix='write one object per line, e.g. {"dialogue_id": "d1", ...}'))
            continue
        rec = {lookup.get(str(k).strip().lower(), str(k).strip()): v for k, v in rec.items()}
        table.columns.extend(k for k in rec if k not in table.columns)
        table.rows.append((line_no, rec))
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ManifestError(
            f"missing field(s) {', '.join(repr(c) for c in missing)}; fields found: {', '.join(table.columns)}",
            file=str(path), fix=f"give every line the fields {', '.join(REQUIRED)} (plus optional audio, start, "
                                f"end and label fields)")
    return table


# --- label columns and spaces ---------------------------------------------------------------------------
@dataclass
class _Columns:
    by_space: dict[str, str]  # label space name -> column
    ignored: list[str]


def sidecar_path(file: Path) -> Path:
    """Where a user declares the label spaces of `file`: ``<file>.labels.json`` next to it."""
    return file.with_name(file.name + ".labels.json")


def _label_spec(file: Path, labels: str | Path | dict | None, findings: list[Finding],
                encodings: dict[str, str]) -> tuple[dict | None, str]:
    if isinstance(labels, dict):
        return _check_spec(labels, "labels option"), "labels option"
    candidates = [Path(labels).expanduser()] if labels is not None else [
        sidecar_path(file), file.with_name(file.stem + ".labels.json")]
    for candidate in candidates:
        if candidate.is_file():
            source = read_lines(candidate)
            findings.extend(source.notes())
            encodings[str(candidate)] = source.encoding
            try:
                spec = json.loads(source.text)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"invalid JSON: {exc.msg}", file=str(candidate), row=exc.lineno,
                                    fix='write {"<name>": {"kind": "categorical", "classes": [...]}}') from exc
            return _check_spec(spec, str(candidate)), str(candidate)
    if labels is not None:
        raise ManifestError("label declaration file not found", file=str(labels),
                            fix="check the path given as --adapter-option labels=<file>")
    return None, "inferred from the values (no .labels.json sidecar)"


def _check_spec(spec: Any, source: str) -> dict:
    fix = 'declare each space as {"<name>": {"kind": "categorical|multilabel|regression", "classes": [...]}}'
    if not isinstance(spec, dict):
        raise ManifestError("label declarations must be a JSON object", file=source, fix=fix)
    for space, decl in spec.items():
        if not isinstance(decl, dict) or decl.get("kind") not in KINDS:
            raise ManifestError(f"label space {space!r} needs a kind among {', '.join(KINDS)}", file=source, fix=fix)
        classes = decl.get("classes")
        if classes is not None and (not isinstance(classes, list) or len(set(map(str, classes))) != len(classes)):
            raise ManifestError(f"classes of {space!r} must be a list of distinct names", file=source, fix=fix)
    return spec


def _label_columns(table: _Table, spec: dict | None, spec_source: str) -> _Columns:
    by_space: dict[str, str] = {}
    ignored: list[str] = []
    for col in table.columns:
        if col in RESERVED:
            continue
        space = col.split(":", 1)[1].strip() if col.lower().startswith("label:") else col
        if spec is not None and space not in spec:
            ignored.append(col)
            continue
        if space in by_space:
            raise ManifestError(f"columns {by_space[space]!r} and {col!r} both give label space {space!r}",
                                file=str(table.path), fix="keep one of the two columns")
        by_space[space] = col
    for space in spec or {}:
        if space not in by_space:
            raise ManifestError(f"declared label space {space!r} has no column {space!r} or 'label:{space}'",
                                file=spec_source, fix=f"add the column to {table.path.name} or drop the declaration")
    return _Columns(by_space=by_space, ignored=ignored)


def _label_spaces(table: _Table, by_space: dict[str, str], spec: dict | None, policies: dict,
                  problems: list[Finding], findings: list[Finding]) -> dict[str, LabelSpace]:
    """Declared spaces as declared; else infer each kind (and say so), refusing columns that mix kinds."""
    spaces = {}
    for space, col in by_space.items():
        cells = [(row, rec.get(col)) for row, rec in table.rows]
        if spec is not None:
            spaces[space] = _declared_space(space, spec[space], [v for _, v in cells])
            if spec[space].get("classes") is None and spaces[space].kind != "regression":
                findings.append(_declared_classes_note(policies["label_spec"], spaces[space]))
            continue
        by_type = _cells_by_type(cells)
        if len(by_type) > 1:
            problems.append(_mixed_column(table.path, space, col, by_type, cells))
            continue
        spaces[space] = _inferred_space(space, [v for _, v in cells])
        policies["label_inference"][space] = {"column": col, "kind": spaces[space].kind,
                                              "classes": list(spaces[space].classes),
                                              "rule": "numbers -> regression; JSON lists -> multilabel; "
                                                      "strings -> categorical, classes sorted"}
        findings.append(_inference_note(table.path, col, spaces[space], [v for _, v in cells]))
    return spaces


def _declared_space(name: str, decl: dict, values: list[Any]) -> LabelSpace:
    kind = decl["kind"]
    vr = decl.get("value_range")
    classes = decl.get("classes")
    if classes is None and kind != "regression":  # declared kind, classes inferred
        found = {c for v in values for c in (_split_multi(v) if kind == "multilabel" else [_text(v)]) if c}
        classes = sorted(found)
    return LabelSpace(name, kind, tuple(str(c) for c in classes or ()), tuple(vr) if vr else None)


def _inferred_space(name: str, values: list[Any]) -> LabelSpace:
    present = [v for v in values if not _is_empty(v)]
    if any(isinstance(v, list) for v in present):
        return LabelSpace(name, "multilabel", tuple(sorted({c for v in present for c in _split_multi(v)})))
    if present and all(_number(v) is not None for v in present):
        return LabelSpace(name, "regression")
    return LabelSpace(name, "categorical", tuple(sorted({_text(v) for v in present})))


# --- telling the user what was inferred, or why it cannot be ------------------------------------------
CELL_TYPES = ("numbers", "words", "JSON lists")
INTEGER_RE = re.compile(r"[+-]?\d+")


def _cell_type(value: Any) -> str | None:
    if _is_empty(value):
        return None
    if isinstance(value, list):
        return "JSON lists"
    return "numbers" if _number(value) is not None else "words"


def _cells_by_type(cells: list[tuple[int, Any]]) -> dict[str, list[tuple[int, Any]]]:
    """Non-empty cells grouped by kind of value, in CELL_TYPES order."""
    groups: dict[str, list[tuple[int, Any]]] = {t: [] for t in CELL_TYPES}
    for row, value in cells:
        kind = _cell_type(value)
        if kind is not None:
            groups[kind].append((row, value))
    return {t: g for t, g in groups.items() if g}


def _row_list(cells: list[tuple[int, Any]], shown: int = 5) -> str:
    """``rows 1, 2, 4, 5, 6 and 35 more`` or ``row 3``."""
    rows = [str(r) for r, _ in cells]
    more = f" and {len(rows) - shown} more" if len(rows) > shown else ""
    return f"row{'s' if len(rows) > 1 else ''} {', '.join(rows[:shown])}{more}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _declaration(space: str, kind: str, classes: Sequence[str] | None = None) -> str:
    """The JSON a user writes into the sidecar for `space` (classes listed while they are few)."""
    decl: dict[str, Any] = {"kind": kind}
    if classes is not None and len(classes) <= MAX_EXAMPLE_CLASSES:
        decl["classes"] = list(classes)
    return json.dumps({space: decl}, ensure_ascii=False)


def _class_names(values: list[Any]) -> list[str]:
    """Distinct class names in the cells: numbers in numeric order first, then the rest by name."""
    names = {c for v in values if not _is_empty(v)
             for c in (_split_multi(v) if isinstance(v, list) else [_text(v)])}

    def key(name: str) -> tuple[int, float, str]:
        number = _number(name)
        return (0, number, name) if number is not None else (1, 0.0, name)

    return sorted(names, key=key)


def _mixed_column(path: Path, space: str, col: str, by_type: dict[str, list[tuple[int, Any]]],
                  cells: list[tuple[int, Any]]) -> Finding:
    """A fatal Finding: the column holds several kinds of values, so any inferred kind would be a guess."""
    kinds = _join([f"{kind} ({_row_list(group)})" for kind, group in by_type.items()])
    examples = ", ".join(f"row {group[0][0]} holds {group[0][1]!r}" for group in by_type.values())
    kind = "multilabel" if "JSON lists" in by_type else "categorical"
    example = _declaration(space, kind, _class_names([v for _, v in cells]))
    return Finding(file=str(path),
                   problem=f"column {col!r} mixes {kinds}, e.g. {examples}; its label kind cannot be "
                           f"inferred",
                   fix=f"declare the column in {sidecar_path(path)}, e.g. {example} ({SIDECAR_SCOPE}), "
                       f"or write every cell of {col!r} the same way (leave unknown values empty)")


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and INTEGER_RE.fullmatch(value.strip()) is not None


def _inference_note(path: Path, col: str, space: LabelSpace, values: list[Any]) -> Finding:
    """A non-fatal Finding saying which kind was inferred for `col` and the sidecar JSON that overrides it."""
    sidecar = sidecar_path(path)
    present = [v for v in values if not _is_empty(v)]
    if space.kind == "regression" and all(_is_integer(v) for v in present):
        problem = (f"column {col!r} holds only integers: inferred regression; if these are class ids declare "
                   f"kind categorical")
        as_classes = _declaration(space.name, "categorical", _class_names(present))
        fix = (f"for class ids write {sidecar}: {as_classes}; to keep regression and silence this note write "
               f"{_declaration(space.name, 'regression')}")
    elif space.kind == "regression":
        problem = f"column {col!r} holds numbers: inferred regression"
        fix = f"to declare it, write {sidecar}: {_declaration(space.name, 'regression')}"
    else:
        what = "JSON lists" if space.kind == "multilabel" else "words" if present else "no values"
        problem = (f"column {col!r} holds {what}: inferred {space.kind} with {len(space.classes)} class(es) "
                   f"sorted by name{_class_preview(space.classes)}")
        fix = (f"to set the classes and their order, write {sidecar}: "
               f"{_declaration(space.name, space.kind, space.classes)}")
    return Finding(file=str(path), problem=problem, fix=f"{fix} ({SIDECAR_SCOPE})")


def _declared_classes_note(source: str, space: LabelSpace) -> Finding:
    """A declared kind without classes: the classes (and so their indices) still come from the values."""
    return Finding(file=source,
                   problem=f"label space {space.name!r} declares no classes: took {len(space.classes)} "
                           f"class(es) from the values, sorted by name{_class_preview(space.classes)}",
                   fix=f"to set the classes and their order, declare them in {source}, e.g. "
                       f"{_declaration(space.name, space.kind, space.classes)}")


def _class_preview(classes: Sequence[str]) -> str:
    if not classes:
        return ""
    more = " ..." if len(classes) > MAX_EXAMPLE_CLASSES else ""
    return f" ({', '.join(classes[:MAX_EXAMPLE_CLASSES])}{more})"


# --- cells ----------------------------------------------------------------------------------------------
def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _split_multi(value: Any) -> list[str]:
    if isinstance(value, list):
        return [_text(v) for v in value if _text(v)]
    text = _text(value)
    return [] if text in ("", "[]") else [p.strip() for p in text.split("|") if p.strip()]


def _label_value(space: LabelSpace, value: Any) -> tuple[LabelValue, str | None]:
    """Parse one label cell; returns (value, problem)."""
    if _is_empty(value):
        return None, None
    if space.kind == "regression":
        number = _number(value)
        return (number, None) if number is not None else (None, f"{space.name} value {value!r} is not a number")
    parsed: LabelValue = tuple(_split_multi(value)) if space.kind == "multilabel" else _text(value)
    return parsed, space.check(parsed)


def _label_fix(space: LabelSpace, col: str) -> str:
    if space.kind == "regression":
        return f"write a number in the {col!r} cell" + (f" within {space.value_range}" if space.value_range else "")
    return (f"correct the {col!r} cell to one of {', '.join(space.classes)}, or add the class to the "
            f"label declarations (.labels.json)")


# --- rows -----------------------------------------------------------------------------------------------
@dataclass
class _Record:
    row: int
    utt: Utterance
    order: float | None


def _parse_row(table: _Table, row: int, rec: dict[str, Any], by_space: dict[str, str],
               spaces: dict[str, LabelSpace], policies: dict, problems: list[Finding],
               findings: list[Finding]) -> _Record | None:
    file = str(table.path)
    n_before = len(problems)

    def bad(problem: str, fix: str) -> None:
        problems.append(Finding(file=file, row=row, problem=problem, fix=fix))

    cells = {c: _text(rec.get(c)) for c in REQUIRED}
    for col in ("dialogue_id", "utterance_id", "speaker", "split"):
        if not cells[col]:
            bad(f"empty required cell {col!r}", f"fill in {col} for this row")
    split = SPLIT_ALIASES.get(cells["split"].lower())
    if cells["split"] and split is None:
        bad(f"unknown split {cells['split']!r}", "use train, dev (or valid/val/validation) or test")
    start, end = _span(rec, bad)
    order = _order(rec, bad)
    labels: dict[str, LabelValue] = {}
    for space, col in by_space.items():
        value, problem = _label_value(spaces[space], rec.get(col))
        if problem:
            bad(problem, _label_fix(spaces[space], col))
        labels[space] = value
    if len(problems) > n_before:
        return None
    if not cells["text"]:
        policies["empty_text_rows"] += 1
    utt = Utterance(id=cells["utterance_id"], dialogue_id=cells["dialogue_id"], speaker=cells["speaker"],
                    text=_text(rec.get("text")), split=split or "", labels=labels, start=start, end=end,
                    media=_media(table, row, rec, policies, findings, cells["utterance_id"]),
                    source_file=file, source_row=row)
    return _Record(row=row, utt=utt, order=order)


def _span(rec: dict[str, Any], bad) -> tuple[float | None, float | None]:
    out: list[float | None] = []
    for col in ("start", "end"):
        raw = rec.get(col)
        number = None if _is_empty(raw) else _number(raw)
        if not _is_empty(raw) and number is None:
            bad(f"{col} {raw!r} is not a number of seconds", f"write {col} in seconds, e.g. 12.5")
        elif number is not None and number < 0:
            bad(f"{col} {number} is negative", f"write {col} in seconds from the start of the media file")
        out.append(number)
    start, end = out
    if start is not None and end is not None and start >= end:
        bad(f"start {start} is not before end {end}", "swap or correct the times (start < end, in seconds)")
    return start, end


def _order(rec: dict[str, Any], bad) -> float | None:
    for col in ORDER_COLUMNS:
        if col in rec:
            number = _number(rec.get(col))
            if number is None:
                bad(f"{col} {rec.get(col)!r} is not a number", f"write the utterance's position in {col}")
            return number
    return None


def _media(table: _Table, row: int, rec: dict[str, Any], policies: dict, findings: list[Finding],
           utt_id: str) -> str | None:
    raw = next((_text(rec.get(c)) for c in MEDIA_COLUMNS if _text(rec.get(c))), "")
    if not raw:
        return None
    path = Path(raw).expanduser()
    path = path if path.is_absolute() else table.path.parent / path
    if path.is_file():
        return str(path)
    policies["missing_media"].append(utt_id)
    findings.append(Finding(file=str(table.path), row=row, utterance_id=utt_id,
                            problem=f"media file {path} not found; the audio/video features will be missing for "
                                    f"this utterance",
                            fix="correct the path (relative paths start at the manifest's folder) or add the file"))
    return None


# --- consistency and grouping ---------------------------------------------------------------------------
def _check_ids(path: Path, records: list[_Record], problems: list[Finding]) -> None:
    first_utt: dict[str, int] = {}
    first_split: dict[str, tuple[str, int]] = {}
    for r in records:
        u = r.utt
        if u.id in first_utt:
            problems.append(Finding(file=str(path), row=r.row, utterance_id=u.id,
                                    problem=f"duplicate utterance id {u.id!r} (rows {first_utt[u.id]} and {r.row})",
                                    fix="give every utterance a unique id, e.g. prefix it with the dialogue id"))
        else:
            first_utt[u.id] = r.row
        split, row = first_split.setdefault(u.dialogue_id, (u.split, r.row))
        if split != u.split:
            problems.append(Finding(file=str(path), row=r.row, utterance_id=u.id,
                                    problem=f"dialogue {u.dialogue_id!r} is spread across splits: {split!r} at row "
                                            f"{row}, {u.split!r} at row {r.row}",
                                    fix="keep every utterance of a dialogue in one split"))


def _group(path: Path, records: list[_Record], problems: list[Finding]) -> list[Dialogue]:
    by_dialogue: dict[str, list[_Record]] = {}
    for r in records:
        by_dialogue.setdefault(r.utt.dialogue_id, []).append(r)
    dialogues = []
    for dia, group in by_dialogue.items():
        if any(r.order is not None for r in group):
            _check_order(path, dia, group, problems)
            group = sorted(group, key=lambda r: r.order if r.order is not None else -math.inf)
        dialogues.append(Dialogue(id=dia, split=group[0].utt.split, utterances=[r.utt for r in group]))
    return dialogues


def _check_order(path: Path, dia: str, group: list[_Record], problems: list[Finding]) -> None:
    """Every utterance of a dialogue needs a position once one has, and no two may share one."""
    seen: dict[float, int] = {}
    for r in group:
        if r.order is None:
            problems.append(Finding(file=str(path), row=r.row, utterance_id=r.utt.id,
                                    problem=f"no index/position while other utterances of dialogue {dia!r} have one",
                                    fix="give every utterance of the dialogue its position"))
        elif r.order in seen:
            problems.append(Finding(file=str(path), row=r.row, utterance_id=r.utt.id,
                                    problem=f"utterances of dialogue {dia!r} at rows {seen[r.order]} and {r.row} "
                                            f"share position {r.order:g}",
                                    fix="give each utterance of a dialogue a distinct index/position"))
        else:
            seen[r.order] = r.row
