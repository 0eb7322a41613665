"""Legacy ERC feature pickles -> ImportedCorpus (formats.md F, G, H): DialogueRNN / DialogueGCN / MMGCN /
MM-DFN / SDT / COSMIC / COGMEN / CORECT, and COSMIC's text-only `iemocap.pkl` / `meld.pkl`.

What the files do not say, and how it is decided here (each rule is recorded in the provenance):

* Labels are indices in the field's shared orders (formats.md G): IEMOCAP hap 0, sad 1, neu 2, ang 3,
  exc 4, fru 5 (4-class files: the first four); MELD emotion neutral 0, surprise 1, fear 2, sadness 3,
  joy 4, disgust 5, anger 6, sentiment neutral 0, positive 1, negative 2. The label spaces of merc use
  the same orders, so the stored index is the file's. A label outside the corpus's classes means the
  file is of another corpus: refused, saying which corpus it looks like.
* MELD dialogue keys are integers: train keeps Dialogue_ID, dev is 1039 + id, test 1153 + id. They are
  mapped back to the official ids (``train_dia12``, ``dev_dia3``, ``test_dia40``, as the MELD adapter names
  them), which also recovers the official dev set the MMGCN/SDT files fold into ``trainVid``.
* MELD speakers are one-hot rows indexed by order of first appearance in the dialogue, so the name can
  only be positional: ``<dialogue>:spk<k>``. IEMOCAP's 'M'/'F' become ``Ses<NN><M|F>`` as in the adapter.
* The dev split: the file's own list when it has one (COSMIC validIds, COGMEN's dev); else `dev_split`:
  "auto" (MELD: official, from the keys; IEMOCAP: none, as conv-emotion/MMGCN/SDT trained), "first-10%"
  (COGMEN's rule: the first 10 % of trainVid in file order) or "none".
* Text: Python 2 strings come in as latin1; a string that is really UTF-8 is decoded as such, and MELD's
  cp1252 characters are repaired as in the MELD adapter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from merc.data_manifests.errors import ManifestError
from merc.data_manifests.labels import IEMOCAP_4, IEMOCAP_6, MELD_EMOTION, MELD_SENTIMENT
from merc.data_manifests.manifest import Dialogue, LabelSpace, Manifest, Utterance
from merc.data_manifests.text import RULE as CP1252_RULE
from merc.data_manifests.text import repair_cp1252

from . import IMPORTERS, safe_pickle
from .base import ImportedCorpus, ImportedFeatures, source_record
from .erc_layouts import ANY, FEATURE_ROLES, NAMES, SAMPLE_SPLITS, Match, match, match_samples, near_miss

CORPORA = ("iemocap", "meld")
DEV_POLICIES = ("auto", "first-10%", "none")
MELD_DEV_BASE, MELD_TEST_BASE = 1039, 1153  # formats.md F: dev keys are 1039 + id, test keys 1153 + id
IEMOCAP_NAME_RE = re.compile(r"^Ses(\d{2})[FM]_")
MODALITY = {"text": "text", "audio": "audio", "visual": "video", **{f"roberta{i}": "text" for i in range(1, 5)}}


class ErcImportError(ManifestError):
    """A legacy ERC pickle cannot be imported as the corpus asked for."""


@dataclass
class _Raw:
    """One file, reduced to per-dialogue lists keyed by the file's dialogue keys, before corpus mapping."""

    family: str
    prefix: str  # feature-set names: <prefix>-<role>
    description: str
    layout: str
    speakers: dict[Any, list]
    labels: dict[Any, list[int]]
    sentiment: dict[Any, list[int]] | None
    sentences: dict[Any, list[str]] | None
    utt_ids: dict[Any, list] | None
    features: dict[str, dict[Any, Any]]  # role -> key -> [n, D]
    splits: dict[str, list | None]  # train/test/valid (or dev) -> keys in file order; None = the file has none
    split_names: dict[str, str] = field(default_factory=dict)  # split -> the element it came from, for messages
    notes: list[str] = field(default_factory=list)


