"""The Zarr v3 feature store: a writer/reader pair over per-dialogue tensors, checksummed.

    layout.py   the vocabulary both stages use: layout, levels, array names, roles, input digests, StoreError
    files.py    whole-chunk arrays written and read as plain files, every file checksummed
    table.py    the manifest stored once, as columns, and the media content digests
    writer.py   StoreWriter: open / plan / write_dialogue / finalize (commit marker last, per dialogue)
    reader.py   StoreReader: manifests, label spaces, pooled rows and frames, refusing damaged or stale data
    verify.py   merc-extract verify and status

Why per-dialogue groups: a killed run resumes at dialogue granularity, and separate processes (dask
workers) write different dialogues of one store without locks. Why `packed/`: opening thousands of small
arrays costs ~4 ms each; the packed copy makes loading a whole corpus one read. Nothing here imports
torch or transformers, so stage 2 reads stores fast.
"""

from .files import ArrayFiles, DamagedError
from .layout import (
    FLOAT16_MAX,
    FRAMES,
    LEVELS,
    MODALITY_OF_ROLE,
    ROLE_OF_MODALITY,
    ROLES,
    STORE_DTYPES,
    STORE_FORMAT,
    UTTERANCE,
    StoreError,
    default_inputs,
    dialogue_inputs,
    dialogue_key,
    fingerprint_hash,
    finite_abs_max,
    normalize_levels,
)
from .reader import DialogueState, PooledFeatures, StoreReader
from .writer import Plan, StoreWriter

__all__ = [
    "FLOAT16_MAX", "FRAMES", "LEVELS", "MODALITY_OF_ROLE", "ROLES", "ROLE_OF_MODALITY", "STORE_DTYPES",
    "STORE_FORMAT", "UTTERANCE", "ArrayFiles", "DamagedError", "DialogueState", "Plan", "PooledFeatures",
    "StoreError", "StoreReader", "StoreWriter", "default_inputs", "dialogue_inputs", "dialogue_key",
    "fingerprint_hash", "finite_abs_max", "normalize_levels",
]
