"""Importers of the feature files the community already shares, behind one name -> importer registry.

An importer is an object (or a class, instantiated without arguments) with

    detect(obj_or_path) -> bool      by structure only (tuple length, keys, value shapes), never by file name;
                                     it gets the unpickled object when the file is a pickle (read through
                                     `safe_pickle`), else the file's Path (e.g. an HDF5 `.csd`)
    read(path, dataset, **options) -> ImportedCorpus
                                     `options` may carry `loaded=` (the object detect saw) when `read`
                                     names that parameter, so a large pickle is read once

registered like the corpus adapters: ``@IMPORTERS.register("mmsa", "what it reads")`` in its module, and
the module named in the lazy table below so that it is imported only when needed. `find_importer` tries
each family in turn; `write_import` commits the result to a store (write.py).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from merc.data_manifests.errors import ManifestError
from merc.data_manifests.registry import Registry

from .base import ImportedCorpus, ImportedFeatures, sha256_of, source_record
from .safe_pickle import PickleReadError, PlainRecord, UnsafePickleError
from .structure import describe
from .write import write_import


class Importer(Protocol):
    def detect(self, obj_or_path: Any) -> bool: ...

    def read(self, path: str | Path, dataset: str, **options: Any) -> ImportedCorpus: ...


# name -> importer; each module registers its own with `@IMPORTERS.register(name, description)`. Tried in this
# order by `find_importer`. A module that is not there (yet) only fails when its family is chosen by name.
IMPORTERS: Registry[Any] = Registry("importer family", lazy={
    "cogmen-mosei": "merc.extract.importers.cogmen_mosei",
    "erc": "merc.extract.importers.erc_pickle",
    "cosmic-text": "merc.extract.importers.erc_pickle",
    "cosmic-comet": "merc.extract.importers.comet",
    "mmsa": "merc.extract.importers.mmsa",
    "csd": "merc.extract.importers.csd",
})
FAMILY_HINTS = {  # for error messages, without importing anything; tried in this order
    "cogmen-mosei": "COGMEN/CORECT MOSEI pickles categorical.p / tbje_mosei_updated.pkl (9/10-tuples, audio 80, "
                    "visual 35)",
    "erc": "legacy ERC feature pickles: DialogueRNN / DialogueGCN / MMGCN / MM-DFN / SDT / COSMIC / COGMEN / "
           "CORECT (tuples of per-dialogue dicts + split lists; dicts of Sample lists)",
    "cosmic-text": "COSMIC text-only pickles iemocap.pkl / meld.pkl (speakers, labels, sentences, split ids)",
    "cosmic-comet": "COSMIC COMET features *_features_comet.pkl (9 dicts xIntent ... oReact), added onto a "
                    "dataset already in the store",
    "mmsa": "MMSA aligned_50.pkl / unaligned_50.pkl ({train, valid, test} of arrays)",
    "csd": "CMU-MultimodalSDK computational sequences (.csd, HDF5) with a --labels csd",
}
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


class UnknownFormatError(ManifestError):
    """No importer family recognises a file's structure."""


@dataclass
class Detection:
    name: str  # the importer's registry name
    importer: Any
    loaded: Any  # the unpickled object (or the Path of a non-pickle file) that detect() accepted


def importer(name: str) -> Any:
    """The importer registered as `name` (a class is instantiated), importing its module on first use."""
    try:
        obj = IMPORTERS.get(name)
    except KeyError:
        raise ManifestError(f"unknown importer family {name!r}", file="--family",
                            fix=f"use one of {', '.join(IMPORTERS.names())}") from None
    except ImportError as exc:
        raise ManifestError(f"the {name!r} importer cannot be loaded ({exc})", file="--family",
                            fix="this merc installation lacks that importer; use another --family") from None
    return obj() if inspect.isclass(obj) else obj


def load_file(path: str | Path) -> Any:
    """What detect() sees of a file: the unpickled object, or the Path of an HDF5 / non-pickle file."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError("no such file", file=str(path), fix="pass the path of the feature file to import")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(HDF5_MAGIC):
        return path
    from . import safe_pickle

    try:
        return safe_pickle.load(path)
    except PickleReadError:
        if head[:1] == b"\x80":  # a pickle (protocol 2+) that does not read: truncated or damaged
            raise
        return path  # not a pickle at all: an importer may read it from its path


def find_importer(path: str | Path, dataset: str, family: str | None = None, loaded: Any = None) -> Detection:
    """The family whose detect() accepts the file (or `family`, when given, after checking it does)."""
    obj = load_file(path) if loaded is None else loaded
    names = [family] if family else family_order()
    unavailable: list[str] = []
    crashed: list[str] = []
    hints: list[str] = []  # an importer's word on a file that almost has its structure
    for name in names:
        try:
            imp = importer(name)
        except ManifestError:
            if family:
                raise
            unavailable.append(name)
            continue
        try:
            accepted = imp.detect(obj)
        except Exception as exc:  # noqa: BLE001 - a detector that trips on a foreign structure says no
            crashed.append(f"{name} ({type(exc).__name__}: {exc})")
            accepted = False
        if accepted:
            return Detection(name, imp, obj)
        hint = getattr(imp, "near_miss", None)
        if hint is not None and (why := hint(obj)):
            hints.append(why)
    known = "; ".join(f"{n}: {FAMILY_HINTS.get(n) or IMPORTERS.description(n)}"
                      for n in family_order() if n not in unavailable)
    what = (f"the {family!r} family does not recognise the file" if family
            else "no importer family recognises the file")
    if crashed:
        what += f" (detectors that failed on it: {', '.join(crashed)})"
    raise UnknownFormatError(
        f"{what} (importing as --dataset {dataset}); it holds {describe(obj)}"
        + "".join(f"; {h}" for h in hints), file=str(path),
        fix=f"pass a file of a known family ({known}); a truncated or re-saved file has another structure: "
            "compare it with the original")


def read_import(path: str | Path, dataset: str, family: str | None = None, **options: Any) -> tuple[str, ImportedCorpus]:
    """Detect and read a file: (family name, ImportedCorpus)."""
    found = find_importer(path, dataset, family)
    read = found.importer.read
    params = inspect.signature(read).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        accepted = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and n != "loaded"]
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ManifestError(f"the {found.name} importer takes no {', '.join(unknown)} option", file=str(path),
                                fix=f"its options are: {', '.join(accepted) or 'none'} (--labels is for families that "
                                    "keep labels in a file of their own, such as csd)")
    if "loaded" in params:
        options = {**options, "loaded": found.loaded}
    return found.name, read(path, dataset, **options)


def family_order() -> list[str]:
    """The order families are tried in: the built-in table's, then families registered by others."""
    builtin = list(FAMILY_HINTS)
    return [n for n in builtin if n in IMPORTERS] + sorted(n for n in IMPORTERS.names() if n not in builtin)

__all__ = ["FAMILY_HINTS", "IMPORTERS", "Detection", "ImportedCorpus", "ImportedFeatures", "Importer",
           "PickleReadError", "PlainRecord", "UnknownFormatError", "UnsafePickleError", "describe", "family_order", "find_importer",
           "importer", "load_file", "read_import", "sha256_of", "source_record", "write_import"]
