"""Which legacy ERC pickle a file is, from its structure alone (formats.md F, H.1).

These files are positional tuples (or lists) of per-dialogue dicts and split lists; the same name
(`IEMOCAP_features.pkl`) is used by two different files, and the order of the elements differs between
families. So each element is classified by what it holds (a list of ids, a dict of string lists, of
integer lists, of one-hot rows or of D-dimensional vectors), and the sequence of those kinds is matched
against each family's documented layout. The widths of the feature dicts then name the variant (the
9-tuple with audio 100 / visual 512 is conv-emotion's; with 1582 / 342 it is MMGCN's).

COGMEN/CORECT write another shape, ``{"train", "dev", "test"} -> [Sample, ...]``, matched separately.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .safe_pickle import PlainRecord

FEATURE_ROLES = ("text", "audio", "visual", "roberta1", "roberta2", "roberta3", "roberta4")
SPLIT_ROLES = ("train", "test", "valid")
ROLE_KINDS: dict[str, set[str]] = {
    "utt_ids": {"strs", "ints", "empty"}, "speakers": {"strs", "onehot", "ints"}, "labels": {"ints"},
    "sentiment": {"ints"}, "sentences": {"strs", "empty"},
    **{r: {"vec"} for r in FEATURE_ROLES}, **{r: {"ids", "none"} for r in SPLIT_ROLES},
}
ANY = "extra"  # an element no loader uses (the trailing item of MELD_features_raw1 / SDT's MELD file)

# conv-emotion's names for the elements, for messages ("element 9, testVid")
NAMES = {"utt_ids": "videoIDs", "speakers": "videoSpeakers", "labels": "videoLabels", "sentiment": "sentiment labels",
         "text": "videoText", "audio": "videoAudio", "visual": "videoVisual", "sentences": "videoSentence",
         "train": "trainVid", "test": "testVid", "valid": "validIds", "extra": "unused item",
         **{f"roberta{i}": f"roberta{i}" for i in range(1, 5)}}


@dataclass(frozen=True)
class Layout:
    name: str
    roles: tuple[str, ...]
    files: str  # the files of this layout, where they come from
    text_only: bool = False


LAYOUTS = (
    Layout("erc-9", ("utt_ids", "speakers", "labels", "text", "audio", "visual", "sentences", "train", "test"),
           "IEMOCAP 9-tuple: IEMOCAP_features_raw.pkl (conv-emotion DialogueRNN), IEMOCAP_features.pkl "
           "(DialogueGCN, COGMEN, CORECT; or MMGCN / MM-DFN with other widths), IEMOCAP_features_4.pkl"),
    Layout("meld-9", ("utt_ids", "speakers", "labels", "text", "audio", "sentences", "train", "test", "sentiment"),
           "MELD_features_raw.pkl (conv-emotion DialogueRNN, bc-LSTM): no visual, sentiment last"),
    Layout("erc-10", ("utt_ids", "speakers", "labels", "text", "audio", "visual", "sentences", "train", "test", ANY),
           "MELD_features_raw1.pkl (MMGCN, MM-DFN)"),
    Layout("sdt-12", ("utt_ids", "speakers", "labels", "roberta1", "roberta2", "roberta3", "roberta4", "audio",
                      "visual", "sentences", "train", "test"),
           "iemocap_multimodal_features.pkl (SDT; CFN-ESA / M3Net forks)"),
    Layout("sdt-13", ("utt_ids", "speakers", "labels", "roberta1", "roberta2", "roberta3", "roberta4", "audio",
                      "visual", "sentences", "train", "test", ANY),
           "meld_multimodal_features.pkl (SDT)"),
    Layout("cosmic-roberta-10", ("speakers", "labels", "roberta1", "roberta2", "roberta3", "roberta4", "sentences",
                                 "train", "test", "valid"),
           "iemocap_features_roberta.pkl (COSMIC)"),
    Layout("cosmic-roberta-11", ("speakers", "labels", "sentiment", "roberta1", "roberta2", "roberta3", "roberta4",
                                 "sentences", "train", "test", "valid"),
           "meld_features_roberta.pkl (COSMIC)"),
    Layout("cosmic-text-6", ("speakers", "labels", "sentences", "train", "test", "valid"),
           "iemocap.pkl (COSMIC feature-extraction, text only)", text_only=True),
    Layout("cosmic-text-7", ("speakers", "labels", "sentiment", "sentences", "train", "test", "valid"),
           "meld.pkl (COSMIC feature-extraction, text only)", text_only=True),
)

# (layout, widths of the feature roles) -> (family, feature-set prefix, what the vectors are)
VARIANTS: dict[tuple[str, tuple[tuple[str, int], ...]], tuple[str, str, str]] = {
    ("erc-9", (("text", 100), ("audio", 100), ("visual", 512))):
        ("conv-emotion", "conv-emotion", "conv-emotion DialogueRNN/DialogueGCN features (also COGMEN/CORECT's "
                                         "IEMOCAP_features.pkl): text = CNN over GloVe (100), audio 100, visual 512"),
    ("erc-9", (("text", 100), ("audio", 1582), ("visual", 342))):
        ("mmgcn", "mmgcn", "MMGCN / MM-DFN IEMOCAP_features.pkl: text 100, audio openSMILE IS10 (1582), "
                           "visual DenseNet 'denseface' (342)"),
    ("meld-9", (("text", 600), ("audio", 300))):
        ("dialoguernn", "dialoguernn", "conv-emotion DialogueRNN MELD_features_raw.pkl: text 600, audio 300"),
    ("erc-10", (("text", 600), ("audio", 300), ("visual", 342))):
        ("mmgcn", "mmgcn", "MMGCN / MM-DFN MELD_features_raw1.pkl: text 600, audio 300, visual denseface 342"),
}
LAYOUT_FAMILY = {"erc-9": ("erc9", "erc9"), "meld-9": ("dialoguernn", "dialoguernn"), "erc-10": ("erc10", "erc10"),
                 "sdt-12": ("sdt", "sdt"), "sdt-13": ("sdt", "sdt"), "cosmic-roberta-10": ("cosmic", "cosmic"),
                 "cosmic-roberta-11": ("cosmic", "cosmic"), "cosmic-text-6": ("cosmic-text", "cosmic"),
                 "cosmic-text-7": ("cosmic-text", "cosmic")}


@dataclass
class Match:
    layout: Layout
    parts: dict[str, Any]  # role -> the element
    widths: dict[str, int]  # feature role -> width

    @property
    def variant(self) -> tuple[str, str, str]:
        """(family, feature-set prefix, description) of this file."""
        key = (self.layout.name, tuple((r, self.widths[r]) for r in self.layout.roles if r in self.widths))
        if key in VARIANTS:
            return VARIANTS[key]
        family, prefix = LAYOUT_FAMILY[self.layout.name]
        dims = " / ".join(f"{r} {w}" for r, w in self.widths.items())
        return family, prefix, f"{self.layout.files}; widths {dims}" if dims else self.layout.files


def kind(value: Any) -> str:
    """What one element of the tuple is: ids | none | strs | ints | onehot | vec | empty | other."""
    if value is None:
        return "none"
    if isinstance(value, (list, tuple, set, frozenset)) or (isinstance(value, np.ndarray) and value.ndim == 1):
        items = list(value)[:50] if not isinstance(value, (set, frozenset)) else list(value)[:50]
        return "ids" if all(_is_scalar_id(v) for v in items) else "other"
    if isinstance(value, dict) and not isinstance(value, PlainRecord):
        if not value:
            return "other"
        return _value_kind(next(iter(value.values())))
    return "other"


def _is_scalar_id(v: Any) -> bool:
    return isinstance(v, (str, int, np.integer)) and not isinstance(v, bool)


def _value_kind(v: Any) -> str:
    """The kind of one dialogue's value: a per-utterance list of strings, ints, one-hot rows or vectors."""
    if isinstance(v, np.ndarray):
        if v.ndim == 1:
            return "ints" if _integral(v) else "other"
        return _rows_kind(v) if v.ndim == 2 else "other"
    if not isinstance(v, (list, tuple)):
        return "other"
    if not v:
        return "empty"
    first = v[0]
    if isinstance(first, str):
        return "strs" if all(isinstance(x, str) for x in v) else "other"
    if isinstance(first, (bool, np.bool_)):
        return "other"
    if isinstance(first, (int, np.integer)) or (isinstance(first, (float, np.floating)) and float(first).is_integer()):
        return "ints" if all(isinstance(x, (int, float, np.number)) and float(x).is_integer() for x in v) else "other"
    try:
        rows = np.asarray(v, dtype=np.float32)
    except (TypeError, ValueError):
        return "other"
    return _rows_kind(rows) if rows.ndim == 2 else "other"


