"""IEMOCAP_full_release -> Manifest, from the EmoEvaluation consensus files and the transcripts.

Why it is built this way (formats.md B):

* Labels come from ``SessionN/dialog/EmoEvaluation/*.txt`` (only the files directly in that folder;
  its subfolders hold per-evaluator files) and only from the turn lines that start with ``[``.
* Names are parsed with ``rsplit('_', 1)``: fixed offsets break on ``Ses03M_impro08a_F000``. The
  speaker is ``Ses{NN}`` plus the first letter of the last field (10 speakers in all).
* The field uses three protocols on the same files: 6-class ERC (hap sad neu ang exc fru), 4-class
  ERC (hap sad neu ang, exc dropped; COGMEN) and 4-class SER (exc merged into hap). Other consensus
  codes (xxx oth sur fea dis) are dropped and counted, never silently.
* Caution: the 6-class ERC label set shared as community pickles (conv-emotion, COSMIC, MERBench
  ``label_6way``) has 53 more ``hap`` utterances than EmoEvaluation consensus gives, so the 6-erc
  manifest built here has 648 - 53 = 595 hap. Use an importer of those pickles to reproduce the
  published 7433-utterance set exactly; this is recorded in the manifest policies.
* Session 5 is the test split, as in ERC papers; dev is a seeded random fraction of the Session 1-4
  dialogues (or an explicit list, e.g. COSMIC's 12), recorded so that a run can be reproduced.
* macOS ``._*`` AppleDouble files break readers and are ignored.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import Finding, ManifestError
from ..labels import IEMOCAP_4, IEMOCAP_6, IEMOCAP_VAD
from ..manifest import Dialogue, LabelSpace, Manifest, Utterance
from . import ADAPTERS
from ._common import TextFile, is_hidden, raise_problems, read_lines, require_root

SESSION_RE = re.compile(r"^Session([1-5])$")
TURN_RE = re.compile(r"^\[\s*([\d.]+)\s*-\s*([\d.]+)\s*\]\s+(\S+)\s+(\S+)\s+\[([^\]]*)\]")
TRANSCRIPT_RE = re.compile(r"^(\S+) \[([\d.]+)-([\d.]+)\]:\s*(.*)$")
UTT_RE = re.compile(r"^Ses(\d{2})[FM]_")
CONSENSUS_CODES = ("neu", "hap", "exc", "sad", "ang", "fru", "sur", "fea", "dis", "oth", "xxx")
TEST_SESSION = 5

PROTOCOLS: dict[str, tuple[LabelSpace, dict[str, str], str]] = {
    "6-erc": (IEMOCAP_6, {c: c for c in IEMOCAP_6.classes},
              "6-class ERC (conv-emotion/COGMEN/COSMIC): hap sad neu ang exc fru"),
    "4-erc": (IEMOCAP_4, {c: c for c in IEMOCAP_4.classes},
              "4-class ERC (COGMEN iemocap_4): hap sad neu ang, exc dropped"),
    "4-ser": (IEMOCAP_4, {**{c: c for c in IEMOCAP_4.classes}, "exc": "hap"},
              "4-class SER (s3prl/EmoBox/emotion2vec): neu, hap with exc merged in, ang, sad"),
}
CAUTION_6_ERC = ("the community 6-class ERC pickles (conv-emotion/COSMIC/MERBench label_6way) hold 53 more 'hap' "
                 "utterances than EmoEvaluation consensus gives (648 vs 595); they cannot be derived from "
                 "EmoEvaluation, so this manifest does not reproduce the 7433-utterance set exactly: import the "
                 "pickles' labels to match published numbers")
# COSMIC's explicit dev set (declare-lab/conv-emotion COSMIC iemocap.pkl), pass dev_dialogues="cosmic".
COSMIC_DEV_DIALOGUES = (
    "Ses01M_impro01", "Ses01M_script03_1", "Ses02F_impro02", "Ses02F_impro07", "Ses02M_script01_2",
    "Ses03F_impro01", "Ses03M_impro02", "Ses03M_impro08a", "Ses03M_script02_2", "Ses03M_script03_2",
    "Ses04F_impro07", "Ses04F_script02_1",
)


@dataclass
class _Turn:
    utt: str
    dialog: str
    session: int
    speaker: str
    start: float
    end: float
    code: str
    vad: tuple[float, float, float]
    file: Path
    line: int


@ADAPTERS.register("iemocap", "IEMOCAP_full_release (6-erc, 4-erc, 4-ser protocols)")
def load_iemocap(root: str | Path, *, protocol: str = "6-erc", dev_fraction: float = 0.1, dev_seed: int = 0,
                 dev_dialogues: Sequence[str] | str | None = None,
                 modalities: Sequence[str] = ("text", "audio"), labels_from: Manifest | None = None) -> Manifest:
    """Build a validated IEMOCAP manifest from `root` (IEMOCAP_full_release or a folder above it).

    protocol: "6-erc", "4-erc" or "4-ser" (see the module docstring); valence/arousal/dominance are
    always stored as regression labels too.
    dev_fraction, dev_seed: dev = a seeded random fraction of the Session 1-4 dialogues.
    dev_dialogues: an explicit dev list instead (dialog names such as "Ses01F_impro01"), or "cosmic".
    modalities: with ``("text",)`` the sentence wav folders are optional.
    labels_from: a reference manifest read from a community pickle (`merc-extract --labels-from FILE` reads it
    with the importer): its utterance set, labels and dev split replace the consensus ones, the release
    gives clips, times and text (iemocap_align.py). Every utterance it could not align is a finding.
    """
    root = require_root(root, "IEMOCAP", fix="pass the IEMOCAP_full_release folder (it holds Session1..Session5)")
    if protocol not in PROTOCOLS:
        raise ManifestError(f"unknown IEMOCAP protocol {protocol!r}", file="load_iemocap options",
                            fix=f"use one of {', '.join(PROTOCOLS)}")
    if not 0 <= dev_fraction < 1:
        raise ManifestError(f"dev_fraction must be in [0, 1), got {dev_fraction}", file="load_iemocap options",
                            fix="pass e.g. dev_fraction=0.1")
    release, sessions = _find_sessions(root)
    policies = _base_policies(protocol, release, sessions)
    problems: list[Finding] = []
    findings: list[Finding] = []
    turns = _read_evaluations(sessions, problems, findings, policies)
    texts = _read_transcripts(sessions, "text" in modalities, problems, findings, policies)
    _check_wav_folders(sessions, modalities, problems)
    raise_problems(problems)
    dev = _choose_dev(turns, dev_fraction, dev_seed, dev_dialogues, release, policies)
    space, mapping, _ = PROTOCOLS[protocol]
    if labels_from is not None:
        from .iemocap_align import aligned_dialogues

        dialogues, space = aligned_dialogues(turns, texts, labels_from, sessions, policies, findings, _utterance,
                                             TEST_SESSION)
        if not any(d.split == "dev" for d in labels_from.dialogues):
            dialogues = [Dialogue(d.id, "dev", [_with_split(u, "dev") for u in d.utterances])
                         if d.id in dev and d.split == "train" else d for d in dialogues]
    else:
        dialogues = _build_dialogues(turns, texts, mapping, dev, sessions, policies, findings)
    manifest = Manifest(name="iemocap", root=str(release), dialogues=dialogues, policies=policies,
                        findings=findings, label_spaces={"emotion": space, **IEMOCAP_VAD})
    manifest.validate()
    return manifest


def _base_policies(protocol: str, release: Path, sessions: dict[int, Path]) -> dict:
    space, mapping, description = PROTOCOLS[protocol]
    return {
        "corpus": "IEMOCAP",
        "protocol": {"name": protocol, "description": description, "classes": list(space.classes),
                     "code_to_class": mapping,
                     "label_source": "EmoEvaluation consensus (turn lines starting with '[')",
                     "caution": CAUTION_6_ERC if protocol == "6-erc" else None,
                     "evaluation_note": "SER papers report leave-one-session-out 5-fold; the split here is "
                                        "Session 5 = test (speaker ids carry the session)"},
        "regression_labels": {"valence/arousal/dominance": "EmoEvaluation [V, A, D], range 1..5"},
        "dropped": {"by_code": {}, "total": 0, "empty_dialogues": []},
        "splits": {"test": f"Session {TEST_SESSION}", "train": "Session 1-4 dialogues not in dev", "dev": {}},
        "ordering": "utterances by start time within the dialog (EmoEvaluation times), ties by id",
        "audio": {"source": "SessionN/sentences/wav/<dialog>/<utt>.wav", "sample_rate": 16000, "channels": 1},
        "sessions": {str(k): str(v) for k, v in sorted(sessions.items())},
        "missing_wavs": [],
        "missing_transcripts": [],
        "ignored_files": {"appledouble_or_hidden": 0},
        "encodings": {"default": "utf-8", "other_files": {}},  # file -> cp1252 / utf-8 with N line(s) ...
        "release": str(release),
    }


# --- locating the release -------------------------------------------------------------------------------
def _find_sessions(root: Path, max_depth: int = 3) -> tuple[Path, dict[int, Path]]:
    """Find the folder holding Session1..5 at `root` or up to `max_depth` levels below it."""
    level = [root]
    for _ in range(max_depth + 1):
        for folder in level:
            sessions = _sessions_in(folder)
            if sessions:
                return folder, sessions
        level = [c for f in level for c in _subdirs(f)]
    raise ManifestError("no Session1..Session5 folders found at or below the root", file=str(root),
                        fix="pass the IEMOCAP_full_release folder that holds Session1..Session5")


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p.name))
    except OSError:
        return []


def _sessions_in(folder: Path) -> dict[int, Path]:
    out = {}
    for d in _subdirs(folder):
        m = SESSION_RE.match(d.name)
        if m and (d / "dialog").is_dir():
            out[int(m.group(1))] = d
    return out


def _txt_files(folder: Path, policies: dict) -> list[Path]:
    """The ``*.txt`` files directly in `folder` (subfolders and ``._`` files ignored)."""
    out = []
    for p in sorted(folder.iterdir()):
        if is_hidden(p.name):
            policies["ignored_files"]["appledouble_or_hidden"] += 1
        elif p.is_file() and p.suffix.lower() == ".txt":
            out.append(p)
    return out


# --- EmoEvaluation ----------------------------------------------------------------------------------------
def _read_evaluations(sessions: dict[int, Path], problems: list[Finding], findings: list[Finding],
                      policies: dict) -> list[_Turn]:
    turns: list[_Turn] = []
    first_seen: dict[str, _Turn] = {}
    for n, session in sorted(sessions.items()):
        folder = session / "dialog" / "EmoEvaluation"
        if not folder.is_dir():
            problems.append(Finding(file=str(folder), problem=f"Session{n} has no dialog/EmoEvaluation folder",
                                    fix="restore the folder from the IEMOCAP release"))
            continue
        for path in _txt_files(folder, policies):
            for turn in _parse_evaluation(_read(path, findings, policies), n, problems):
                if turn.utt in first_seen:
                    prev = first_seen[turn.utt]
                    problems.append(Finding(
                        file=str(path), row=turn.line, utterance_id=turn.utt,
                        problem=f"duplicate utterance id {turn.utt!r} (first at {prev.file}, line {prev.line})",
                        fix="remove one of the two lines"))
                    continue
                first_seen[turn.utt] = turn
                turns.append(turn)
    return turns


def _read(path: Path, findings: list[Finding], policies: dict) -> TextFile:
    """Decode one text file; lines that were not UTF-8 become notes and the file's encoding a policy."""
    source = read_lines(path)
    findings.extend(source.notes())
    if source.encoding != "utf-8":
        policies["encodings"]["other_files"][str(path)] = source.encoding
    return source


