"""Small legacy ERC pickles written with each family's documented structure (formats.md F), never real data.

Each builder returns (the object to pickle, what it holds) so that tests can check an import against what
was written: dialogue keys, splits, labels, speakers, sentences and features. Widths are the families'
documented ones where the structure is told apart by them (audio 100 vs 1582), tiny elsewhere.
`py2_dumps` writes a pickle the way Python 2 did (protocol 2, `str` as latin1 bytes, `__builtin__` names).
"""

from __future__ import annotations

import io
import pickle
import sys
import types
from dataclasses import dataclass, field

import numpy as np

IEMOCAP_CLASSES = ("hap", "sad", "neu", "ang", "exc", "fru")
MELD_EMOTIONS = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")
MELD_SENTIMENTS = ("neutral", "positive", "negative")


@dataclass
class Written:
    keys: dict[str, list]  # split -> dialogue keys in file order
    labels: dict = field(default_factory=dict)  # key -> [int]
    speakers: dict = field(default_factory=dict)  # key -> as written
    sentences: dict = field(default_factory=dict)
    utt_ids: dict = field(default_factory=dict)
    sentiment: dict = field(default_factory=dict)
    features: dict = field(default_factory=dict)  # role -> key -> [n, D]


def _vec(rng, n: int, dim: int, labels: list[int]) -> np.ndarray:
    """Rows with the label planted in the first dimensions, so a head learns something."""
    x = rng.standard_normal((n, dim)).astype(np.float32) * 0.3
    for i, y in enumerate(labels):
        x[i, y % dim] += 2.0
    return x


# -- IEMOCAP -----------------------------------------------------------------------------------------
IEMOCAP_DIALOGUES = {
    "train": ["Ses01F_impro01", "Ses01M_script03_1", "Ses02F_impro02", "Ses03M_impro08a", "Ses04F_script02_1",
              "Ses04M_impro03", "Ses02M_script01_2", "Ses03F_impro01", "Ses01F_impro05", "Ses02F_impro07",
              "Ses03M_impro02"],
    "test": ["Ses05F_impro01", "Ses05M_script02_2"],
}


def iemocap(layout: str = "erc-9", dims: dict[str, int] | None = None, seed: int = 0, n_classes: int = 6):
    """conv-emotion / MMGCN 9-tuple, SDT 12-tuple, COSMIC roberta 10-tuple or COSMIC text 6-list."""
    rng = np.random.default_rng(seed)
    keys = {s: list(v) for s, v in IEMOCAP_DIALOGUES.items()}
    if layout in ("cosmic-roberta-10", "cosmic-text-6"):
        keys["valid"] = keys["train"][-2:]
        keys["train"] = keys["train"][:-2]
    dims = dims or {"text": 100, "audio": 100, "visual": 512}
    w = Written(keys=keys)
    all_keys = [k for v in keys.values() for k in v]
    for j, key in enumerate(all_keys):
        n = 3 + j % 3
        w.labels[key] = [int((j + i) % n_classes) for i in range(n)]
        w.speakers[key] = ["M" if (i + j) % 2 else "F" for i in range(n)]
        w.utt_ids[key] = [f"{key}_{w.speakers[key][i]}{i:03d}" for i in range(n)]
        w.sentences[key] = [f"line {i} of {key}" + (" café" if i == 0 else "") for i in range(n)]
        for role, dim in dims.items():
            w.features.setdefault(role, {})[key] = _vec(rng, n, dim, w.labels[key])
    f = w.features
    if layout == "erc-9":
        obj = (w.utt_ids, w.speakers, w.labels, f["text"], f["audio"], f["visual"], w.sentences, keys["train"],
               keys["test"])
    elif layout == "sdt-12":
        obj = (w.utt_ids, w.speakers, w.labels, f["roberta1"], f["roberta2"], f["roberta3"], f["roberta4"],
               f["audio"], f["visual"], w.sentences, keys["train"], keys["test"])
    elif layout == "cosmic-roberta-10":
        obj = (w.speakers, w.labels, f["roberta1"], f["roberta2"], f["roberta3"], f["roberta4"], w.sentences,
               keys["train"], keys["test"], keys["valid"])
    elif layout == "cosmic-text-6":
        obj = [w.speakers, w.labels, w.sentences, keys["train"], keys["test"], keys["valid"]]
    else:
        raise ValueError(layout)
    return obj, w


# -- MELD --------------------------------------------------------------------------------------------
# integer keys: train keeps Dialogue_ID, dev is 1039 + id, test 1153 + id (official ids in comments)
MELD_KEYS = {"train": [0, 1, 2, 5, 7, 1039 + 3, 1039 + 0, 9, 11], "test": [1153 + 5, 1153 + 0]}
MELD_OFFICIAL = {0: "train_dia0", 1: "train_dia1", 2: "train_dia2", 5: "train_dia5", 7: "train_dia7", 9: "train_dia9",
                 11: "train_dia11", 1042: "dev_dia3", 1039: "dev_dia0", 1158: "test_dia5", 1153: "test_dia0"}