class _Base:
    text_only = False

    def detect(self, obj_or_path: Any) -> bool:
        found = match(obj_or_path)
        if found is not None:
            return found.layout.text_only == self.text_only
        return not self.text_only and match_samples(obj_or_path) is not None

    def near_miss(self, obj_or_path: Any) -> str | None:
        """Why a file that almost has a known layout does not (for the "unknown structure" error)."""
        return None if self.text_only else near_miss(obj_or_path)

    def read(self, path: str | Path, dataset: str, *, loaded: Any = None, dev_split: str = "auto",
             classes: int | None = None) -> ImportedCorpus:
        """Read `path` (a legacy ERC pickle) as corpus `dataset` (iemocap or meld)."""
        path = Path(path)
        corpus = dataset.strip().lower()
        if corpus not in CORPORA:
            raise ErcImportError(f"the legacy ERC pickles hold IEMOCAP or MELD, not {dataset!r}", file=str(path),
                                 fix="pass --dataset iemocap or --dataset meld (COGMEN/CORECT's MOSEI pickles, with "
                                     "audio 80 / visual 35, are read by the cogmen-mosei family)")
        if dev_split not in DEV_POLICIES:
            raise ErcImportError(f"unknown dev-split policy {dev_split!r}", file=str(path),
                                 fix=f"use one of {', '.join(DEV_POLICIES)}")
        obj = safe_pickle.load(path) if loaded is None else loaded
        raw = _reduce(obj, path)
        return _Builder(raw, path, corpus, dev_split, classes).build()


@IMPORTERS.register("erc", "legacy ERC feature pickles (DialogueRNN/DialogueGCN/MMGCN/MM-DFN/SDT/COSMIC/COGMEN/CORECT)")
class ErcPickleImporter(_Base):
    text_only = False


@IMPORTERS.register("cosmic-text", "COSMIC text-only pickles iemocap.pkl / meld.pkl: a manifest, no features")
class CosmicTextImporter(_Base):
    text_only = True


# ---------------------------------------------------------------------------------------------------
# file -> _Raw
# ---------------------------------------------------------------------------------------------------

def _reduce(obj: Any, path: Path) -> _Raw:
    found = match(obj)
    if found is not None:
        return _from_tuple(found)
    samples = match_samples(obj)
    if samples is not None:
        return _from_samples(obj, samples, path)
    from .structure import describe

    raise ErcImportError(f"not a legacy ERC pickle of a known layout; it holds {describe(obj)}", file=str(path),
                         fix="check the file is complete and one of formats.md F's files")


def _from_tuple(m: Match) -> _Raw:
    family, prefix, description = m.variant
    p = m.parts
    splits: dict[str, list | None] = {}
    for role in ("train", "valid", "test"):
        if role in m.layout.roles:
            splits["dev" if role == "valid" else role] = _ordered(p[role])
    features = {r: p[r] for r in m.layout.roles if r in FEATURE_ROLES}
    notes = [f"element {len(m.layout.roles)} ({kind_words(p[ANY])}) is not imported: the family's loaders do not use "
             "it (probably sentiment labels, unverified)"] if ANY in p else []
    return _Raw(notes=notes, family=family, prefix=prefix, description=description, layout=m.layout.name,
                speakers=p["speakers"], labels=p["labels"], sentiment=p.get("sentiment"),
                sentences=p.get("sentences"), utt_ids=p.get("utt_ids"), features=features, splits=splits,
                split_names={("dev" if r == "valid" else r): NAMES[r] for r in ("train", "valid", "test")})


def kind_words(value: Any) -> str:
    from .structure import describe

    return describe(value, depth=1)


def _ordered(ids: Any) -> list | None:
    """A split list in file order (a set has none: sorted, so that the result does not depend on hashing)."""
    if ids is None:
        return None
    if isinstance(ids, (set, frozenset)):
        return sorted(ids, key=lambda k: (str(type(k)), k))
    return [k.item() if isinstance(k, np.generic) else k for k in ids]