def _parse_evaluation(source: TextFile, session: int, problems: list[Finding]) -> list[_Turn]:
    out = []
    for line_no, line in source.numbered():
        if not line.startswith("["):
            continue
        turn = _parse_turn(line, source.path, line_no, session, problems)
        if turn is not None:
            out.append(turn)
    return out


def _parse_turn(line: str, path: Path, line_no: int, session: int, problems: list[Finding]) -> _Turn | None:
    def bad(problem: str, fix: str) -> None:
        problems.append(Finding(file=str(path), row=line_no, problem=problem, fix=fix))

    m = TURN_RE.match(line)
    if not m:
        bad(f"unparsable turn line {line.strip()!r}", "write it as '[START - END]<TAB>UTT_ID<TAB>emo<TAB>[V, A, D]'")
        return None
    start, end, utt, code, vad_text = m.groups()
    code = code.lower()
    if code not in CONSENSUS_CODES:
        bad(f"unknown emotion code {code!r} (expected one of {', '.join(CONSENSUS_CODES)})",
            "correct the consensus code on this line")
        return None
    try:
        vad = tuple(float(v) for v in vad_text.split(","))
    except ValueError:
        vad = ()
    if len(vad) != 3:
        bad(f"cannot read [V, A, D] from {vad_text!r}", "write three numbers, e.g. [2.5000, 3.0000, 3.0000]")
        return None
    speaker = _speaker(utt)
    if speaker is None:
        bad(f"utterance id {utt!r} is not like Ses01F_impro01_F000",
            "keep the IEMOCAP naming Ses{NN}{F|M}_<dialog>_{F|M}{NNN}")
        return None
    return _Turn(utt=utt, dialog=utt.rsplit("_", 1)[0], session=session, speaker=speaker, start=float(start),
                 end=float(end), code=code, vad=vad, file=path, line=line_no)  # type: ignore[arg-type]


