"""Whole-chunk Zarr v3 arrays written and read as plain files, each file checksummed.

zarr-python spends several ms of CPU per dialogue group (group + arrays + attributes) in metadata
objects, codec pipelines and event-loop hops, ~9x what these direct writes cost
(`tools/bench_extract.py --sections store`); on a CPU machine that time is taken from the encoder. Every
array merc writes is one whole chunk, so its files are simple to write by hand: `zarr.json` (the
metadata zarr-python itself generates for an array of the same dtype and rank with merc's codecs,
bytes -> zstd, the shape filled in) and one compressed chunk. The result is a plain Zarr v3 array that
any reader opens (tests/test_store.py compares it with zarr's own writes).

Every write returns the SHA-256 of each file it wrote; the caller records them in the commit marker.
Every read checks them: a missing, truncated or overwritten file is a `DamagedError`, never zarr's
fill value. Arrays stored any other way (several chunks, other codecs) are read through zarr-python,
after the same checks and a check that every chunk of the grid exists.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .layout import StoreError

Checksums = dict[str, str]  # file path relative to the group folder -> SHA-256 hex


class DamagedError(StoreError):
    """A file of the store is missing, does not match its recorded checksum, or cannot be decoded."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    """SHA-256 of a file's content, read in blocks (media clips, imported files, checkpoints)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


class ArrayFiles:
    """Writes whole-chunk arrays and group metadata of a local directory store, one file at a time."""

    _templates: dict[tuple[str, int], dict] = {}  # per process: zarr's metadata layout does not change under us

    @classmethod
    def template(cls, dtype: np.dtype, ndim: int) -> dict:
        """zarr's own metadata for a (1,)*ndim array of `dtype` with merc's codecs (little-endian bytes, zstd)."""
        key = (np.dtype(dtype).str, ndim)
        if key not in cls._templates:
            import zarr
            from zarr.codecs import BytesCodec, ZstdCodec

            with tempfile.TemporaryDirectory() as tmp:
                zarr.create_array(store=tmp, shape=(1,) * ndim, dtype=dtype, chunks=(1,) * ndim,
                                  serializer=BytesCodec(endian="little"),
                                  compressors=ZstdCodec(level=0, checksum=False))
                meta = json.loads((Path(tmp) / "zarr.json").read_text())
            if not _plain_zstd(meta):
                raise StoreError(f"this zarr ({zarr.__version__}) writes array metadata merc does not know",
                                 fix="install the zarr version of constraints.txt")
            cls._templates[key] = meta
        return cls._templates[key]

    @classmethod
    def write_array(cls, group: Path, name: str, data: np.ndarray) -> Checksums:
        """`group/name` becomes a Zarr v3 array holding `data` as one chunk; returns its files' checksums."""
        meta = copy.deepcopy(cls.template(data.dtype, data.ndim))
        meta["shape"] = list(data.shape)
        meta["chunk_grid"]["configuration"]["chunk_shape"] = [max(1, s) for s in data.shape]
        folder = group / name
        folder.mkdir(parents=True)
        body = json.dumps(meta, indent=2).encode()
        _write(folder / "zarr.json", body)
        sums = {f"{name}/zarr.json": sha256(body)}
        if data.size:
            import numcodecs

            level = meta["codecs"][1].get("configuration", {}).get("level", 0)
            raw = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes()
            key = _chunk_key(meta, [0] * data.ndim)
            chunk = folder / key
            chunk.parent.mkdir(parents=True, exist_ok=True)
            encoded = numcodecs.Zstd(level=level).encode(raw)
            _write(chunk, encoded)
            sums[f"{name}/{key}"] = sha256(encoded)
        return sums

    @staticmethod
    def write_group(folder: Path, attributes: dict) -> None:
        """Group metadata, replaced atomically: a killed write never leaves a half-written zarr.json."""
        folder.mkdir(parents=True, exist_ok=True)
        body = {"attributes": attributes, "zarr_format": 3, "node_type": "group"}
        tmp = folder / f".zarr.json.{os.getpid()}.tmp"
        _write(tmp, json.dumps(body, indent=2).encode())
        os.replace(tmp, folder / "zarr.json")


def read_attrs(folder: Path) -> dict | None:
    """A group's attributes straight from its zarr.json (zarr-python opens a group in ~2 ms, which made
    listing MELD's 1,433 dialogues take seconds); None when it is missing, half-written or damaged."""
    try:
        meta = json.loads((folder / "zarr.json").read_bytes())
    except (OSError, ValueError):
        return None
    attrs = meta.get("attributes", {}) if isinstance(meta, dict) else None
    return attrs if isinstance(attrs, dict) else None


