"""merc.data_manifests: corpora on disk -> one validated Manifest type.

Everything downstream (extraction, the store, the heads) depends only on what is re-exported here.
"""

from __future__ import annotations

from . import errors
from .adapters import ADAPTERS, load_manifest, register_adapter
from .errors import Finding, ManifestError, ManifestErrors, MercError
from .manifest import Dialogue, LabelSpace, Manifest, Utterance

__all__ = ["ADAPTERS", "Dialogue", "Finding", "LabelSpace", "Manifest", "ManifestError", "ManifestErrors",
           "MercError", "Utterance", "errors", "load_manifest",
           "register_adapter"]
