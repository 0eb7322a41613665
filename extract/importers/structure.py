"""A short description of an unpickled object's shape, for the errors of importers that do not recognise a file.

When no family matches, the user (and whoever adds the family) needs to see what the file holds:
the top-level type, the length of a tuple/list, and for each element its type, its keys and a sample
value's type or array shape. Only the first few items of anything are looked at, so this is cheap on
a gigabyte pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MAX_ITEMS = 14


def describe(obj: Any, depth: int = 0) -> str:
    """e.g. ``tuple of 9: [dict of 3 (str -> list of 4 str), ..., list of 2 str]``."""
    if isinstance(obj, Path):
        return f"a non-pickle file ({obj.name})"
    if isinstance(obj, np.ndarray):
        return f"ndarray{tuple(obj.shape)} {obj.dtype}"
    if isinstance(obj, np.generic):
        return f"numpy {obj.dtype}"
    if isinstance(obj, dict):
        kind = type(obj).__name__ if type(obj) is dict else getattr(obj, "record_class", type(obj).__name__)
        if not obj:
            return f"empty {kind}"
        key, value = next(iter(obj.items()))
        if depth >= 2:
            return f"{kind} of {len(obj)}"
        if depth == 0 and all(isinstance(k, str) for k in obj) and len(obj) <= MAX_ITEMS:
            inner = ", ".join(f"{k!r}: {describe(v, depth + 1)}" for k, v in obj.items())
            return f"{kind} of {len(obj)} {{{inner}}}"
        return f"{kind} of {len(obj)} ({_scalar(key)} -> {describe(value, depth + 1)})"
    if isinstance(obj, (list, tuple, set, frozenset)):
        kind = type(obj).__name__
        items = list(obj)[:MAX_ITEMS] if not isinstance(obj, (set, frozenset)) else list(obj)[:1]
        if not items:
            return f"empty {kind}"
        if depth == 0 and isinstance(obj, (list, tuple)) and len(obj) <= MAX_ITEMS:
            return f"{kind} of {len(obj)}: [" + ", ".join(describe(v, depth + 1) for v in items) + "]"
        return f"{kind} of {len(obj)} {describe(items[0], depth + 1) if depth < 3 else _scalar(items[0])}"
    return _scalar(obj)


def _scalar(value: Any) -> str:
    if isinstance(value, str):
        return "str"
    return type(value).__name__
