"""Errors and non-fatal findings that name the file, the row and the fix.

A researcher who hits bad input should never have to guess where it is or what to do about it, so
every problem we raise or record carries those three things.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Finding:
    """One problem with one input: where it is, what is wrong, and what to do about it."""

    file: str
    problem: str
    fix: str
    row: int | None = None  # 1-based data row of a table file (header excluded), or a line number
    utterance_id: str | None = None

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file}, row {self.row}"
        who = f" [{self.utterance_id}]" if self.utterance_id else ""
        return f"{where}{who}: {self.problem}. Fix: {self.fix}"

    def to_dict(self) -> dict:
        return asdict(self)


class MercError(Exception):
    """A user-facing error: the message already says file, row and fix."""

    def __init__(self, problem: str, *, file: str | None = None, row: int | None = None, fix: str = "",
                 utterance_id: str | None = None):
        self.finding = Finding(file=file or "-", problem=problem, fix=fix, row=row, utterance_id=utterance_id)
        super().__init__(str(self.finding))


class ManifestError(MercError):
    """A corpus on disk cannot be turned into a manifest as it stands."""


class ManifestErrors(ManifestError):
    """Several fatal problems found in one pass, so the user can fix them all at once."""

    def __init__(self, findings: list[Finding]):
        self.findings = list(findings)
        head = f"{len(findings)} problem(s) in the corpus:\n" + "\n".join(f"  - {f}" for f in findings[:20])
        if len(findings) > 20:
            head += f"\n  ... and {len(findings) - 20} more"
        Exception.__init__(self, head)
        self.finding = findings[0]
