"""A restricted unpickler for the community's feature pickles: data in, never code.

The legacy ERC pickles and the MMSA files are downloaded from the internet; `pickle.load` on them would
run whatever callable their `__reduce__` payload names (`os.system`, `builtins.eval`, ...). This loader
resolves a global only from an allow-list of the constructors that plain data needs (containers, numbers,
strings, bytes, numpy arrays / dtypes / scalars, OrderedDict / defaultdict), each checked before use:

* a global of a module this Python could import (``os``, ``subprocess``, ``builtins``, ``posix`` ...) that
  is not on the allow-list is refused at once (`UnsafePickleError` naming ``module.name`` and the file);
* a class of a module that is not importable (``cogmen.Sample`` written by COGMEN's preprocessing) or of a
  known community module becomes a `PlainRecord` class made here: its instances are dicts holding the
  pickled state. Nothing of that module is imported, looked up or called. Using such a global as a
  callable (a `REDUCE` with arguments, the way a payload would call a function) is refused too.

Python 2 pickles (most IEMOCAP files, formats.md F) load: strings are decoded as latin1, which is also
what numpy needs to rebuild arrays pickled by Python 2, and Python 2 module names are mapped to Python 3
ones (``__builtin__`` -> ``builtins``, ``copy_reg`` -> ``copyreg``) before the allow-list is consulted.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import importlib.util
import io
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np

from merc.data_manifests.errors import ManifestError

# top-level modules whose classes always become records, even where the package is installed
COMMUNITY_MODULES = frozenset({"cogmen", "corect", "COGMEN", "CORECT", "__main__", "dataset", "Sample"})


class UnsafePickleError(ManifestError):
    """A pickle asked for a global outside the allow-list (a payload that would run code); nothing ran."""


class PickleReadError(ManifestError):
    """A file is not a complete pickle (truncated, damaged, or another kind of file)."""


class PlainRecord(dict):
    """An instance of a class merc does not import (e.g. ``cogmen.Sample``), kept as its pickled state.

    A dict of the instance's ``__dict__``; ``record.vid`` reads ``record["vid"]``. `record_class` says
    which class it stood for (``cogmen.Sample``); `args` holds constructor arguments `NEWOBJ` passed.
    """

    record_module = ""
    record_name = ""

    def __new__(cls, *args: Any, **kwargs: Any):
        self = super().__new__(cls)
        if args:
            dict.__setitem__(self, "__args__", list(args))
        return self

    def __setstate__(self, state: Any) -> None:
        """Pickle's BUILD: a dict (or a (dict, slots) pair) becomes the record's items; anything else is kept."""
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            for part in state:
                self.update(part or {})
        elif isinstance(state, dict):
            self.update(state)
        else:
            dict.__setitem__(self, "__state__", state)

    def append(self, value: Any) -> None:  # a pickled list subclass: APPEND(S) land here
        self.setdefault("__items__", []).append(value)

    def extend(self, values: Any) -> None:
        self.setdefault("__items__", []).extend(values)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{self.record_class} record has no field {name!r}") from None

    @property
    def record_class(self) -> str:
        return f"{self.record_module}.{self.record_name}"

    def __repr__(self) -> str:
        return f"<{self.record_class} record {dict.__repr__(self)}>"

    def __reduce__(self):  # a record pickles (e.g. into a dask task) as a plain dict
        return (dict, (dict(self),))


class _RecordMeta(type):
    """The metaclass of the record classes made per pickle: calling one (REDUCE) is refused, and no
    attribute can be set on one (BUILD on the class itself)."""

    def __call__(cls, *args: Any, **kwargs: Any):
        raise type.__getattribute__(cls, "_refusal")(f"{cls.record_module}.{cls.record_name}",
                                                     "called (the way a payload runs a function)")

    def __setattr__(cls, name: str, value: Any) -> None:
        raise type.__getattribute__(cls, "_refusal")(f"{cls.record_module}.{cls.record_name}",
                                                     f"BUILD setting the class attribute {name!r}")


class _Checked:
    """An allow-listed callable whose arguments are checked first; a slotted instance, so BUILD cannot
    change it."""

    __slots__ = ("_fn", "_what")

    def __init__(self, fn, what: str):
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_what", what)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{self._what} cannot be changed")

    def __repr__(self) -> str:
        return f"<allow-listed {self._what}>"


# -- the allow-list ------------------------------------------------------------------------------------
_BUILTIN_TYPES = {name: getattr(__import__("builtins"), name) for name in (
    "list", "dict", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int", "float", "complex",
    "bool", "slice", "range", "object")}
_SAFE_TYPES = frozenset(_BUILTIN_TYPES.values()) | {collections.OrderedDict, collections.defaultdict,
                                                     collections.deque, np.ndarray, np.dtype}


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """numpy's reconstruction functions, under the module names numpy 1 and numpy 2 pickles use."""
    multiarray = sys.modules.get("numpy._core.multiarray") or sys.modules["numpy.core.multiarray"]
    numeric = sys.modules.get("numpy._core.numeric") or sys.modules["numpy.core.numeric"]
    out: dict[tuple[str, str], Any] = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "_reconstruct")] = _Checked(_checked_reconstruct(multiarray._reconstruct), f"{mod}._reconstruct")
        out[(mod, "scalar")] = _Checked(multiarray.scalar, f"{mod}.scalar")
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        out[(mod, "_frombuffer")] = _Checked(numeric._frombuffer, f"{mod}._frombuffer")
    out[("numpy", "ndarray")] = np.ndarray
    out[("numpy", "dtype")] = np.dtype
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "ndarray")] = np.ndarray
        out[(mod, "dtype")] = np.dtype
    return out


