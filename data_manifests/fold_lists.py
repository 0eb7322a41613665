"""Split lists shipped with merc: which video (dialogue) ids form each split of a corpus's standard folds.

Numbers on MOSI/MOSEI are only comparable on the exact community folds (CMU-MultimodalSDK
``cmu_mosi_std_folds.py`` / ``cmu_mosei_std_folds.py``), and a `.csd` release carries no split at all, so
the folds travel with the package as plain text under ``data_manifests/splits/``:

    <corpus>_<fold>_<split>.txt    e.g. mosei_standard_dev.txt

one id per line, kept as a string exactly as written (MOSEI has purely numeric ids such as ``81406``),
``#`` lines are comments that say where the list was read. A list that is not shipped is an error that
names the file that would hold it, never a silent random split.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import ManifestError

SPLIT_DIR = Path(__file__).parent / "splits"
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class FoldLists:
    """The ids of each split of one named fold of a corpus, and the files they were read from."""

    corpus: str
    fold: str
    ids: dict[str, tuple[str, ...]]  # split -> ids, in the file's order
    files: dict[str, str]  # split -> path of the list
    source: str  # the lists' comment lines (where they come from)

    def split_of(self, video_id: str) -> str | None:
        """The split holding `video_id`, or None when no list names it."""
        return self._index.get(video_id)

    @functools.cached_property
    def _index(self) -> dict[str, str]:
        return {v: s for s, ids in self.ids.items() for v in ids}

    def describe(self) -> dict:
        """What a manifest's policies record about the folds used."""
        return {"corpus": self.corpus, "fold": self.fold, "files": dict(self.files),
                "videos": {s: len(v) for s, v in self.ids.items()}, "source": self.source}


def list_path(corpus: str, fold: str, split: str, folder: Path | None = None) -> Path:
    return (folder or SPLIT_DIR) / f"{corpus}_{fold}_{split}.txt"


def available_folds(corpus: str, folder: Path | None = None) -> list[str]:
    """Fold names with at least one list shipped for `corpus`."""
    folds = set()
    for p in (folder or SPLIT_DIR).glob(f"{corpus}_*_*.txt"):
        stem = p.stem[len(corpus) + 1:]
        fold, _, split = stem.rpartition("_")
        if fold and split in SPLITS:
            folds.add(fold)
    return sorted(folds)


def load_folds(corpus: str, fold: str = "standard", *, folder: Path | None = None,
               splits: Iterable[str] = SPLITS) -> FoldLists:
    """Read the lists of `corpus`/`fold`; a missing list or an id in two lists is an error naming the file."""
    folder = folder or SPLIT_DIR
    ids: dict[str, tuple[str, ...]] = {}
    files: dict[str, str] = {}
    comments: list[str] = []
    missing = [list_path(corpus, fold, s, folder) for s in splits if not list_path(corpus, fold, s, folder).is_file()]
    if missing:
        others = available_folds(corpus, folder)
        raise ManifestError(
            f"no {corpus} '{fold}' split list: {', '.join(str(p) for p in missing)} not found",
            file=str(missing[0]),
            fix=(f"use one of the folds shipped for {corpus}: {', '.join(others)}" if others else
                 f"merc ships no split lists for {corpus!r}; write one file per split "
                 f"({', '.join(p.name for p in missing)}: one video id a line) into {folder}, "
                 "or use splits that the source file itself carries"))
    seen: dict[str, str] = {}
    for split in splits:
        path = list_path(corpus, fold, split, folder)
        entries = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            text = line.strip()
            if text.startswith("#"):
                if split == SPLITS[0] and number > 1:  # the train list's notes, after its title line
                    comments.append(text.lstrip("# ").removeprefix("source: "))
                continue
            if not text:
                continue
            if text in seen:
                raise ManifestError(f"video id {text!r} is listed in both {seen[text]} and {split}", file=str(path),
                                    row=number, fix="keep every video in exactly one split list")
            seen[text] = split
            entries.append(text)
        ids[split] = tuple(entries)
        files[split] = str(path)
    return FoldLists(corpus=corpus, fold=fold, ids=ids, files=files, source=" ".join(comments))
