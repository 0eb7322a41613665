"""Shared reading helpers for the corpus adapters: tolerant CSV/text reading with located errors.

Corpora arrive as whatever the user unpacked: UTF-8 with or without a BOM, CRLF or LF, sometimes
raw cp1252 (the whole file, or one stray byte pasted into a UTF-8 file), macOS ``._`` AppleDouble
files next to the real ones. These helpers absorb those differences once and turn every structural
problem into a Finding with the file, row and fix.

Text is decoded per physical line: UTF-8 never puts a newline byte inside a multibyte sequence, so
a line that is valid UTF-8 is kept exactly as written, and only the bytes of a line that are not
valid UTF-8 are decoded as cp1252. Every line repaired that way becomes a note, so no repair is silent.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Finding, ManifestError, ManifestErrors

BOM = b"\xef\xbb\xbf"
CP1252_FIX = "save the file as UTF-8, then check that the line reads as intended"
MAX_LINE_NOTES = 20  # per file; further repaired lines are listed together in one more note


def raise_problems(problems: Sequence[Finding]) -> None:
    """Raise all collected fatal problems at once (nothing happens when there are none)."""
    if problems:
        raise ManifestErrors(list(problems))


def is_hidden(name: str) -> bool:
    """Names to skip while scanning: macOS ``._`` AppleDouble files, ``.DS_Store`` and other dot files."""
    return name.startswith(".")


# --- decoding -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cp1252Line:
    """One physical line that was not valid UTF-8: its number and the bytes decoded as cp1252."""

    line: int  # 1-based physical line of the file
    swaps: tuple[tuple[int, str], ...]  # (byte, character it became), distinct, in order of appearance

    def describe(self) -> str:
        """``byte 0x92 -> ’`` or ``bytes 0x92 -> ’, 0xE9 -> é``, for the note."""
        shown = [f"0x{b:02X} -> {_show_char(ch)}" for b, ch in self.swaps[:6]]
        more = f" and {len(self.swaps) - 6} more" if len(self.swaps) > 6 else ""
        return f"byte{'s' if len(self.swaps) > 1 else ''} {', '.join(shown)}{more}"


def _show_char(ch: str) -> str:
    """The character as a reader can see it: invisible ones by code point and name."""
    if ch == "\ufffd":
        return "U+FFFD (the byte is undefined in cp1252)"
    if ch.isprintable() and not ch.isspace():
        return ch
    return f"U+{ord(ch):04X} {unicodedata.name(ch, '')}".rstrip()


@dataclass
class TextFile:
    """A decoded text file: its physical lines (terminators kept) and the lines decoded as cp1252."""

    path: Path
    lines: list[str]
    cp1252_lines: list[Cp1252Line]
    has_utf8: bool  # some non-ASCII text was valid UTF-8 (or the file starts with a UTF-8 BOM)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    @property
    def encoding(self) -> str:
        """What the policies record: ``utf-8``, ``cp1252`` or ``utf-8 with N line(s) decoded as cp1252``."""
        if not self.cp1252_lines:
            return "utf-8"
        if not self.has_utf8:
            return "cp1252"
        return f"utf-8 with {len(self.cp1252_lines)} line(s) decoded as cp1252"

    def numbered(self) -> Iterator[tuple[int, str]]:
        """(1-based line number, line without its terminator): numbers that match an editor's."""
        for number, line in enumerate(self.lines, start=1):
            yield number, line.rstrip("\r\n")

    def notes(self, rows: Mapping[int, int] | None = None, header_lines: int = 0) -> list[Finding]:
        """One non-fatal Finding per line decoded as cp1252 (the first MAX_LINE_NOTES, then one summary).

        rows: physical line -> data row, for table files whose rows are numbered apart from lines; the
        Finding's row is then the data row (None for header or blank lines). Without it the row is the line.
        """
        notes = [self._note(c, rows, header_lines) for c in self.cp1252_lines[:MAX_LINE_NOTES]]
        rest = [c.line for c in self.cp1252_lines[MAX_LINE_NOTES:]]
        if rest:
            notes.append(Finding(file=str(self.path), fix=CP1252_FIX,
                                 problem=f"{len(rest)} more line(s) are not valid UTF-8 and were decoded as "
                                         f"cp1252 the same way: lines {_ranges(rest)}"))
        return notes

    def _note(self, c: Cp1252Line, rows: Mapping[int, int] | None, header_lines: int) -> Finding:
        row = c.line if rows is None else rows.get(c.line)
        where = f"line {c.line}" + (" (the header)" if c.line <= header_lines else "")
        return Finding(file=str(self.path), row=row, fix=CP1252_FIX,
                       problem=f"{where} is not valid UTF-8; decoded as cp1252 ({c.describe()})")


