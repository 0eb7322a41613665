"""The papers' IEMOCAP set: the raw release aligned with the labels of a community pickle (formats.md B, F).

The 6-class ERC numbers of conv-emotion, COSMIC and COGMEN are on a 7,433-utterance set whose labels
cannot be rebuilt from EmoEvaluation consensus (53 of its `hap` utterances have no such consensus). So
`--labels-from <pickle>` takes the set, the labels and the dev split from the pickle (read by the
extract layer's importer into a reference Manifest) and the clips, times and transcripts from the
release. Each reference utterance is matched to a turn of the same dialog: by utterance id where the
pickle keeps the real names (conv-emotion's videoIDs), else by order and text (COSMIC's pickles have
none). Every reference utterance that finds no turn is reported; turns the reference does not hold are
left out and counted; every label that differs from the consensus is counted by (consensus -> label).
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from pathlib import Path

from ..errors import Finding, ManifestError
from ..manifest import Dialogue, LabelSpace, Manifest, Utterance

_WORD = re.compile(r"[a-z0-9']+")
MAX_LISTED = 50


def aligned_dialogues(turns: list, texts: dict[str, str], reference: Manifest, sessions: dict[int, Path],
                      policies: dict, findings: list[Finding], utterance_fn, test_session: int
                      ) -> tuple[list[Dialogue], LabelSpace]:
    """Dialogues of the reference, in its order, built from the release's turns (`utterance_fn` = the
    adapter's turn -> Utterance). Returns (dialogues, the reference's emotion label space)."""
    space = reference.label_spaces.get("emotion")
    if space is None or space.kind != "categorical":
        raise ManifestError("the labels file has no categorical emotion labels", file=reference.root,
                            fix="pass an IEMOCAP ERC pickle (conv-emotion, COSMIC, COGMEN ...)")
    by_dialog: dict[str, list] = {}
    for t in turns:
        by_dialog.setdefault(t.dialog, []).append(t)
    ref_dev = sorted(d.id for d in reference.dialogues if d.split == "dev")
    report = {"aligned_by_id": 0, "aligned_by_text": 0, "unaligned": [], "unaligned_total": 0,
              "release_turns_left_out": 0, "relabelled": Counter(), "split_disagreements": []}
    dialogues = []
    for ref in reference.dialogues:
        group = sorted(by_dialog.get(ref.id, []), key=lambda t: (t.start, t.utt))
        session = group[0].session if group else None
        split = "test" if session == test_session else "dev" if ref.id in ref_dev else "train"
        if ref.split != split and not (ref.split == "train" and split == "dev"):
            report["split_disagreements"].append(f"{ref.id}: {ref.split} in the labels file, {split} here")
        utts: list[Utterance] = []
        for ref_u, t, how in _pair(ref.utterances, group, texts):
            if t is None:
                _unaligned(report, ref_u.id, "no turn of the release matches it" if group
                           else f"the release has no dialog {ref.id}", findings, reference.root)
                continue
            label = ref_u.labels.get("emotion")
            report[f"aligned_by_{how}"] += 1
            if t.code != label:
                report["relabelled"][f"{t.code}->{label}"] += 1
            utts.append(utterance_fn(t, texts, {t.code: label}, split, sessions, policies, findings))
        report["release_turns_left_out"] += len(group) - len(utts)
        if utts:
            dialogues.append(Dialogue(id=ref.id, split=split, utterances=utts))
    report["relabelled"] = dict(sorted(report["relabelled"].items()))
    policies["labels_from"] = {"file": reference.root, "label_source": reference.policies.get("label_source"),
                               "classes": list(space.classes), **report}
    policies["protocol"]["name"] = f"{policies['protocol']['name']}:labels-from"  # numbers on the file's set
    policies["protocol"]["classes"] = list(space.classes)
    policies["protocol"]["code_to_class"] = None
    policies["protocol"]["label_source"] = f"labels file {reference.root} (aligned with the release)"
    policies["protocol"]["set"] = (f"the labels file's set: {sum(len(d) for d in dialogues)} utterances in "
                                   f"{len(dialogues)} dialogues")
    policies["protocol"]["caution"] = None
    if ref_dev:
        policies["splits"]["dev"] = {"rule": "the labels file's dev split", "dialogues": ref_dev}
    else:
        policies["splits"]["dev"] = {**policies["splits"]["dev"], "note": "the labels file has no dev split; "
                                     "the adapter's rule was applied to its dialogues"}
    return dialogues, space


def _pair(ref_utts: list[Utterance], group: list, texts: dict[str, str]):
    """(reference utterance, turn or None, "id" | "text") in reference order."""
    by_id = {t.utt: t for t in group}
    matched: dict[int, tuple] = {}
    used = set()
    for i, u in enumerate(ref_utts):
        if u.id in by_id:
            matched[i] = (by_id[u.id], "id")
            used.add(u.id)
    rest = [i for i in range(len(ref_utts)) if i not in matched]
    free = [t for t in group if t.utt not in used]
    if rest and free:
        a = [_norm(ref_utts[i].text) for i in rest]
        b = [_norm(texts.get(t.utt, "")) for t in free]
        sm = difflib.SequenceMatcher(None, a, b, autojunk=False)
        for block in sm.get_matching_blocks():
            for k in range(block.size):
                if a[block.a + k]:  # an empty text matches nothing
                    matched[rest[block.a + k]] = (free[block.b + k], "text")
    for i, u in enumerate(ref_utts):
        t, how = matched.get(i, (None, ""))
        yield u, t, how


def _norm(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def _unaligned(report: dict, utt_id: str, why: str, findings: list[Finding], file: str) -> None:
    report["unaligned_total"] += 1
    if len(report["unaligned"]) < MAX_LISTED:
        report["unaligned"].append(utt_id)
        findings.append(Finding(file=file, utterance_id=utt_id,
                                problem=f"utterance of the labels file not aligned with the release: {why}; left out",
                                fix="check that the labels file and the release are the same IEMOCAP version"))
