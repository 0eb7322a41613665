"""The terminal output both command-line tools share (this package is the base of the dependency chain).

Piped or redirected output (a log file, `| tee`, CI) must stay whole: no hard line breaks in the middle
of a path or a command to copy, and no table column cut to "dialogu…" because rich assumed 80 columns.
On a terminal, rich sizes to the window as usual.
"""

from __future__ import annotations

import sys

PIPED_WIDTH = 4096  # wide enough that no table is squeezed; tables still take only the width they need


def make_console(*, stderr: bool = False):
    """A rich Console that never hard-wraps printed text, and never cuts tables when not on a terminal."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    tty = bool(getattr(stream, "isatty", lambda: False)())
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=None if tty else PIPED_WIDTH)


class TerminalBar:
    """Base of a command's progress display: `self.progress` is a rich Progress on a terminal and None elsewhere
    (a log file gets no bar residue); entering and leaving the display go through here."""

    progress = None

    def __enter__(self):
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc) if self.progress is not None else None