def _from_samples(obj: dict, family: str, path: Path) -> _Raw:
    """COGMEN (Sample records) / CORECT (dicts): {"train","dev","test"} -> [{vid, speaker(s), label(s), text,
    audio, visual, sentence}]."""
    speakers, labels, sentences, features = {}, {}, {}, {"text": {}, "audio": {}, "visual": {}}
    splits: dict[str, list | None] = {s: None for s in SAMPLE_SPLITS}
    for split in SAMPLE_SPLITS:
        if split not in obj:
            continue
        splits[split] = []
        for i, s in enumerate(obj[split]):
            vid = _field(s, ("vid",), path, split, i)
            splits[split].append(vid)
            speakers[vid] = list(_field(s, ("speaker", "speakers"), path, split, i))
            labels[vid] = [int(x) for x in _field(s, ("label", "labels"), path, split, i)]
            sentences[vid] = [str(x) for x in _field(s, ("sentence", "sentences"), path, split, i)]
            for role in features:
                features[role][vid] = _field(s, (role,), path, split, i)
    widths = {r: int(np.asarray(next(iter(d.values())), dtype=np.float32).reshape(
        len(next(iter(d.values()))), -1).shape[1]) for r, d in features.items() if d}
    dims = " / ".join(f"{r} {w}" for r, w in widths.items())
    who = "COGMEN (cogmen.Sample records)" if family == "cogmen" else "CORECT (dicts)"
    return _Raw(family=family, prefix=family, description=f"{who} data_iemocap*.pkl: text SBERT, widths {dims}",
                layout=f"{family}-samples", speakers=speakers, labels=labels, sentiment=None, sentences=sentences,
                utt_ids=None, features=features, splits=splits,
                split_names={"train": '"train" samples', "dev": '"dev" samples', "test": '"test" samples'})


def _field(sample: dict, names: tuple[str, ...], path: Path, split: str, i: int) -> Any:
    for n in names:
        if n in sample:
            return sample[n]
    raise ErcImportError(f"{split} sample {i} has no {' / '.join(names)} field (it has {', '.join(map(str, sample))})",
                         file=str(path), fix="import the file COGMEN/CORECT's preprocessing wrote, unchanged")


# ---------------------------------------------------------------------------------------------------
# _Raw -> ImportedCorpus
# ---------------------------------------------------------------------------------------------------