def _ranges(numbers: list[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``3-5, 9``."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def read_lines(path: Path) -> TextFile:
    """Decode `path` line by line: UTF-8 (leading BOM dropped), and cp1252 only where a line is not UTF-8."""
    raw = path.read_bytes()
    has_bom = raw.startswith(BOM)
    lines: list[str] = []
    repaired: list[Cp1252Line] = []
    has_utf8 = has_bom
    for number, chunk in enumerate((raw[len(BOM):] if has_bom else raw).splitlines(keepends=True), start=1):
        try:
            line = chunk.decode("utf-8")
            has_utf8 = has_utf8 or not chunk.isascii()
        except UnicodeDecodeError:
            line, swaps, utf8_part = _decode_mixed(chunk)
            has_utf8 = has_utf8 or utf8_part
            repaired.append(Cp1252Line(number, swaps))
        lines.append(line)
    return TextFile(path=path, lines=lines, cp1252_lines=repaired, has_utf8=has_utf8)


# an undecodable byte b comes out of errors="surrogateescape" as the lone surrogate U+DC00 + b
_ESCAPED_TO_CP1252 = {0xDC00 + b: bytes([b]).decode("cp1252", errors="replace") for b in range(0x80, 0x100)}


def _decode_mixed(chunk: bytes) -> tuple[str, tuple[tuple[int, str], ...], bool]:
    """Decode a line that is not valid UTF-8: valid UTF-8 sequences as UTF-8, the other bytes as cp1252.

    So one stray cp1252 byte does not garble the correct characters around it. Returns the text, the
    distinct (byte, character) swaps and whether any non-ASCII UTF-8 sequence was kept.
    """
    escaped = chunk.decode("utf-8", errors="surrogateescape")
    swaps: dict[int, str] = {}
    utf8_part = False
    for ch in escaped:
        if ord(ch) in _ESCAPED_TO_CP1252:
            swaps.setdefault(ord(ch) - 0xDC00, _ESCAPED_TO_CP1252[ord(ch)])
        elif not ch.isascii():
            utf8_part = True
    return escaped.translate(_ESCAPED_TO_CP1252), tuple(swaps.items()), utf8_part


def require_root(root: str | Path, corpus: str, fix: str) -> Path:
    """Resolve a corpus root folder or raise an error that says what to pass instead."""
    path = Path(root).expanduser()
    if not path.exists():
        raise ManifestError(f"{corpus} root folder does not exist", file=str(path), fix=fix)
    return path.resolve()


# --- CSV ------------------------------------------------------------------------------------------------
@dataclass
class CsvTable:
    """A read CSV: canonical header, data rows numbered from 1 (header excluded), encoding used."""

    path: Path
    header: list[str]
    rows: list[tuple[int, dict[str, str]]]
    encoding: str  # as TextFile.encoding
    problems: list[Finding] = field(default_factory=list)  # rows with the wrong number of fields
    notes: list[Finding] = field(default_factory=list)  # non-fatal: lines decoded as cp1252


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
    (the caller raises them together with its own checks); lines decoded as cp1252 in `notes`,
    each with the data row it belongs to.
    """
    source = read_lines(path)
    reader = csv.reader(io.StringIO(source.text, newline=""), delimiter=delimiter)
    try:
        first = next(reader, None)
    except csv.Error as exc:
        raise ManifestError(f"cannot parse the header: {exc}", file=str(path), row=None,
                            fix="save the file as plain comma-separated text") from exc
    if first is None:
        raise ManifestError("the file is empty", file=str(path), fix=f"write a header line: {header_hint}")
    header_lines = reader.line_num  # more than 1 only when a quoted column name holds a newline
    header = _canonical_header(first, list(required) + list(optional))
    _check_header(path, header, required, header_hint)
    table = CsvTable(path=path, header=header, rows=[], encoding=source.encoding)
    row_of_line = _read_rows(reader, table)
    table.notes = source.notes(rows=row_of_line, header_lines=header_lines)
    return table


def _read_rows(reader: Any, table: CsvTable) -> dict[int, int]:
    """Fill table.rows/problems from a csv.reader past the header; returns physical line -> data row."""
    row_of_line: dict[int, int] = {}
    last_line = reader.line_num
    row_no = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            table.problems.append(Finding(file=str(table.path), row=row_no + 1,
                                          problem=f"unparsable row: {exc}",
                                          fix="check the quoting of this row"))
            break
        lines = range(last_line + 1, reader.line_num + 1)
        last_line = reader.line_num
        if not values or all(not v.strip() for v in values):
            continue  # blank line
        row_no += 1
        row_of_line.update(dict.fromkeys(lines, row_no))
        if len(values) != len(table.header):
            table.problems.append(Finding(
                file=str(table.path), row=row_no,
                problem=f"row has {len(values)} fields but the header has {len(table.header)}",
                fix="quote fields that contain the delimiter, or add the missing fields"))
            continue
        table.rows.append((row_no, dict(zip(table.header, values, strict=True))))
    return row_of_line


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
