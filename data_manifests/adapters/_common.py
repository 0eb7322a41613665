"""Shared reading helpers for the corpus adapters: tolerant CSV/text reading with located errors.

Corpora arrive as whatever the user unpacked: UTF-8 with or without a BOM, CRLF or LF, sometimes
raw cp1252, macOS ``._`` AppleDouble files next to the real ones. These helpers absorb those
differences once and turn every structural problem into a Finding with the file, row and fix.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Finding, ManifestError, ManifestErrors


def raise_problems(problems: Sequence[Finding]) -> None:
    """Raise all collected fatal problems at once (nothing happens when there are none)."""
    if problems:
        raise ManifestErrors(list(problems))


def is_hidden(name: str) -> bool:
    """Names to skip while scanning: macOS ``._`` AppleDouble files, ``.DS_Store`` and other dot files."""
    return name.startswith(".")


def read_text(path: Path) -> tuple[str, str]:
    """Read a whole text file as UTF-8 (BOM stripped), falling back to cp1252; returns (text, encoding)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace"), "cp1252"


def require_root(root: str | Path, corpus: str, fix: str) -> Path:
    """Resolve a corpus root folder or raise an error that says what to pass instead."""
    path = Path(root).expanduser()
    if not path.exists():
        raise ManifestError(f"{corpus} root folder does not exist", file=str(path), fix=fix)
    return path.resolve()


@dataclass
class CsvTable:
    """A read CSV: canonical header, data rows numbered from 1 (header excluded), encoding used."""

    path: Path
    header: list[str]
    rows: list[tuple[int, dict[str, str]]]
    encoding: str
    problems: list[Finding] = field(default_factory=list)  # rows with the wrong number of fields


def _canonical_header(fields: Iterable[str], known: Sequence[str]) -> list[str]:
    lookup = {k.lower(): k for k in known}
    out = []
    for name in fields:
        clean = (name or "").replace("\ufeff", "").strip()
        out.append(lookup.get(clean.lower(), clean))
    return out


def read_csv(path: Path, *, required: Sequence[str], optional: Sequence[str] = (), header_hint: str,
             delimiter: str = ",") -> CsvTable:
    """Read `path` into a CsvTable, raising at once if a required column is missing.

    Column names are matched case- and whitespace-insensitively and renamed to the spelling in
    `required`/`optional`. Rows with too many or too few fields are collected in `problems`
    (the caller raises them together with its own checks).
    """
    text, encoding = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        first = next(reader, None)
    except csv.Error as exc:
        raise ManifestError(f"cannot parse the header: {exc}", file=str(path), row=None,
                            fix="save the file as plain comma-separated text") from exc
    if first is None:
        raise ManifestError("the file is empty", file=str(path), fix=f"write a header line: {header_hint}")
    header = _canonical_header(first, list(required) + list(optional))
    _check_header(path, header, required, header_hint)
    table = CsvTable(path=path, header=header, rows=[], encoding=encoding)
    row_no = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            table.problems.append(Finding(file=str(path), row=row_no + 1, problem=f"unparsable row: {exc}",
                                          fix="check the quoting of this row"))
            break
        if not values or all(not v.strip() for v in values):
            continue  # blank line
        row_no += 1
        if len(values) != len(header):
            table.problems.append(Finding(
                file=str(path), row=row_no,
                problem=f"row has {len(values)} fields but the header has {len(header)}",
                fix="quote fields that contain the delimiter, or add the missing fields"))
            continue
        table.rows.append((row_no, dict(zip(header, values, strict=True))))
    return table


def _check_header(path: Path, header: list[str], required: Sequence[str], header_hint: str) -> None:
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise ManifestError(f"column(s) {duplicated} appear more than once in the header", file=str(path),
                            fix="give every column a unique name")
    missing = [c for c in required if c not in header]
    if missing:
        raise ManifestError(
            f"missing column(s) {', '.join(repr(c) for c in missing)}; columns found: {', '.join(header)}",
            file=str(path), fix=f"add the missing column(s); the header should read: {header_hint}")