class _Builder:
    def __init__(self, raw: _Raw, path: Path, corpus: str, dev_split: str, classes: int | None):
        self.raw, self.path, self.corpus, self.dev_policy, self.classes = raw, path, corpus, dev_split, classes
        self.notes: list[str] = list(raw.notes)
        self.text_fixes = {"utf8_decoded": 0, "cp1252_repaired": 0}

    def fail(self, problem: str, fix: str) -> ErcImportError:
        return ErcImportError(problem, file=str(self.path), fix=fix)

    def build(self) -> ImportedCorpus:
        raw = self.raw
        spaces = self._label_spaces()
        split_of, dev_rule = self._splits()
        ids = {key: self._dialogue_id(key) for key in split_of}
        dialogues = [self._dialogue(key, ids[key], split_of[key], spaces) for key in split_of]
        manifest = Manifest(name=self.corpus, label_spaces=spaces, dialogues=dialogues, root=str(self.path))
        features = [self._features(role, split_of, ids, dialogues) for role in raw.features]
        counts = {s: sum(1 for d in dialogues if d.split == s) for s in ("train", "dev", "test")}
        provenance = {
            "family": raw.family, "layout": raw.layout, "description": raw.description,
            "sources": [source_record(self.path)], "corpus": self.corpus,
            "label_map": {name: dict(enumerate(space.classes)) for name, space in spaces.items()},
            "dev_split": dev_rule, "splits": counts,
            "dialogue_ids": ("MELD integer keys mapped back to official ids: key < 1039 -> train_dia<key>, "
                             "1039.. -> dev_dia<key-1039>, 1153.. -> test_dia<key-1153>") if self.corpus == "meld"
            else "the file's dialogue keys",
            "utterance_ids": self.utt_rule, "speakers": self.speaker_rule,
            "text": {**self.text_fixes, "cp1252_rule": CP1252_RULE if self.corpus == "meld" else None},
            "notes": self.notes,
        }
        manifest.policies = {"corpus": self.corpus.upper(), "label_source": f"imported from {self.path.name} "
                             f"({raw.family}, {raw.layout})", "splits": {"dev": dev_rule, **counts}}
        return ImportedCorpus(manifest=manifest, features=features, provenance=provenance)

    # -- labels ----------------------------------------------------------------------------------------
    def _label_spaces(self) -> dict[str, LabelSpace]:
        seen = sorted({int(x) for v in self.raw.labels.values() for x in v})
        if self.corpus == "iemocap":
            n = self.classes or (6 if not seen or seen[-1] >= 4 else 4)
            space = {6: IEMOCAP_6, 4: IEMOCAP_4}.get(n)
            if space is None:
                raise self.fail(f"IEMOCAP has 6 or 4 classes, not {n}", "pass classes=6 or classes=4")
            if n == 4 and not self.classes:
                self.notes.append("no label is 4 or 5: read as the 4-class set (hap sad neu ang, COGMEN iemocap_4); "
                                  "pass --option classes=6 if this is the 6-class file")
            self._check_range(seen, space, "labels")
            return {"emotion": space}
        self._check_range(seen, MELD_EMOTION, "labels")
        spaces = {"emotion": MELD_EMOTION}
        if self.raw.sentiment is not None:
            self._check_range(sorted({int(x) for v in self.raw.sentiment.values() for x in v}), MELD_SENTIMENT,
                              "sentiment labels")
            spaces["sentiment"] = MELD_SENTIMENT
        return spaces

    def _check_range(self, seen: list[int], space: LabelSpace, what: str) -> None:
        bad = [x for x in seen if not 0 <= x < len(space.classes)]
        if not bad:
            return
        other = self._looks_like()
        raise self.fail(
            f"{what} {bad} are outside {self.corpus}'s {len(space.classes)} classes "
            f"({', '.join(f'{i} {c}' for i, c in enumerate(space.classes))})" + (f"; {other}" if other else ""),
            f"pass the --dataset the file was made for{' (--dataset ' + other.split()[-1] + ')' if other else ''}, "
            "or check it is the original file")

    def _looks_like(self) -> str:
        keys = list(self.raw.labels)[:20]
        if keys and all(isinstance(k, (int, np.integer)) or str(k).isdigit() for k in keys):
            return "its dialogue keys are integers, as in MELD files: this looks like meld"
        if keys and all(IEMOCAP_NAME_RE.match(str(k)) for k in keys):
            return "its dialogue keys are IEMOCAP dialog names: this looks like iemocap"
        return ""

    # -- splits ----------------------------------------------------------------------------------------
    def _splits(self) -> tuple[dict[Any, str], str]:
        raw = self.raw
        for split in ("train", "test"):
            ids = raw.splits.get(split)
            if not ids:
                raise self.fail(
                    f"the file has no {split} split list ({raw.split_names.get(split, split)} is "
                    f"{'missing' if ids is None else 'empty'})",
                    "import the complete original file: its split lists say which dialogues are train and test "
                    "(the papers' splits cannot be rebuilt without them)")
        listed: dict[Any, str] = {}
        for split in ("train", "dev", "test"):
            for key in raw.splits.get(split) or []:
                if key in listed and listed[key] != split:
                    raise self.fail(f"dialogue {key!r} is in both the {listed[key]} and the {split} split lists",
                                    "import the original file (its split lists are disjoint)")
                if key not in raw.labels:
                    raise self.fail(f"dialogue {key!r} of the {split} split list has no labels, speakers or "
                                    "features in the file", "the file is truncated or edited: import the original")
                listed[key] = split
        unlisted = [k for k in raw.labels if k not in listed]
        if unlisted:
            self.notes.append(f"{len(unlisted)} dialogue(s) of the file are in no split list and were left out "
                              f"(first: {unlisted[0]!r}), as the family's loaders do")
        return self._dev(listed)

    def _dev(self, listed: dict[Any, str]) -> tuple[dict[Any, str], str]:
        raw = self.raw
        if raw.splits.get("dev"):
            if self.dev_policy not in ("auto",):
                self.notes.append(f"--dev-split {self.dev_policy} ignored: the file defines its dev split")
            return listed, f"the file's own dev list ({raw.split_names['dev']}, {len(raw.splits['dev'])} dialogues)" + (
                "; COGMEN made it as the first 10 % of trainVid" if raw.layout.endswith("samples") else "")
        policy = self.dev_policy
        if policy == "auto":
            policy = "official" if self.corpus == "meld" else "none"
        if policy == "none":
            return listed, ("none: the file has no dev list and none was made (conv-emotion / MMGCN / SDT trained "
                            "without one); pass --dev-split first-10% for COGMEN's rule")
        if policy == "official":  # MELD: the dev dialogues hidden in trainVid, recovered from the key scheme
            n = 0
            for key, split in listed.items():
                if split == "train" and MELD_DEV_BASE <= self._meld_key(key) < MELD_TEST_BASE:
                    listed[key] = "dev"
                    n += 1
            return listed, (f"official MELD dev set, recovered from the dialogue keys (1039..1152 -> dev; {n} "
                             "dialogues of trainVid)")
        train = list(raw.splits["train"])
        dev = set(train[: int(0.1 * len(train))])
        for key in dev:
            listed[key] = "dev"
        return listed, f"first 10 % of {raw.split_names['train']} in file order ({len(dev)} dialogues; COGMEN's rule)"

    # -- ids, speakers, text ---------------------------------------------------------------------------
    def _meld_key(self, key: Any) -> int:
        if isinstance(key, (int, np.integer)) or (isinstance(key, str) and key.isdigit()):
            return int(key)
        raise self.fail(f"MELD dialogue keys are integers; this file has {key!r}"
                        + (" (an IEMOCAP dialog name: pass --dataset iemocap)" if IEMOCAP_NAME_RE.match(str(key)) else ""),
                        "pass the --dataset the file was made for")

    def _dialogue_id(self, key: Any) -> str:
        if self.corpus == "iemocap":
            if isinstance(key, (int, np.integer)):
                raise self.fail(f"IEMOCAP dialogue keys are dialog names; this file has the integer {key!r} "
                                "(integer keys are MELD's: pass --dataset meld)", "pass the --dataset the file was made for")
            return str(key)
        k = self._meld_key(key)
        if k >= MELD_TEST_BASE:
            return f"test_dia{k - MELD_TEST_BASE}"
        if k >= MELD_DEV_BASE:
            return f"dev_dia{k - MELD_DEV_BASE}"
        return f"train_dia{k}"

    def _dialogue(self, key: Any, dia_id: str, split: str, spaces: dict[str, LabelSpace]) -> Dialogue:
        raw = self.raw
        labels = list(raw.labels[key])
        n = len(labels)
        speakers = self._speakers(key, dia_id, n)
        sentiment = list(raw.sentiment[key]) if raw.sentiment is not None else None
        texts = [self._text(s) for s in raw.sentences[key]] if raw.sentences is not None else [""] * n
        for what, values in (("speakers", speakers), ("sentences", texts), ("sentiment labels", sentiment)):
            if values is not None and len(values) != n:
                raise self.fail(f"dialogue {key!r} has {n} labels but {len(values)} {what}",
                                "the file is truncated or edited: import the original")
        uids = self._utterance_ids(key, dia_id, n)
        utts = []
        for i in range(n):
            lab = {"emotion": spaces["emotion"].classes[int(labels[i])]}
            if sentiment is not None:
                lab["sentiment"] = spaces["sentiment"].classes[int(sentiment[i])]
            utts.append(Utterance(id=uids[i], dialogue_id=dia_id, speaker=speakers[i], text=texts[i], split=split,
                                  labels=lab, source_file=str(self.path), source_row=i))
        return Dialogue(id=dia_id, split=split, utterances=utts)

    def _speakers(self, key: Any, dia_id: str, n: int) -> list[str]:
        values = list(self.raw.speakers[key])
        arr = np.asarray(values) if values and not isinstance(values[0], (str, np.str_)) else None
        if arr is not None and arr.ndim == 2:  # one-hot rows
            idx = arr.argmax(axis=1).tolist()
            if self.corpus == "iemocap" and arr.shape[1] == 2:
                self.speaker_rule = "IEMOCAP one-hot [1,0] = M, [0,1] = F, named Ses<NN><M|F> from the dialog name"
                return [self._iemocap_speaker(dia_id, "MF"[i]) for i in idx]
            self.speaker_rule = ("one-hot rows indexed by order of first appearance in the dialogue: named "
                                 "<dialogue>:spk<index> (the file has no speaker names)")
            return [f"{dia_id}:spk{i}" for i in idx]
        if arr is not None:  # integer speaker indices
            self.speaker_rule = "integer speaker indices, named <dialogue>:spk<index>"
            return [f"{dia_id}:spk{int(i)}" for i in arr.reshape(-1)]
        if self.corpus == "iemocap":
            self.speaker_rule = "IEMOCAP 'M'/'F' letters, named Ses<NN><M|F> from the dialog name (as the adapter)"
            return [self._iemocap_speaker(dia_id, str(s)) for s in values]
        self.speaker_rule = "speaker names as the file gives them"
        return [str(s) for s in values]

    @staticmethod
    def _iemocap_speaker(dia_id: str, letter: str) -> str:
        m = IEMOCAP_NAME_RE.match(dia_id)
        return f"Ses{m.group(1)}{letter.upper()}" if m and letter.upper() in ("M", "F") else letter

    speaker_rule = ""
    utt_rule = ""

    def _utterance_ids(self, key: Any, dia_id: str, n: int) -> list[str]:
        given = list(self.raw.utt_ids[key]) if self.raw.utt_ids is not None else None
        if given is not None and len(given) == n and len(set(map(str, given))) == n:
            if all(isinstance(u, str) and u for u in given):
                self.utt_rule = "the file's utterance ids (videoIDs)"
                return [str(u) for u in given]
            if all(isinstance(u, (int, np.integer)) for u in given) and self.corpus == "meld":
                self.utt_rule = "<dialogue>_utt<videoIDs value> (the file's integer utterance ids)"
                return [f"{dia_id}_utt{int(u)}" for u in given]
        self.utt_rule = ("<dialogue>_pos<i>: the position in the dialogue (the file has no utterance ids; MELD's "
                         "Utterance_IDs have gaps, so positions are not official ids)")
        return [f"{dia_id}_pos{i}" for i in range(n)]

    def _text(self, s: Any) -> str:
        text = s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s)
        if any("\x80" <= ch <= "\xff" for ch in text):  # a Python 2 str read as latin1 may be UTF-8 bytes
            try:
                fixed = text.encode("latin1").decode("utf-8")
            except (UnicodeEncodeError, UnicodeDecodeError):
                fixed = text
            if fixed != text:
                self.text_fixes["utf8_decoded"] += 1
                text = fixed
        if self.corpus == "meld":
            fixed = repair_cp1252(text)
            if fixed != text:
                self.text_fixes["cp1252_repaired"] += 1
                text = fixed
        return text

    # -- features --------------------------------------------------------------------------------------
    def _features(self, role: str, split_of: dict, ids: dict, dialogues: list[Dialogue]) -> ImportedFeatures:
        values = self.raw.features[role]
        pooled, nonfinite = {}, 0
        for key, d in zip(split_of, dialogues, strict=True):
            if key not in values:
                raise self.fail(f"dialogue {key!r} has no {role} features", "the file is truncated: import the original")
            try:
                rows = np.asarray(values[key], dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise self.fail(f"dialogue {key!r}: {role} features are not a numeric array ({exc})",
                                "the file is damaged: import the original") from None
            rows = rows.reshape(len(rows), -1) if rows.ndim != 2 else rows
            if len(rows) != len(d):
                raise self.fail(f"dialogue {key!r} has {len(d)} labels but {len(rows)} {role} feature rows",
                                "the file is truncated or edited: import the original")
            bad = ~np.isfinite(rows)
            if bad.any():
                nonfinite += int(bad.sum())
                rows = np.where(bad, 0.0, rows).astype(np.float32)
            pooled[d.id] = rows
        policies = {"nonfinite": "zero", "values": nonfinite} if nonfinite else {}
        if nonfinite:
            self.notes.append(f"{role}: {nonfinite} NaN/inf value(s) set to 0")
        name = f"{self.raw.prefix}-{role}"
        return ImportedFeatures(name=name, modality=MODALITY[role], pooled=pooled, policies=policies,
                                description=f"{NAMES.get(role, role)} of {self.raw.description}")


__all__ = ["CosmicTextImporter", "ErcPickleImporter"]
