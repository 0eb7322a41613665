"""Place an import's features on the utterances of a dataset the store already holds.

Why: one corpus reaches users in several families whose ids differ (formats.md H6): MMSA and the raw
MMSA-FET adapter call a MOSI/MOSEI segment ``<video>_<clip>`` (MMSA writes ``<video>$_$<clip>``), the
CMU-MultimodalSDK ``<video>[<i>]``, where ``i`` is the segment's row in the label csd, not the clip id; and
COSMIC's COMET file has no ids below the dialogue at all. Importing a second family into the same dataset
must therefore not replace the stored corpus description (labels, splits, text): its features are placed
on the stored utterances and its own description is used only to find them. Two rules:

* "position" (COMET, `ImportedCorpus.attach == "required"`): the file's dialogues are the stored ones and
  each has as many rows as the stored dialogue has utterances; anything else fails, naming the first
  mismatching dialogue, before a byte is written.
* "segments" (MOSI/MOSEI, ``"if-stored"``): an utterance is found by its id or one of its aliases; the
  rest of a video is paired by order (clip index on one side, SDK index on the other, both the spoken
  order) but only when the video has as many segments on both sides AND every pair carries the same
  sentiment label (both come from the same CMU annotation), so a pairing is checked by data, never
  assumed. Each paired utterance gets the other family's id as an alias (table column ``aliases``), so the
  next import of that family matches by name. Stored utterances the file lacks get no vector (marked
  missing); file segments with no stored utterance are counted and dropped. If nothing can be paired, it
  fails and says why and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from merc.data_manifests.errors import ManifestError
from merc.data_manifests.manifest import Manifest

from ..store.files import read_attrs
from .base import ImportedCorpus, ImportedFeatures

LABEL_TOLERANCE = 1e-3  # MMSA keeps the SDK's float64 sentiment as float32
CHECK_LABEL = "sentiment"
Pair = tuple[str, int] | None  # (dialogue id in the import, row) of a stored utterance, or None: not in the file


class AttachError(ManifestError):
    """An import's features cannot be placed on the stored dataset's utterances."""


@dataclass
class AttachReport:
    rule: str
    by_id: int = 0
    by_order: int = 0
    stored_without: int = 0  # stored utterances the file has no row for
    dropped: int = 0  # the file's utterances with no stored utterance
    unpaired_videos: list[str] = field(default_factory=list)  # "video: why"
    aliases_added: int = 0

    def lines(self, dataset: str) -> list[str]:
        out = [f"{dataset}: features placed on the stored utterances ({self.rule}): {self.by_id} by id or alias"
               + (f", {self.by_order} by segment order checked by the {CHECK_LABEL} labels" if self.rule == "segments"
                  else "") + (f"; {self.aliases_added} alias(es) recorded" if self.aliases_added else "")]
        if self.stored_without:
            out.append(f"{dataset}: {self.stored_without} stored utterance(s) have no row in this file: marked missing")
        if self.dropped:
            out.append(f"{dataset}: {self.dropped} utterance(s) of the file have no stored utterance: not imported")
        if self.unpaired_videos:
            out.append(f"{dataset}: {len(self.unpaired_videos)} video(s) could not be paired: "
                       + "; ".join(self.unpaired_videos[:5]) + (" ..." if len(self.unpaired_videos) > 5 else ""))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "by_id": self.by_id, "by_order": self.by_order, "stored_without": self.stored_without,
                "dropped": self.dropped, "unpaired_videos": self.unpaired_videos[:50],
                "aliases_added": self.aliases_added}


def needs_attach(store: Path, dataset: str, corpus: ImportedCorpus, overwrite: bool) -> bool:
    """Whether `corpus` goes onto the stored dataset instead of bringing its own description."""
    if corpus.attach == "required":
        return True
    if corpus.attach != "if-stored" or overwrite:
        return False
    attrs = read_attrs(store / dataset)
    return bool(attrs) and "manifest" in attrs and attrs.get("manifest_digest") != corpus.manifest.digest()


def attach(store: Path, dataset: str, corpus: ImportedCorpus) -> tuple[ImportedCorpus, AttachReport]:
    """`corpus` with the stored manifest (plus any new aliases) and its features re-indexed onto it."""
    from ..store import StoreReader

    where = ", ".join(str(s.get("file")) for s in corpus.provenance.get("sources", []))
    attrs = read_attrs(store / dataset)
    if not attrs or "manifest" not in attrs:
        raise AttachError(
            f"the store has no dataset {dataset!r} to add these features to: the file holds features only "
            "(no labels, speakers or splits)", file=where,
            fix=f"first import the corpus description into {store} (e.g. COSMIC's {dataset}_features_roberta.pkl, "
                f"or extract --dataset {dataset}), then import this file with the same --dataset / --name")
    stored = StoreReader(store).manifest(dataset)
    if corpus.attach == "required":
        pairs, report = _by_position(stored, corpus.manifest, where)
    else:
        pairs, report = _by_segments(stored, corpus.manifest, where)
    features = [_reindex(fs, stored, pairs) for fs in corpus.features]
    report.stored_without = sum(p is None for ps in pairs.values() for p in ps)
    provenance = {**corpus.provenance, "attached": report.to_dict(),
                  "notes": list(corpus.provenance.get("notes", [])) + report.lines(dataset)}
    return replace(corpus, manifest=stored, features=features, provenance=provenance), report


# --- pairing --------------------------------------------------------------------------------------------
def _by_position(stored: Manifest, given: Manifest, where: str) -> tuple[dict[str, list[Pair]], AttachReport]:
    """Every stored dialogue is in the file with as many rows as utterances, and nothing else is."""
    counts = {d.id: len(d) for d in given.dialogues}
    for d in stored.dialogues:
        if d.id not in counts:
            raise AttachError(f"dialogue {d.id!r} of the stored dataset is not in the file ({len(counts)} dialogues "
                              f"there, {len(stored.dialogues)} stored)", file=where,
                              fix="import the COMET file made for the same corpus and dialogues as the stored dataset")
        if counts[d.id] != len(d):
            raise AttachError(f"dialogue {d.id!r} has {counts[d.id]} rows in the file but {len(d)} utterances in the "
                              "store", file=where,
                              fix="the file and the stored dataset are different versions of the corpus: import the "
                                  "COSMIC roberta pickle this COMET file belongs to")
    extra = [i for i in counts if i not in {d.id for d in stored.dialogues}]
    if extra:
        raise AttachError(f"dialogue {extra[0]!r} of the file is not in the stored dataset ({len(extra)} such)",
                          file=where, fix="import the COMET file made for the same dialogues as the stored dataset")
    pairs = {d.id: [(d.id, i) for i in range(len(d))] for d in stored.dialogues}
    return pairs, AttachReport(rule="position", by_id=stored.n_utterances)


def _by_segments(stored: Manifest, given: Manifest, where: str) -> tuple[dict[str, list[Pair]], AttachReport]:
    report = AttachReport(rule="segments")
    name_of: dict[str, tuple[str, int]] = {}  # any name of a stored utterance -> (dialogue, row)
    for d in stored.dialogues:
        for i, u in enumerate(d.utterances):
            for n in (u.id, *u.aliases):
                name_of.setdefault(n, (d.id, i))
    pairs: dict[str, list[Pair]] = {d.id: [None] * len(d) for d in stored.dialogues}
    stored_by_id = {d.id: d for d in stored.dialogues}
    for gd in given.dialogues:
        left: list[int] = []
        for r, u in enumerate(gd.utterances):
            hit = next((name_of[n] for n in (u.id, *u.aliases) if n in name_of), None)
            if hit is not None and pairs[hit[0]][hit[1]] is None:
                pairs[hit[0]][hit[1]] = (gd.id, r)
                report.by_id += 1
            else:
                left.append(r)
        if left:
            _pair_video(gd, left, stored_by_id.get(gd.id), pairs, report)
    if report.by_id + report.by_order == 0:
        why = "; ".join(report.unpaired_videos[:3]) or "no video of the file is in the stored dataset"
        raise AttachError(
            f"none of the file's {given.n_utterances} segments can be placed on the stored dataset's utterances "
            f"(ids differ and the order pairing was refused: {why})", file=where,
            fix="import it as its own dataset (--name <dataset>-<family>), or replace the stored table with "
                "--overwrite (the stored feature sets of changed utterances become stale)")
    _add_aliases(stored, given, pairs, report)
    return pairs, report


def _pair_video(gd: Any, rows: list[int], sd: Any, pairs: dict[str, list[Pair]], report: AttachReport) -> None:
    """Pair the unmatched segments of one video by order, if counts and every sentiment label agree."""
    if sd is None:
        report.dropped += len(rows)
        return
    free = [i for i, p in enumerate(pairs[sd.id]) if p is None]
    why = None
    if len(free) != len(rows):
        why = f"{len(rows)} segments in the file, {len(free)} unmatched stored"
    else:
        for i, r in zip(free, rows, strict=True):
            a, b = sd.utterances[i].labels.get(CHECK_LABEL), gd.utterances[r].labels.get(CHECK_LABEL)
            if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
                why = f"no {CHECK_LABEL} label on both sides to check the order"
                break
            if abs(float(a) - float(b)) > LABEL_TOLERANCE:
                why = f"segment {gd.utterances[r].id} has {CHECK_LABEL} {b:g}, its partner {sd.utterances[i].id} {a:g}"
                break
    if why is not None:
        report.unpaired_videos.append(f"{gd.id}: {why}")
        report.dropped += len(rows)
        return
    for i, r in zip(free, rows, strict=True):
        pairs[sd.id][i] = (gd.id, r)
        report.by_order += 1


def _add_aliases(stored: Manifest, given: Manifest, pairs: dict[str, list[Pair]], report: AttachReport) -> None:
    """Record the file's names of each paired utterance on the stored one (only names it lacks)."""
    given_by_id = {d.id: d for d in given.dialogues}
    for d in stored.dialogues:
        for u, p in zip(d.utterances, pairs[d.id], strict=True):
            if p is None:
                continue
            g = given_by_id[p[0]].utterances[p[1]]
            new = [n for n in (g.id, *g.aliases) if n != u.id and n not in u.aliases]
            if new:
                u.aliases = (*u.aliases, *new)
                report.aliases_added += len(new)