def _rows_kind(rows: np.ndarray) -> str:
    if rows.dtype.kind not in "fiub" or rows.shape[1] == 0:
        return "other"
    if rows.shape[1] <= 16 and np.isin(rows, (0, 1)).all() and (rows.sum(axis=1) == 1).all():
        return "onehot"
    return "vec"


def _integral(a: np.ndarray) -> bool:
    return a.dtype.kind in "iu" or (a.dtype.kind == "f" and bool(np.all(np.mod(a, 1) == 0)))


def width(d: dict) -> int:
    """The width of a dict of per-utterance vectors (from its first dialogue)."""
    first = next(iter(d.values()))
    return int(np.asarray(first, dtype=np.float32).reshape(len(first), -1).shape[1])


def match(obj: Any) -> Match | None:
    """The layout a legacy ERC pickle has, or None."""
    if not isinstance(obj, (tuple, list)):
        return None
    kinds = [kind(v) for v in obj]
    for layout in LAYOUTS:
        if len(layout.roles) != len(obj):
            continue
        if all(role == ANY or k in ROLE_KINDS[role] for role, k in zip(layout.roles, kinds, strict=True)):
            parts = dict(zip(layout.roles, obj, strict=True))
            widths = {r: width(parts[r]) for r in layout.roles if r in FEATURE_ROLES}
            if _same_keys(parts, layout):
                return Match(layout, parts, widths)
    return None


