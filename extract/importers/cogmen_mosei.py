"""COGMEN / CORECT MOSEI pickles (formats.md F, last row) -> ImportedCorpus, as ``--dataset mosei``.

Two files, told apart by structure (tuple length, element kinds, widths a 80 / v 35), never by name:

* ``categorical.p``: the IEMOCAP 9-tuple's names (videoIDs, videoSpeakers, videoLabels, videoText 768,
  videoAudio 80, videoVisual 35, videoSentence, trainVid, testVid), labels are class INDICES.
* ``tbje_mosei_updated.pkl``: the same names plus dev ids (10: ..., trainVid, devVid, testVid); labels are
  per-utterance score vectors whose first entry is the sentiment in [-3, 3]; audio is a per-word sequence
  of 80-d rows and sentences are word lists.

What the labels mean was read from COGMEN's public code, not guessed (no real file was opened):

* Exploration-Lab/COGMEN ``cogmen/Coach.py``: ``dataset_label_dict["mosei"] = {"Negative": 0, "Positive": 1}``
  for ``categorical.p`` (``preprocess.py: get_mosei`` counts positives as ``sum(labels)``: 0/1 indices); for
  the 7-class setup ``label_to_idx`` names 0..6 "Strong Negative", "Weak Negative", "Negative", "Neutral",
  "Positive", "Weak Positive", "Strong Positive".
* ``preprocess.py: get_mosei_from_tbje`` reads ``video_labels[v][i][0]`` as the sentiment score and bins it
  (``cmumosei_2``: < 0 -> 0, >= 0 -> 1; ``cmumosei_7``: < -2, [-2, -1), [-1, 0), 0, (0, 1], (1, 2], > 2);
  it averages each utterance's audio rows (``np.average(..., axis=0)``) and joins the words of a sentence.
* ``train.py``: ``dataset_embedding_dims["mosei"] = {a: 80, t: 768, v: 35}``.

So: the tbje score becomes merc's regression space ``sentiment`` (the derived tasks sentiment_has0 /
sentiment_non0 / sentiment7 work at once); the class indices of ``categorical.p`` become a categorical space
named after what they are, ``cogmen_sentiment2`` (Negative, Positive) or ``cogmen_sentiment7`` (the Coach
names; note they do not follow the bins' order at 1 and 2), NOT merc's ``sentiment7``, whose bins differ. The
threshold that made the 2-class indices is not in COGMEN's code: recorded as unknown in the provenance.
A video is a dialogue, one speaker per video; ids stay strings; dev = the file's dev ids, else COGMEN's
first-10 % rule (``trainVids[:int(0.1 * len(trainVids))]``, file order), recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from merc.data_manifests.adapters.mosi import SPEAKER_RULE, check_videos_belong
from merc.data_manifests.errors import Finding, ManifestError
from merc.data_manifests.labels import MOS_SENTIMENT
from merc.data_manifests.manifest import Dialogue, LabelSpace, Manifest, Utterance

from . import IMPORTERS, safe_pickle
from .base import ImportedCorpus, ImportedFeatures, source_record
from .mmsa import _compare_splits
from .safe_pickle import PlainRecord

FAMILY = "cogmen-mosei"
WIDTHS = {"audio": 80, "visual": 35}  # COGMEN train.py dataset_embedding_dims["mosei"] (text 768 is not required)
ROLES_9 = ("utt_ids", "speakers", "labels", "text", "audio", "visual", "sentences", "train", "test")
ROLES_10 = ("utt_ids", "speakers", "labels", "text", "audio", "visual", "sentences", "train", "dev", "test")
MODALITY = {"text": "text", "audio": "audio", "visual": "video"}
SENTIMENT2 = LabelSpace("cogmen_sentiment2", "categorical", ("Negative", "Positive"))
SENTIMENT7 = LabelSpace("cogmen_sentiment7", "categorical", ("Strong Negative", "Weak Negative", "Negative", "Neutral",
                                                             "Positive", "Weak Positive", "Strong Positive"))
BINS7 = "0: < -2, 1: [-2, -1), 2: [-1, 0), 3: 0, 4: (0, 1], 5: (1, 2], 6: > 2 (COGMEN preprocess.py cmumosei_7)"
DEV_POLICIES = ("auto", "first-10%", "none")
SOURCE_CODE = "Exploration-Lab/COGMEN cogmen/Coach.py, preprocess.py, train.py"


class CogmenMoseiError(ManifestError):
    """A COGMEN/CORECT MOSEI pickle cannot be imported as asked."""


@dataclass
class _Layout:
    name: str
    roles: tuple[str, ...]
    parts: dict[str, Any]


@IMPORTERS.register(FAMILY, "COGMEN/CORECT MOSEI pickles categorical.p (9-tuple) / tbje_mosei_updated.pkl (10-tuple)")
class CogmenMoseiImporter:
    """The registry's face of this module (detect / read, see extract/importers/__init__.py)."""

    def detect(self, obj_or_path: Any) -> bool:
        return match(obj_or_path) is not None

    def read(self, path: str | Path, dataset: str, *, loaded: Any = None, dev_split: str = "auto",
             classes: int | None = None) -> ImportedCorpus:
        path = Path(path)
        if dataset.strip().lower() != "mosei":
            raise CogmenMoseiError(f"this is COGMEN/CORECT's MOSEI pickle, not {dataset!r}", file=str(path),
                                   fix="pass --dataset mosei (use --name to store it under another name)")
        if dev_split not in DEV_POLICIES:
            raise CogmenMoseiError(f"unknown dev-split policy {dev_split!r}", file=str(path),
                                   fix=f"use one of {', '.join(DEV_POLICIES)}")
        obj = safe_pickle.load(path) if loaded is None else loaded
        layout = match(obj)
        if layout is None:
            raise CogmenMoseiError("not a COGMEN/CORECT MOSEI pickle (9- or 10-tuple with audio 80 / visual 35)",
                                   file=str(path), fix="check the file is complete and one of formats.md F's files")
        return _Reader(layout, path, dev_split, classes).build()