# --- features -------------------------------------------------------------------------------------------
def _reindex(fs: ImportedFeatures, stored: Manifest, pairs: dict[str, list[Pair]]) -> ImportedFeatures:
    """The feature set's rows in the stored order; utterances without a row get zeros, marked missing."""
    dim = next(np.asarray(v).shape[1] for v in fs.pooled.values())
    pooled, valid, frames = {}, {}, {} if fs.frames is not None else None
    for d in stored.dialogues:
        rows = np.zeros((len(d), dim), np.float32)
        ok = np.zeros(len(d), bool)
        chunks, lengths = [], np.zeros(len(d), np.int64)
        for i, p in enumerate(pairs[d.id]):
            if p is None:
                continue
            src, r = p
            rows[i] = np.asarray(fs.pooled[src][r], np.float32)
            ok[i] = True if fs.valid is None or src not in fs.valid else bool(fs.valid[src][r])
            if frames is not None:
                data, offsets = fs.frames[src]
                chunk = np.asarray(data[offsets[r]:offsets[r + 1]], np.float32)
                chunks.append(chunk)
                lengths[i] = len(chunk)
        pooled[d.id], valid[d.id] = rows, ok
        if frames is not None:
            data = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
            frames[d.id] = (data, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    return replace(fs, pooled=pooled, valid=valid, frames=frames)


__all__ = ["AttachError", "AttachReport", "attach", "needs_attach"]
