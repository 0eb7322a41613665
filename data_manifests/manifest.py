"""The one manifest type every corpus adapter produces: dialogues of ordered utterances.

Small dataclasses in the lhotse style. A manifest is plain data: it can be written to JSON, stored
next to the features, hashed (the digest goes into every feature fingerprint), and validated so that
an unknown label or a duplicate id is caught here, once, with the file and row that caused it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal

from .errors import Finding, ManifestErrors

LabelKind = Literal["categorical", "multilabel", "regression"]
LabelValue = str | float | tuple[str, ...] | None
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class LabelSpace:
    """A named label space with its classes in the field's standard order (formats.md G)."""

    name: str
    kind: LabelKind
    classes: tuple[str, ...] = ()
    value_range: tuple[float, float] | None = None  # regression only, e.g. (-3, 3)

    def index(self, value: str) -> int:
        return self.classes.index(value)

    def check(self, value: LabelValue) -> str | None:
        """Return a problem description if `value` does not belong to this space, else None."""
        if value is None:
            return None
        if self.kind == "categorical":
            if value not in self.classes:
                return f"unknown {self.name} label {value!r} (expected one of {', '.join(self.classes)})"
        elif self.kind == "multilabel":
            unknown = [v for v in value if v not in self.classes]  # type: ignore[union-attr]
            if unknown:
                return f"unknown {self.name} label(s) {unknown} (expected a subset of {', '.join(self.classes)})"
        else:
            if not isinstance(value, (int, float)) or math.isnan(float(value)):
                return f"{self.name} value {value!r} is not a number"
            if self.value_range and not (self.value_range[0] <= float(value) <= self.value_range[1]):
                return f"{self.name} value {value} is outside {self.value_range}"
        return None

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "classes": list(self.classes),
                "value_range": list(self.value_range) if self.value_range else None}

    @classmethod
    def from_dict(cls, d: dict) -> LabelSpace:
        vr = d.get("value_range")
        return cls(d["name"], d["kind"], tuple(d.get("classes") or ()), tuple(vr) if vr else None)


@dataclass
class Utterance:
    """One utterance. `media` is an audio/video file; `start`/`end` (seconds) crop it, None = whole file."""

    id: str
    dialogue_id: str
    speaker: str
    text: str
    split: str
    labels: dict[str, LabelValue] = field(default_factory=dict)
    media: str | None = None
    start: float | None = None
    end: float | None = None
    source_row: int | None = None  # row in the adapter's source file, for error messages
    source_file: str | None = None
    # SHA-256 of the media file's content, filled in by merc-extract for encoders that read media: a
    # feature's identity is what the encoder read, so a changed clip is re-encoded and a moved one is not
    media_digest: str | None = None
    # other names of this utterance in other releases of the corpus (e.g. the CMU-MultimodalSDK key
    # ``vid[2]`` of the segment MMSA calls ``vid$_$3``), so files of several families meet on one utterance.
    # Names, not content: left out of the manifest's digest.
    aliases: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["labels"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.labels.items()}
        d["aliases"] = list(self.aliases)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Utterance:
        d = dict(d)
        d["labels"] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.get("labels", {}).items()}
        d["aliases"] = tuple(d.get("aliases") or ())
        return cls(**d)


@dataclass
class Dialogue:
    """An ordered list of utterances that share a split (a MOSI/MOSEI "dialogue" is a video)."""

    id: str
    split: str
    utterances: list[Utterance]

    def __len__(self) -> int:
        return len(self.utterances)