# --- structure ------------------------------------------------------------------------------------------
def match(obj: Any) -> _Layout | None:
    """The layout of a COGMEN MOSEI pickle, or None: per-dialogue dicts sharing their keys, split lists, and the
    documented widths (audio rows 80, visual 35) that tell it from the IEMOCAP 9-tuple (100 / 512)."""
    if not isinstance(obj, (tuple, list)) or len(obj) not in (9, 10):
        return None
    roles = ROLES_9 if len(obj) == 9 else ROLES_10
    parts = dict(zip(roles, obj, strict=True))
    dicts = [parts[r] for r in roles[:7]]
    if not all(isinstance(d, dict) and not isinstance(d, PlainRecord) and d for d in dicts):
        return None
    keys = set(dicts[0])
    if not all(set(d) == keys for d in dicts[1:]):
        return None
    if not all(_is_id_list(parts[r]) for r in roles[7:]):
        return None
    first = next(iter(keys))
    for role, dim in WIDTHS.items():
        rows = _utterance_arrays(parts[role][first])
        if rows is None or not rows or rows[0].shape[-1] != dim:
            return None
    return _Layout("tbje-10" if len(obj) == 10 else "categorical-9", roles, parts)


def _is_id_list(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.ndim == 1
    return isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, np.integer)) for v in list(value)[:50])


def _utterance_arrays(value: Any) -> list[np.ndarray] | None:
    """One dialogue's per-utterance values as float arrays ([D] vectors or [L, D] sequences), or None."""
    try:
        if isinstance(value, np.ndarray) and value.dtype.kind in "fiub" and value.ndim == 2:
            return list(value.astype(np.float32))
        return [np.asarray(v, dtype=np.float32) for v in value]
    except (TypeError, ValueError):
        return None


