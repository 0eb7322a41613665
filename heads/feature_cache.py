"""Keep a store's features in memory across runs of one process: a sweep worker reads each feature set once.

A single `merc-heads train` reads its features once and exits, so nothing is kept by default. A process that
trains many runs on the same store (a sweep worker, `merc.pipelines.sweep`) calls `keep_features()` first;
from then on every `HeadsData.load` in that process gets the same `CachingReader` per store, which keeps the
manifest table, the dialogue states, the pooled arrays and the frame sequences it has read (each read once,
checksums checked once). Values handed out are never mutated by their readers (HeadsData copies what it
changes), so sharing them between runs is safe.

The cache assumes the store does not change while the process lives: a sweep is run against a finished
extraction. `clear()` drops everything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from merc.extract.store import PooledFeatures, StoreReader

_readers: dict[str, CachingReader] | None = None  # None: caching off (the default)
stats = {"pooled_reads": 0, "pooled_hits": 0, "frames_reads": 0, "frames_hits": 0}


class CachingReader(StoreReader):
    """A StoreReader that also keeps what `load_pooled` returned and what `HeadsData` built from frames."""

    def __init__(self, path: str | Path):
        super().__init__(path)
        self._pooled: dict[tuple[str, str], PooledFeatures] = {}
        self._memo: dict[tuple, Any] = {}

    def load_pooled(self, dataset: str, feature_set: str, *, fingerprint_hash: str | None = None,
                    allow_incomplete: bool = False) -> PooledFeatures:
        key = (dataset, feature_set)
        if allow_incomplete or key not in self._pooled:
            pooled = super().load_pooled(dataset, feature_set, fingerprint_hash=fingerprint_hash,
                                         allow_incomplete=allow_incomplete)
            stats["pooled_reads"] += 1
            if not allow_incomplete:
                self._pooled[key] = pooled
            return pooled
        if fingerprint_hash and self.info(dataset, feature_set).get("fingerprint_hash") != fingerprint_hash:
            return super().load_pooled(dataset, feature_set, fingerprint_hash=fingerprint_hash)  # raises, saying why
        stats["pooled_hits"] += 1
        return self._pooled[key]

    def memo(self, key: tuple, build: Callable[[], Any]) -> Any:
        """`build()` once per key (frame sequences: key names the feature set, the cap and the statistics)."""
        if key not in self._memo:
            stats["frames_reads"] += 1
            self._memo[key] = build()
        else:
            stats["frames_hits"] += 1
        return self._memo[key]


def keep_features() -> None:
    """From now on, this process reads each store's features once (idempotent)."""
    global _readers
    if _readers is None:
        _readers = {}


def clear() -> None:
    """Forget every kept store and turn caching off."""
    global _readers
    _readers = None
    for k in stats:
        stats[k] = 0


def reader(store: str | Path) -> StoreReader:
    """The reader `HeadsData.load` uses: a fresh StoreReader, or the kept CachingReader of this store."""
    if _readers is None:
        return StoreReader(store)
    key = str(Path(store).resolve())
    if key not in _readers:
        _readers[key] = CachingReader(key)
    return _readers[key]


def array_digest(*arrays: np.ndarray | None) -> str:
    """A short digest of arrays (feature statistics), for memo keys."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(b"-" if a is None else np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]