@dataclass
class Manifest:
    """A whole corpus: label spaces, dialogues, recorded policies and non-fatal findings."""

    name: str
    label_spaces: dict[str, LabelSpace]
    dialogues: list[Dialogue]
    root: str = ""
    policies: dict = field(default_factory=dict)  # how splits, text repair, channels... were decided
    findings: list[Finding] = field(default_factory=list)  # reported, not fatal (e.g. a missing clip)

    # --- access -------------------------------------------------------------------------------------
    def utterances(self) -> Iterator[Utterance]:
        for dialogue in self.dialogues:
            yield from dialogue.utterances

    @property
    def n_utterances(self) -> int:
        return sum(len(d) for d in self.dialogues)

    def split(self, name: str) -> list[Dialogue]:
        return [d for d in self.dialogues if d.split == name]

    def dialogue(self, dialogue_id: str) -> Dialogue:
        for d in self.dialogues:
            if d.id == dialogue_id:
                return d
        raise KeyError(dialogue_id)

    def summary(self) -> str:
        parts = []
        for s in SPLITS + tuple(sorted({d.split for d in self.dialogues} - set(SPLITS))):
            ds = self.split(s)
            if ds:
                parts.append(f"{s} {len(ds)} dialogues / {sum(len(d) for d in ds)} utterances")
        return f"{self.name}: " + ", ".join(parts)

    # --- validation ---------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ManifestErrors listing every duplicate id, unknown label, bad split or empty dialogue."""
        problems: list[Finding] = []
        seen_utt: dict[str, Utterance] = {}
        seen_dia: set[str] = set()
        for dialogue in self.dialogues:
            if dialogue.id in seen_dia:
                problems.append(Finding(file=self._file(dialogue.utterances[0] if dialogue.utterances else None),
                                        problem=f"dialogue id {dialogue.id!r} appears twice",
                                        fix="give every dialogue a unique id"))
            seen_dia.add(dialogue.id)
            if not dialogue.utterances:
                problems.append(Finding(file=self.root or self.name, problem=f"dialogue {dialogue.id!r} is empty",
                                        fix="drop the dialogue or add its utterances"))
            for utt in dialogue.utterances:
                if utt.id in seen_utt:
                    first = seen_utt[utt.id]
                    problems.append(Finding(
                        file=self._file(utt), row=utt.source_row, utterance_id=utt.id,
                        problem=f"duplicate utterance id {utt.id!r} (first seen at row {first.source_row})",
                        fix="remove the repeated row or give it a unique id"))
                seen_utt[utt.id] = utt
                if utt.split != dialogue.split:
                    problems.append(Finding(file=self._file(utt), row=utt.source_row, utterance_id=utt.id,
                                            problem=f"split {utt.split!r} differs from its dialogue's {dialogue.split!r}",
                                            fix="keep every utterance of a dialogue in one split"))
                for name, value in utt.labels.items():
                    space = self.label_spaces.get(name)
                    if space is None:
                        problems.append(Finding(file=self._file(utt), row=utt.source_row, utterance_id=utt.id,
                                                problem=f"label {name!r} has no label space",
                                                fix=f"declare it or use one of {sorted(self.label_spaces)}"))
                        continue
                    msg = space.check(value)
                    if msg:
                        problems.append(Finding(file=self._file(utt), row=utt.source_row, utterance_id=utt.id,
                                                problem=msg, fix="correct the label or map it to a known class"))
        if problems:
            raise ManifestErrors(problems)

    def _file(self, utt: Utterance | None) -> str:
        return (utt.source_file if utt and utt.source_file else None) or self.root or self.name

    # --- serialisation ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "root": self.root,
            "label_spaces": [s.to_dict() for s in self.label_spaces.values()],
            "policies": self.policies,
            "findings": [f.to_dict() for f in self.findings],
            "dialogues": [{"id": d.id, "split": d.split, "utterances": [u.to_dict() for u in d.utterances]}
                          for d in self.dialogues],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        spaces = [LabelSpace.from_dict(s) for s in d["label_spaces"]]
        return cls(
            name=d["name"], root=d.get("root", ""),
            label_spaces={s.name: s for s in spaces},
            policies=d.get("policies", {}),
            findings=[Finding(**f) for f in d.get("findings", [])],
            dialogues=[Dialogue(x["id"], x["split"], [Utterance.from_dict(u) for u in x["utterances"]])
                       for x in d["dialogues"]],
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        return cls.from_dict(json.loads(text))

    def digest(self) -> str:
        """Hash of the corpus description: ids, order, text, speakers, media spans, splits and labels.

        It names a version of the manifest (shown by `merc-extract status`); it is NOT a feature's
        identity: features are keyed per dialogue by what their encoder read (extract/store/layout.py),
        so a label or split fix changes this digest and keeps every feature. Media paths, source rows
        and findings are left out, so moving a corpus folder does not change it.
        """
        h = hashlib.sha256()
        h.update(json.dumps([s.to_dict() for s in self.label_spaces.values()], sort_keys=True).encode())
        for d in self.dialogues:
            h.update(f"D\x00{d.id}\x00{d.split}\n".encode())
            for u in d.utterances:
                labels = json.dumps(u.to_dict()["labels"], sort_keys=True)
                h.update(f"U\x00{u.id}\x00{u.speaker}\x00{u.text}\x00{u.start}\x00{u.end}\x00{labels}\n".encode())
        return h.hexdigest()[:16]