def read_array(group: Path, name: str, checksums: Checksums | None) -> np.ndarray:
    """The array `group/name`, every file checked against `checksums` (None: a store without them).

    Merc's own one-chunk arrays are decoded here directly (a fraction of what opening them through
    zarr-python costs); anything else goes through zarr after the same checks.
    """
    meta_bytes = _checked(group, f"{name}/zarr.json", checksums)
    try:
        meta = json.loads(meta_bytes)
        shape = [int(n) for n in meta["shape"]]
        dtype = np.dtype(meta["data_type"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DamagedError(f"{name}/zarr.json is not valid array metadata ({exc})", file=str(group)) from None
    if not _one_chunk(meta, shape):
        return _read_with_zarr(group, name, meta, checksums)
    if not all(shape):
        return np.zeros(shape, dtype)
    raw = _checked(group, f"{name}/{_chunk_key(meta, [0] * len(shape))}", checksums)
    import numcodecs

    try:
        data = np.frombuffer(numcodecs.Zstd().decode(raw), dtype=dtype.newbyteorder("<"))
    except Exception as exc:  # noqa: BLE001 - any codec failure means the chunk is damaged
        raise DamagedError(f"{name} chunk cannot be decoded ({type(exc).__name__}: {exc})", file=str(group)) from None
    if data.size != int(np.prod(shape)):
        raise DamagedError(f"{name} chunk holds {data.size} values, its metadata says {shape}", file=str(group))
    return data.reshape(shape).astype(dtype, copy=True)  # writable, native byte order


def check_files(group: Path, checksums: Checksums) -> list[str]:
    """Every recorded file exists and matches; returns one line per damaged file (empty = all good)."""
    problems = []
    for rel in sorted(checksums):
        try:
            _checked(group, rel, checksums)
        except DamagedError as exc:
            problems.append(exc.finding.problem)
    return problems


def _checked(group: Path, rel: str, checksums: Checksums | None) -> bytes:
    path = group / rel
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DamagedError(f"{rel} is missing", file=str(group)) from None
    except OSError as exc:
        raise DamagedError(f"{rel} cannot be read ({exc.strerror or exc})", file=str(group)) from None
    if checksums is not None:
        want = checksums.get(rel)
        if want is None:
            raise DamagedError(f"{rel} has no recorded checksum", file=str(group))
        if sha256(data) != want:
            raise DamagedError(f"{rel} does not match its recorded checksum (damaged or edited)", file=str(group))
    return data


def _read_with_zarr(group: Path, name: str, meta: dict, checksums: Checksums | None) -> np.ndarray:
    """Arrays of several chunks or other codecs: zarr-python reads them, after checking every chunk exists."""
    import zarr

    if checksums is not None:
        problems = check_files(group, {k: v for k, v in checksums.items() if k.startswith(f"{name}/")})
        if problems:
            raise DamagedError(problems[0], file=str(group))
    for key in _all_chunk_keys(meta):
        if key is not None and not (group / name / key).exists():
            raise DamagedError(f"{name}/{key} is missing (zarr would read it as fill values)", file=str(group))
    try:
        return zarr.open_array(str(group / name), mode="r")[...]
    except Exception as exc:  # noqa: BLE001 - whatever zarr raises, the array is unreadable
        raise DamagedError(f"{name} cannot be read ({type(exc).__name__}: {exc})", file=str(group)) from None


def _all_chunk_keys(meta: dict) -> list[str | None]:
    """Chunk file keys of a regular grid (None entries: a grid this check does not understand)."""
    grid = meta.get("chunk_grid", {})
    if grid.get("name") != "regular":
        return [None]
    shape = [int(n) for n in meta["shape"]]
    chunks = [int(c) for c in grid["configuration"]["chunk_shape"]]
    counts = [-(-s // c) if s else 0 for s, c in zip(shape, chunks, strict=True)]
    if not all(counts):
        return []
    return [_chunk_key(meta, list(idx)) for idx in np.ndindex(*counts)]


def _one_chunk(meta: dict, shape: list[int]) -> bool:
    grid = meta.get("chunk_grid", {})
    return (meta.get("node_type") == "array" and _plain_zstd(meta) and grid.get("name") == "regular"
            and grid.get("configuration", {}).get("chunk_shape") == [max(1, n) for n in shape])


def _chunk_key(meta: dict, index: list[int]) -> str:
    enc = meta.get("chunk_key_encoding", {})
    sep = enc.get("configuration", {}).get("separator", "/")
    if enc.get("name") == "v2":
        return sep.join(str(i) for i in index) or "0"
    return sep.join(["c"] + [str(i) for i in index])


def _plain_zstd(meta: dict) -> bool:
    """Array metadata with the codec chain these files use: little-endian bytes -> zstd, default chunk keys."""
    codecs = meta.get("codecs", [])
    return ([c.get("name") for c in codecs] == ["bytes", "zstd"]
            and codecs[0].get("configuration", {}).get("endian", "little") == "little"
            and not codecs[1].get("configuration", {}).get("checksum", False)
            and meta.get("chunk_key_encoding", {}).get("name") == "default"
            and not meta.get("storage_transformers"))


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