def _speaker(utt: str) -> str | None:
    """``Ses03M_impro08a_F000`` -> ``Ses03F``: the session plus the first letter of the LAST field."""
    m = UTT_RE.match(utt)
    if not m or "_" not in utt:
        return None
    last = utt.rsplit("_", 1)[1]
    if not last or last[0].upper() not in "FM":
        return None
    return f"Ses{m.group(1)}{last[0].upper()}"


# --- transcripts and wavs -------------------------------------------------------------------------------
def _read_transcripts(sessions: dict[int, Path], need_text: bool, problems: list[Finding],
                      findings: list[Finding], policies: dict) -> dict[str, str]:
    texts: dict[str, str] = {}
    for n, session in sorted(sessions.items()):
        folder = session / "dialog" / "transcriptions"
        if not folder.is_dir():
            if need_text:
                problems.append(Finding(file=str(folder), problem=f"Session{n} has no dialog/transcriptions folder",
                                        fix="restore it from the IEMOCAP release, or use modalities=('audio',)"))
            continue
        for path in _txt_files(folder, policies):
            for _, line in _read(path, findings, policies).numbered():
                m = TRANSCRIPT_RE.match(line.strip())
                if m:
                    texts.setdefault(m.group(1), m.group(4).strip())
    return texts


def _check_wav_folders(sessions: dict[int, Path], modalities: Sequence[str], problems: list[Finding]) -> None:
    if "audio" not in modalities:
        return
    for n, session in sorted(sessions.items()):
        folder = session / "sentences" / "wav"
        if not folder.is_dir():
            problems.append(Finding(file=str(folder), problem=f"Session{n} has no sentences/wav folder",
                                    fix="restore it from the IEMOCAP release, or build a text-only manifest with "
                                        "modalities=('text',) (CLI: --modalities text)"))