def _same_keys(parts: dict[str, Any], layout: Layout) -> bool:
    """The per-dialogue dicts of one file share their keys (a guard against a coincidental kind match)."""
    keys = [set(parts[r]) for r in layout.roles if r != ANY and isinstance(parts[r], dict)]
    return bool(keys) and all(k == keys[0] for k in keys[1:])


def near_miss(obj: Any) -> str | None:
    """A layout whose first elements the file matches but which has more: a truncated or trimmed tuple."""
    if not isinstance(obj, (tuple, list)) or not obj:
        return None
    kinds = [kind(v) for v in obj]
    for layout in LAYOUTS:
        if len(layout.roles) > len(obj) and all(
                role == ANY or k in ROLE_KINDS[role] for role, k in zip(layout.roles, kinds, strict=False)):
            lacking = ", ".join(NAMES[r] for r in layout.roles[len(obj):])
            return (f"its {len(obj)} elements start like the {len(layout.roles)}-element layout of "
                    f"{layout.files}, which goes on with {lacking}: the file looks truncated or trimmed")
    return None


# -- COGMEN / CORECT ----------------------------------------------------------------------------------
SAMPLE_SPLITS = ("train", "dev", "test")


def match_samples(obj: Any) -> str | None:
    """"cogmen" (lists of Sample records) / "corect" (lists of dicts) for ``{"train", "dev", "test"} -> [...]``."""
    if not isinstance(obj, dict) or isinstance(obj, PlainRecord) or not {"train", "test"} <= set(obj):
        return None
    if set(obj) - set(SAMPLE_SPLITS):
        return None
    firsts = [v[0] for v in obj.values() if isinstance(v, list) and v]
    if not firsts or not all(isinstance(v, list) for v in obj.values()):
        return None
    if all(isinstance(f, dict) and "vid" in f and ({"label", "labels"} & set(f)) for f in firsts):
        return "cogmen" if isinstance(firsts[0], PlainRecord) else "corect"
    return None