def _checked_reconstruct(fn):
    def reconstruct(subtype, shape, dtype):
        if subtype is not np.ndarray:
            raise TypeError(f"_reconstruct of {subtype!r}: only numpy.ndarray is rebuilt")
        return fn(subtype, shape, dtype)

    return reconstruct


def _encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode``, as protocol 0-2 pickles use it to store bytes: text codecs only."""
    if codecs.lookup(encoding).name not in ("latin-1", "iso8859-1", "utf-8", "ascii"):
        raise TypeError(f"_codecs.encode with {encoding!r}: only latin1/utf-8/ascii are allowed")
    return str(text).encode(encoding, errors)


# -- the unpickler -------------------------------------------------------------------------------------
class SafeUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose `find_class` serves only the allow-list (see the module docstring)."""

    def __init__(self, file, where: str):
        super().__init__(file, encoding="latin1", errors="strict")
        self.where = where
        self._records: dict[tuple[str, str], type] = {}
        self._allowed = {**{("builtins", n): t for n, t in _BUILTIN_TYPES.items()},
                         ("collections", "OrderedDict"): collections.OrderedDict,
                         ("collections", "defaultdict"): collections.defaultdict,
                         ("collections", "deque"): collections.deque,
                         ("_codecs", "encode"): _Checked(_encode, "_codecs.encode"),
                         ("copyreg", "_reconstructor"): _Checked(self._reconstructor, "copyreg._reconstructor"),
                         ("copyreg", "__newobj__"): _Checked(self._newobj, "copyreg.__newobj__"),
                         **_numpy_globals()}

    def find_class(self, module: str, name: str) -> Any:
        module, name = _python3_name(module, name)
        found = self._allowed.get((module, name))
        if found is not None:
            return found
        if _is_record_module(module):
            return self._record_class(module, name)
        raise self._refusal(f"{module}.{name}", "not on the allow-list of data constructors")

    def persistent_load(self, pid: Any) -> Any:
        raise self._refusal(f"persistent id {pid!r}", "persistent references are not data")

    def _refusal(self, what: str, why: str) -> UnsafePickleError:
        return UnsafePickleError(
            f"refused to unpickle {what}: {why}; merc reads pickles as data only and nothing in the file was "
            "run", file=self.where,
            fix="check where the file comes from; a genuine feature pickle holds only containers, numbers, "
                "strings and numpy arrays (classes such as cogmen.Sample are read as plain records)")

    def _record_class(self, module: str, name: str) -> type:
        key = (module, name)
        if key not in self._records:
            cls = _RecordMeta(name, (PlainRecord,), {"record_module": module, "record_name": name,
                                                      "__module__": __name__, "__qualname__": f"record:{module}.{name}",
                                                      "_refusal": self._refusal})
            self._records[key] = cls
        return self._records[key]

    def _is_record(self, cls: Any) -> bool:
        return isinstance(cls, _RecordMeta) and cls in self._records.values()

    def _reconstructor(self, cls: Any, base: Any, state: Any = None) -> Any:
        """copyreg._reconstructor: how Python 2 protocol 0/1 pickles rebuild instances of new-style classes."""
        if self._is_record(cls) and base in (object, dict, list):
            return PlainRecord.__new__(cls)
        if cls in _SAFE_TYPES and base in _SAFE_TYPES:
            return base.__new__(cls) if state is None else base.__new__(cls, state)
        raise self._refusal(f"copyreg._reconstructor({cls!r}, {base!r})", "rebuilds a class outside the allow-list")

    def _newobj(self, cls: Any, *args: Any) -> Any:
        if self._is_record(cls):
            return PlainRecord.__new__(cls, *args)
        if cls in _SAFE_TYPES:
            return cls.__new__(cls, *args)
        raise self._refusal(f"copyreg.__newobj__({cls!r})", "creates a class outside the allow-list")


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """Python 2 names -> Python 3 names, as pickle's own fix_imports does (skipped by a custom find_class)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _is_record_module(module: str) -> bool:
    """True for community modules and for modules this Python cannot import (found without importing:
    only the top-level name is looked up, which runs no module code)."""
    top = module.split(".")[0]
    if top in COMMUNITY_MODULES:
        return True
    if top in sys.builtin_module_names or top in sys.modules:
        return False
    try:
        return importlib.util.find_spec(top) is None
    except (ImportError, ValueError):
        return True


# -- public API ----------------------------------------------------------------------------------------
def loads(data: bytes, where: str = "<bytes>") -> Any:
    """Unpickle `data` through the allow-list; `where` names the source in errors."""
    return _load(io.BytesIO(data), where)


def load(path: str | Path) -> Any:
    """Unpickle the file at `path` through the allow-list (Python 2 pickles included)."""
    path = Path(path)
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise PickleReadError(f"cannot open the file: {exc.strerror or exc}", file=str(path),
                              fix="pass the path of an existing, readable pickle") from None
    with fh:
        return _load(io.BufferedReader(fh, 1 << 20), str(path))


def _load(stream, where: str) -> Any:
    try:
        obj = SafeUnpickler(stream, where).load()
    except UnsafePickleError:
        raise
    except (EOFError, pickle.UnpicklingError) as exc:
        if not isinstance(exc, EOFError) and "truncated" not in str(exc):
            raise PickleReadError(f"not a readable pickle ({exc})", file=where,
                                  fix="pass the original file; if it was copied or downloaded, check it is complete "
                                      "(compare its SHA-256 with the source's)") from None
        raise PickleReadError("the pickle ends before its STOP opcode: the file is truncated", file=where,
                              fix="download or copy the file again (compare its size and SHA-256 with the "
                                  "source's)") from None
    except Exception as exc:  # noqa: BLE001 - any failure of a malformed stream is "not a readable pickle"
        raise PickleReadError(f"not a readable pickle ({type(exc).__name__}: {exc})", file=where,
                              fix="pass the original file; if it was copied or downloaded, check it is complete "
                                  "(compare its SHA-256 with the source's)") from None
    return obj


__all__ = ["COMMUNITY_MODULES", "PickleReadError", "PlainRecord", "SafeUnpickler", "UnsafePickleError", "load",
           "loads"]