# --- splits ---------------------------------------------------------------------------------------------
def _choose_dev(turns: list[_Turn], fraction: float, seed: int, explicit: Sequence[str] | str | None,
                release: Path, policies: dict) -> set[str]:
    """Pick dev dialogues among Session 1-4 ones (all parsed dialogues, so every protocol gets the same)."""
    train_pool = sorted({t.dialog for t in turns if t.session != TEST_SESSION})
    test_pool = {t.dialog for t in turns if t.session == TEST_SESSION}
    if explicit is not None:
        names = list(COSMIC_DEV_DIALOGUES) if explicit == "cosmic" else [explicit] if isinstance(explicit, str) \
            else list(explicit)
        _check_explicit_dev(names, set(train_pool), test_pool, release)
        chosen = sorted(set(names))
        rule = {"rule": "explicit list" + (" (COSMIC)" if explicit == "cosmic" else "")}
    else:
        k = round(fraction * len(train_pool))
        chosen = sorted(random.Random(seed).sample(train_pool, k))
        rule = {"rule": "seeded random sample of Session 1-4 dialogues (random.Random(seed).sample over the "
                        "sorted dialogue names, k = round(fraction * n))", "fraction": fraction, "seed": seed}
    policies["splits"]["dev"] = {**rule, "dialogues": chosen}
    return set(chosen)