# --- reading --------------------------------------------------------------------------------------------
class _Reader:
    def __init__(self, layout: _Layout, path: Path, dev_policy: str, classes: int | None):
        self.layout, self.path, self.dev_policy, self.classes = layout, path, dev_policy, classes
        self.p = layout.parts
        self.notes: list[str] = []

    def fail(self, problem: str, fix: str) -> CogmenMoseiError:
        return CogmenMoseiError(problem, file=str(self.path), fix=fix)

    def build(self) -> ImportedCorpus:
        split_of, dev_rule = self._splits()
        check_videos_belong("mosei", [str(k) for k in split_of], str(self.path), "COGMEN pickle")
        space, label_note = self._label_space()
        dialogues = [self._dialogue(k, s, space) for k, s in split_of.items()]
        findings: list[Finding] = []
        split_policy = _compare_splits("mosei", dialogues, str(self.path), findings)
        manifest = Manifest(name="mosei", label_spaces={space.name: space}, dialogues=dialogues,
                            root=str(self.path.parent), findings=findings,
                            policies={"corpus": "CMU-MOSEI", "speaker": SPEAKER_RULE,
                                      "label_source": f"imported from {self.path.name} ({FAMILY}, {self.layout.name})",
                                      "splits": {"dev": dev_rule, **split_policy}})
        manifest.validate()
        features = [self._features(role, split_of, dialogues) for role in ("text", "audio", "visual")]
        tbje = self.layout.name == "tbje-10"
        provenance = {
            "family": FAMILY, "layout": self.layout.name,
            "description": ("COGMEN/CORECT tbje_mosei_updated.pkl (10-tuple with dev ids)" if tbje else
                            "COGMEN/CORECT categorical.p (9-tuple)") + ": text / audio 80 / visual 35",
            "sources": [source_record(self.path)], "corpus": "mosei",
            "label_map": {space.name: (dict(enumerate(space.classes)) if space.classes else
                                       {"0": "videoLabels[v][i][0]: sentiment score in [-3, 3]"})},
            "label_semantics": label_note, "label_source_code": SOURCE_CODE,
            "dev_split": dev_rule, "splits": {s: len(manifest.split(s)) for s in ("train", "dev", "test")},
            "dialogue_ids": "the file's dialogue keys as strings (MOSEI video ids)",
            "utterance_ids": self.utt_rule, "speakers": SPEAKER_RULE + " (the file's speaker letters are not used)",
            "notes": self.notes + [str(f) for f in findings],
        }
        return ImportedCorpus(manifest=manifest, features=features, provenance=provenance)

    # -- splits --------------------------------------------------------------------------------------
    def _splits(self) -> tuple[dict[Any, str], str]:
        p = self.p
        lists = {s: [k.item() if isinstance(k, np.generic) else k for k in p[s]] for s in ("train", "dev", "test")
                 if s in p}
        for s in ("train", "test"):
            if not lists.get(s):
                raise self.fail(f"the file has no {s} split list ({s}Vid is empty)",
                                "import the complete original file: its split lists say which videos are train and test")
        if "dev" in lists:
            dev_rule = f"the file's own dev ids ({len(lists['dev'])} videos)"
            if self.dev_policy != "auto":
                self.notes.append(f"--dev-split {self.dev_policy} ignored: the file defines its dev split")
        elif self.dev_policy == "none":
            dev_rule = "none (--dev-split none)"
        else:
            n = int(0.1 * len(lists["train"]))
            lists["dev"], lists["train"] = lists["train"][:n], lists["train"][n:]
            dev_rule = (f"first 10 % of trainVid in file order ({n} videos; COGMEN's rule, preprocess.py get_mosei: "
                        "trainVids[:int(0.1 * len(trainVids))])")
        split_of: dict[Any, str] = {}
        for s in ("train", "dev", "test"):
            for key in lists.get(s, []):
                if key in split_of:
                    raise self.fail(f"video {key!r} is in both the {split_of[key]} and the {s} split lists",
                                    "import the original file (its split lists are disjoint)")
                if key not in p["labels"]:
                    raise self.fail(f"video {key!r} of the {s} split list has no labels or features in the file",
                                    "the file is truncated or edited: import the original")
                split_of[key] = s
        unlisted = [k for k in p["labels"] if k not in split_of]
        if unlisted:
            self.notes.append(f"{len(unlisted)} video(s) of the file are in no split list and were left out "
                              f"(first: {unlisted[0]!r})")
        return split_of, dev_rule

    # -- labels --------------------------------------------------------------------------------------
    def _label_space(self) -> tuple[LabelSpace, str]:
        if self.layout.name == "tbje-10":
            return MOS_SENTIMENT, ("videoLabels[v][i][0] is the sentiment score in [-3, 3] (COGMEN preprocess.py "
                                   "get_mosei_from_tbje reads it so); further columns, if any, are not imported "
                                   "(their meaning is not established by COGMEN's code)")
        seen = sorted({int(x) for v in self.p["labels"].values() for x in np.asarray(v).reshape(-1)})
        n = self.classes or (2 if seen and seen[-1] <= 1 else 7)
        space = {2: SENTIMENT2, 7: SENTIMENT7}.get(n)
        if space is None:
            raise self.fail(f"COGMEN's MOSEI labels have 2 or 7 classes, not {n}", "pass --option classes=2 or 7")
        bad = [x for x in seen if not 0 <= x < n]
        if bad:
            raise self.fail(f"labels {bad} are outside the {n} classes of COGMEN's MOSEI setups",
                            "check the file is COGMEN's categorical.p (or pass --option classes=7)")
        if n == 2:
            note = ("class indices of COGMEN's 2-class MOSEI setup: 0 Negative, 1 Positive (cogmen/Coach.py "
                    "dataset_label_dict['mosei']). UNCERTAIN: which threshold made them (< 0 vs >= 0 as cmumosei_2, "
                    "or zeros dropped) is not in COGMEN's code, so they are not mapped onto merc's sentiment_has0 / "
                    "sentiment_non0")
            if not self.classes:
                self.notes.append("no label above 1: read as COGMEN's 2-class sentiment (pass --option classes=7 if "
                                  "this is a 7-class file)")
        else:
            note = (f"class indices of COGMEN's 7-class MOSEI setup, named as cogmen/Coach.py label_to_idx names them; "
                    f"bins {BINS7}. The names at 1 and 2 do not follow the bins' order (a COGMEN quirk), and these "
                    "bins differ from merc's derived sentiment7 (MMSA rounding)")
        return space, note

    # -- dialogues -----------------------------------------------------------------------------------
    utt_rule = ""

    def _dialogue(self, key: Any, split: str, space: LabelSpace) -> Dialogue:
        video = str(key)
        labels = self._labels(key, space)
        n = len(labels)
        texts = [self._sentence(s) for s in self.p["sentences"][key]]
        if len(texts) != n:
            raise self.fail(f"video {key!r} has {n} labels but {len(texts)} sentences",
                            "the file is truncated or edited: import the original")
        ids = self._utterance_ids(key, video, n)
        utts = [Utterance(id=ids[i], dialogue_id=video, speaker=video, text=texts[i], split=split,
                          labels={space.name: labels[i]}, source_file=str(self.path), source_row=i) for i in range(n)]
        return Dialogue(id=video, split=split, utterances=utts)

    def _labels(self, key: Any, space: LabelSpace) -> list:
        values = self.p["labels"][key]
        if space.kind == "regression":
            out = []
            for v in values:
                a = np.asarray(v, dtype=np.float64).reshape(-1)
                if a.size == 0:
                    raise self.fail(f"video {key!r} has an empty label vector", "import the original file")
                out.append(float(a[0]))
            return out
        return [space.classes[int(x)] for x in np.asarray(values).reshape(-1)]

    def _utterance_ids(self, key: Any, video: str, n: int) -> list[str]:
        given = list(self.p["utt_ids"][key])
        if len(given) == n and all(isinstance(u, str) and u for u in given) and len(set(given)) == n:
            self.utt_rule = "the file's utterance ids (videoIDs)"
            return given
        self.utt_rule = ("<video>_pos<i>: the position in the video (the file gives no string utterance ids, and a "
                         "position is not MMSA's clip id)")
        return [f"{video}_pos{i}" for i in range(n)]

    @staticmethod
    def _sentence(value: Any) -> str:
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim == 1):
            return " ".join(str(w.decode("utf-8", "replace") if isinstance(w, bytes) else w) for w in value)
        return str(value)

    # -- features ------------------------------------------------------------------------------------
    def _features(self, role: str, split_of: dict, dialogues: list[Dialogue]) -> ImportedFeatures:
        pooled, averaged, nonfinite, width = {}, 0, 0, None
        for key, d in zip(split_of, dialogues, strict=True):
            rows = _utterance_arrays(self.p[role][key])
            if rows is None or len(rows) != len(d):
                raise self.fail(f"video {key!r} has {len(d)} labels but "
                                f"{'unreadable' if rows is None else len(rows)} {role} rows",
                                "the file is truncated or edited: import the original")
            vecs = []
            for x in rows:
                if x.ndim == 2:  # a per-word sequence: averaged, as COGMEN's preprocess does
                    averaged += 1
                    x = x.mean(axis=0) if len(x) else np.zeros(x.shape[1], np.float32)
                vecs.append(x.reshape(-1))
            arr = np.stack(vecs).astype(np.float32)
            if width is not None and arr.shape[1] != width:
                raise self.fail(f"video {key!r}: {role} width {arr.shape[1]}, other videos have {width}",
                                "the file mixes feature widths; import the original")
            width = arr.shape[1]
            bad = ~np.isfinite(arr)
            if bad.any():
                nonfinite += int(bad.sum())
                arr = np.where(bad, 0.0, arr).astype(np.float32)
            pooled[d.id] = arr
        policies: dict[str, Any] = {}
        if averaged:
            policies["sequences"] = "mean over each utterance's rows (COGMEN preprocess.py np.average(axis=0))"
            self.notes.append(f"{role}: {averaged} per-word sequence(s) averaged to one vector per utterance")
        if nonfinite:
            policies.update(nonfinite="zero", values=nonfinite)
            self.notes.append(f"{role}: {nonfinite} NaN/inf value(s) set to 0")
        return ImportedFeatures(name=f"{FAMILY}-{role}", modality=MODALITY[role], pooled=pooled, policies=policies,
                                description=f"COGMEN/CORECT MOSEI video{role.capitalize()} ({width}-d)")


__all__ = ["CogmenMoseiImporter", "match"]