def meld(layout: str = "erc-10", dims: dict[str, int] | None = None, seed: int = 1):
    """MMGCN raw1 10-tuple, DialogueRNN 9-tuple, COSMIC roberta 11-tuple or COSMIC text 7-list."""
    rng = np.random.default_rng(seed)
    keys = {s: list(v) for s, v in MELD_KEYS.items()}
    if layout in ("cosmic-roberta-11", "cosmic-text-7"):
        keys["valid"] = [k for k in keys["train"] if 1039 <= k < 1153]
        keys["train"] = [k for k in keys["train"] if k < 1039]
    dims = dims or {"text": 600, "audio": 300, "visual": 342}
    w = Written(keys=keys)
    for j, key in enumerate(k for v in keys.values() for k in v):
        n = 2 + j % 4
        w.labels[key] = [int((j * 3 + i) % 7) for i in range(n)]
        w.sentiment[key] = [int((j + i) % 3) for i in range(n)]
        order = [(i * 2 + j) % 3 for i in range(n)]  # speaker index by order of first appearance
        first: dict[int, int] = {}
        idx = [first.setdefault(o, len(first)) for o in order]
        w.speakers[key] = [[1 if c == k else 0 for c in range(9)] for k in idx]
        w.utt_ids[key] = list(range(n))
        w.sentences[key] = [f"you\x92re line {i}" if i == 0 else f"line {i}" for i in range(n)]
        for role, dim in dims.items():
            w.features.setdefault(role, {})[key] = _vec(rng, n, dim, w.labels[key])
    f = w.features
    if layout == "erc-10":
        obj = (w.utt_ids, w.speakers, w.labels, f["text"], f["audio"], f["visual"], w.sentences, keys["train"],
               keys["test"], w.sentiment)
    elif layout == "meld-9":
        obj = (w.utt_ids, w.speakers, w.labels, f["text"], f["audio"], w.sentences, keys["train"], keys["test"],
               w.sentiment)
    elif layout == "cosmic-roberta-11":
        obj = (w.speakers, w.labels, w.sentiment, f["roberta1"], f["roberta2"], f["roberta3"], f["roberta4"],
               w.sentences, keys["train"], keys["test"], keys["valid"])
    elif layout == "cosmic-text-7":
        obj = [w.speakers, w.labels, w.sentiment, w.sentences, keys["train"], keys["test"], keys["valid"]]
    else:
        raise ValueError(layout)
    return obj, w


# -- COGMEN / CORECT ---------------------------------------------------------------------------------
class Sample:
    """Stands for cogmen.Sample: pickled as `cogmen.Sample` (see `cogmen_dumps`)."""

    def __init__(self, vid, speaker, label, text, audio, visual, sentence):
        self.vid, self.speaker, self.label = vid, speaker, label
        self.text, self.audio, self.visual, self.sentence = text, audio, visual, sentence


def cogmen_samples(records: bool = True, seed: int = 2):
    """{"train", "dev", "test"} -> Sample records (COGMEN) or dicts (CORECT); dev = first 10 % of trainVid."""
    _, w = iemocap("erc-9", dims={"text": 768, "audio": 100, "visual": 512}, seed=seed)
    train = w.keys["train"]
    n_dev = max(1, int(0.1 * len(train)))
    splits = {"train": train[n_dev:], "dev": train[:n_dev], "test": w.keys["test"]}
    obj = {}
    for split, vids in splits.items():
        items = []
        for vid in vids:
            args = (vid, w.speakers[vid], w.labels[vid], w.features["text"][vid], w.features["audio"][vid],
                    w.features["visual"][vid], w.sentences[vid])
            if records:
                items.append(Sample(*args))
            else:
                items.append(dict(zip(("vid", "speakers", "labels", "text", "audio", "visual", "sentence"), args,
                                      strict=True)))
        obj[split] = items
    w.keys = splits
    return obj, w


def cogmen_dumps(obj) -> bytes:
    """Pickle with `Sample` named cogmen.Sample, as COGMEN's preprocessing wrote it (a fake module while pickling)."""
    fake = types.ModuleType("cogmen")
    fake.Sample = Sample
    old_mod, old_name = Sample.__module__, Sample.__qualname__
    Sample.__module__, Sample.__qualname__ = "cogmen", "Sample"
    sys.modules["cogmen"] = fake
    try:
        return pickle.dumps(obj, protocol=4)
    finally:
        del sys.modules["cogmen"]
        Sample.__module__, Sample.__qualname__ = old_mod, old_name


# -- Python 2 ----------------------------------------------------------------------------------------
class _Py2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote it: `str` objects are byte strings (SHORT_BINSTRING), names are Python 2's."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        data = obj.encode("utf-8") if isinstance(obj, str) else bytes(obj)  # a Python 2 str holds bytes
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_dumps(obj, *, text_as_str: bool = True) -> bytes:
    """A Python-2-style pickle: protocol 2, `__builtin__`/`copy_reg` names, byte strings (latin1) for text."""
    buf = io.BytesIO()
    p = _Py2Pickler(buf, protocol=2, fix_imports=True)
    if text_as_str:
        p.dispatch = {**_Py2Pickler.dispatch, str: _Py2Pickler.save_py2_str}
    p.dump(obj)
    return buf.getvalue()