def _check_explicit_dev(names: list[str], train_pool: set[str], test_pool: set[str], release: Path) -> None:
    problems = []
    for name in names:
        if name in test_pool:
            problems.append(Finding(file=str(release), problem=f"dev dialogue {name!r} is in Session 5 (the test split)",
                                    fix="choose dev dialogues from Sessions 1-4"))
        elif name not in train_pool:
            example = ", ".join(sorted(train_pool)[:3])
            problems.append(Finding(file=str(release), problem=f"unknown dev dialogue {name!r}",
                                    fix=f"use dialog names as in EmoEvaluation, e.g. {example}"))
    raise_problems(problems)


# --- building -------------------------------------------------------------------------------------------
def _build_dialogues(turns: list[_Turn], texts: dict[str, str], mapping: dict[str, str], dev: set[str],
                     sessions: dict[int, Path], policies: dict, findings: list[Finding]) -> list[Dialogue]:
    by_dialog: dict[str, list[_Turn]] = {}
    for t in turns:
        by_dialog.setdefault(t.dialog, []).append(t)
    dialogues = []
    for name in sorted(by_dialog, key=lambda d: (by_dialog[d][0].session, d)):
        group = sorted(by_dialog[name], key=lambda t: (t.start, t.utt))
        split = "test" if group[0].session == TEST_SESSION else "dev" if name in dev else "train"
        utterances = []
        for t in group:
            if t.code not in mapping:
                dropped = policies["dropped"]
                dropped["by_code"][t.code] = dropped["by_code"].get(t.code, 0) + 1
                dropped["total"] += 1
                continue
            utterances.append(_utterance(t, texts, mapping, split, sessions, policies, findings))
        if utterances:
            dialogues.append(Dialogue(id=name, split=split, utterances=utterances))
        else:
            policies["dropped"]["empty_dialogues"].append(name)
    return dialogues


def _with_split(u: Utterance, split: str) -> Utterance:
    u.split = split
    return u


def _utterance(t: _Turn, texts: dict[str, str], mapping: dict[str, str], split: str, sessions: dict[int, Path],
               policies: dict, findings: list[Finding]) -> Utterance:
    wav = sessions[t.session] / "sentences" / "wav" / t.dialog / f"{t.utt}.wav"
    has_wav = wav.is_file()
    if not has_wav:
        policies["missing_wavs"].append(t.utt)
        findings.append(Finding(file=str(t.file), row=t.line, utterance_id=t.utt,
                                problem=f"{wav} not found; the audio features will be missing for this utterance",
                                fix="restore the wav from the IEMOCAP release if you need its audio"))
    if t.utt not in texts:
        policies["missing_transcripts"].append(t.utt)
        findings.append(Finding(file=str(t.file), row=t.line, utterance_id=t.utt,
                                problem="no transcript line for this utterance; its text is empty",
                                fix=f"add '{t.utt} [start-end]: text' to dialog/transcriptions/{t.dialog}.txt"))
    labels: dict[str, str | float | None] = {"emotion": mapping[t.code]}
    for name, value in zip(("valence", "arousal", "dominance"), t.vad, strict=True):
        if IEMOCAP_VAD[name].check(value):
            findings.append(Finding(file=str(t.file), row=t.line, utterance_id=t.utt,
                                    problem=f"{name} {value} is outside 1..5; stored as missing",
                                    fix="correct the [V, A, D] values on this line"))
            value = None
        labels[name] = value
    return Utterance(id=t.utt, dialogue_id=t.dialog, speaker=t.speaker, text=texts.get(t.utt, ""), split=split,
                     labels=labels, media=str(wav) if has_wav else None, source_file=str(t.file),
                     source_row=t.line)
