"""Direct Zarr v3 file writes (and reads) for the store's small per-dialogue arrays.

zarr-python spends several ms of CPU per dialogue group (group + two arrays + attributes) in metadata
objects, codec pipelines and event-loop hops, ~9x what these direct writes cost
(`tools/bench_extract.py --sections store`); on a CPU machine that time is taken from the encoder. A per-dialogue array is one whole chunk, so its files are
simple to write by hand: `zarr.json` (the metadata zarr-python itself generated for a template array
of the same dtype and rank, with the shape filled in) and one zstd-compressed chunk. The result is a
plain Zarr v3 array that any reader opens (tests/test_store.py compares it with zarr's own writes).

Only the default codec chain (bytes -> zstd without checksum) is written this way; if a future zarr
changes its defaults, `DialogueFiles.supported` turns false and the store falls back to the zarr API.
`read_array` reads such whole-chunk arrays back the same way (stage 2 reads every dialogue's frames,
where opening each array through zarr-python cost ~5 ms), and returns None for anything else.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path

import numpy as np


class DialogueFiles:
    """Writes whole-chunk arrays and group metadata of a local directory store, one file at a time."""

    _templates: dict[tuple[str, int], dict | None] = {}  # per process: zarr's defaults do not change under us

    def template(self, dtype: np.dtype, ndim: int) -> dict | None:
        """zarr's own metadata for a (1,)*ndim array of `dtype`, or None if its codecs are not bytes+zstd."""
        key = (np.dtype(dtype).str, ndim)
        if key not in self._templates:
            import zarr

            with tempfile.TemporaryDirectory() as tmp:
                zarr.create_array(store=tmp, shape=(1,) * ndim, dtype=dtype, chunks=(1,) * ndim)
                meta = json.loads((Path(tmp) / "zarr.json").read_text())
            ok = _plain_zstd(meta) and not meta["codecs"][1].get("configuration", {}).get("checksum", False)
            self._templates[key] = meta if ok else None
        return self._templates[key]

    def supported(self, dtypes: list[np.dtype]) -> bool:
        return all(self.template(np.dtype(d), n) is not None for d, n in dtypes)

    def write_array(self, folder: Path, data: np.ndarray) -> None:
        """`folder` becomes a Zarr v3 array holding `data` as one chunk."""
        meta = copy.deepcopy(self.template(data.dtype, data.ndim))
        assert meta is not None, "check supported() first"
        chunks = [max(1, s) for s in data.shape]
        meta["shape"] = list(data.shape)
        meta["chunk_grid"]["configuration"]["chunk_shape"] = chunks
        folder.mkdir(parents=True)
        _write(folder / "zarr.json", json.dumps(meta, indent=2).encode())
        if data.size:
            import numcodecs

            level = meta["codecs"][1].get("configuration", {}).get("level", 0)
            raw = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes()
            sep = meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
            key = sep.join(["c"] + ["0"] * data.ndim)
            chunk = folder / key
            chunk.parent.mkdir(parents=True, exist_ok=True)
            _write(chunk, numcodecs.Zstd(level=level).encode(raw))

    @staticmethod
    def read_array(folder: Path) -> np.ndarray | None:
        """The array `write_array` wrote in `folder`, read without zarr-python; None when it is stored any
        other way (several chunks, other codecs, a missing chunk meaning fill values): read that with zarr."""
        try:
            meta = json.loads((folder / "zarr.json").read_bytes())
        except FileNotFoundError:
            return None
        grid = meta.get("chunk_grid", {})
        shape = meta.get("shape")
        if (meta.get("node_type") != "array" or not isinstance(shape, list) or not _plain_zstd(meta)
                or grid.get("name") != "regular"
                or grid.get("configuration", {}).get("chunk_shape") != [max(1, n) for n in shape]):
            return None
        try:
            dtype = np.dtype(meta["data_type"])
        except (TypeError, KeyError):
            return None
        if not all(shape):
            return np.zeros(shape, dtype)
        sep = meta["chunk_key_encoding"].get("configuration", {}).get("separator", "/")
        try:
            raw = (folder / sep.join(["c"] + ["0"] * len(shape))).read_bytes()
        except FileNotFoundError:
            return None
        import numcodecs

        data = np.frombuffer(numcodecs.Zstd().decode(raw), dtype=dtype.newbyteorder("<"))
        if data.size != int(np.prod(shape)):
            return None
        return data.reshape(shape).astype(dtype, copy=True)  # writable, native byte order

    @staticmethod
    def write_group(folder: Path, attributes: dict) -> None:
        """Group metadata, replaced atomically: a killed write never leaves a half-written zarr.json."""
        folder.mkdir(parents=True, exist_ok=True)
        body = {"attributes": attributes, "zarr_format": 3, "node_type": "group"}
        tmp = folder / f".zarr.json.{os.getpid()}.tmp"
        _write(tmp, json.dumps(body, indent=2).encode())
        os.replace(tmp, folder / "zarr.json")


def _plain_zstd(meta: dict) -> bool:
    """Array metadata with the codec chain these files use: little-endian bytes -> zstd, default chunk keys."""
    codecs = meta.get("codecs", [])
    return ([c.get("name") for c in codecs] == ["bytes", "zstd"]
            and codecs[0].get("configuration", {}).get("endian", "little") == "little"
            and meta.get("chunk_key_encoding", {}).get("name") == "default"
            and not meta.get("storage_transformers"))


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
