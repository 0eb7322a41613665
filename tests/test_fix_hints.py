"""Every fix hint names options that exist: a hint that points at `--encoder clip` or "drop the fingerprint
check" sends the user nowhere. The hints are read from the source (every `fix=` argument, string parts of
f-strings included) and each `--option` in them is looked up in the real command-line tools."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import typer.main

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data_manifests", "extract", "heads", "pipelines")
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
# options of other programs that a hint may quote (`hf download --local-dir`), and every tool's --help
FOREIGN = {"--local-dir", "--help"}


def cli_options() -> set[str]:
    from merc.extract.cli import app as extract_app
    from merc.heads.cli import app as heads_app

    found: set[str] = set()

    def walk(cmd) -> None:
        for p in cmd.params:
            found.update(o for o in p.opts + p.secondary_opts if o.startswith("--"))
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    for app in (extract_app, heads_app):
        walk(typer.main.get_command(app))
    return found


def fix_texts() -> list[tuple[str, int, str]]:
    """(file, line, text) of every fix hint: `fix=` keyword arguments and module constants named *_FIX."""
    out = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                values = []
                if isinstance(node, ast.keyword) and node.arg == "fix":
                    values.append(node.value)
                if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.endswith("FIX")
                                                        for t in node.targets):
                    values.append(node.value)
                for value in values:
                    text = "".join(_strings(value))
                    if text:
                        out.append((str(path.relative_to(ROOT)), value.lineno, text))
    return out


def _strings(node) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    parts = []
    for child in ast.iter_child_nodes(node):
        parts.extend(_strings(child))
    if isinstance(node, ast.FormattedValue):
        return [" {} "]
    return parts


def test_fix_hints_are_found():
    texts = fix_texts()
    assert len(texts) > 100  # the scan sees the hints (a broken scan must not pass silently)
    assert any("--overwrite" in t for _, _, t in texts)


def test_every_option_named_in_a_fix_hint_exists():
    options = cli_options() | FOREIGN
    assert {"--overwrite", "--keep-frames", "--store", "--set", "--features"} <= options
    bad = [f"{f}:{line}: {opt} in {text!r}" for f, line, text in fix_texts() for opt in OPTION.findall(text)
           if opt not in options]
    assert not bad, "fix hints name options that do not exist:\n" + "\n".join(bad)


def test_no_hint_points_at_a_known_dead_end():
    dead = ("restrict splits=", "drop the fingerprint check", "--encoder clip", "huggingface-cli")
    bad = [f"{f}:{line}: {text!r}" for f, line, text in fix_texts() if any(d in text for d in dead)]
    assert not bad, bad
