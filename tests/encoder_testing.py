"""Helpers for the encoder-family tests: tiny models built once per test session, the CLI in-process, media.

Tiny models come from merc.tools.tiny_models (configs -> save_pretrained -> a folder that the real
`from_pretrained` code loads with HF_HUB_OFFLINE=1). They are built lazily, once per session, in a
temporary folder removed at exit. The CLI runs in-process (typer's CliRunner) so the ~3 s torch +
transformers import is paid once, not per command.
"""

from __future__ import annotations

import atexit
import csv
import functools
import shutil
import tempfile
from pathlib import Path

from typer.testing import CliRunner

from merc.tools import tiny_models
from merc.tools.tiny_models import write_video  # noqa: F401 - re-exported for the tests

_ROOT = Path(tempfile.mkdtemp(prefix="merc-tiny-models-"))
atexit.register(shutil.rmtree, _ROOT, True)


@functools.cache
def tiny_model(kind: str) -> Path:
    """Folder of the tiny model `kind` (a tiny_models.BUILDERS key), built on first use."""
    return tiny_models.build(kind, _ROOT / kind)


def extract_cli(*args, code: int | None = 0) -> str:
    """`merc-extract ARGS` in this process; asserts the exit code and returns the output."""
    from merc.extract.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    out = result.output + (f"\n{result.exception!r}" if result.exception and not isinstance(result.exception, SystemExit) else "")
    if code is not None:
        assert result.exit_code == code, out
    return out


def write_csv_manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path
