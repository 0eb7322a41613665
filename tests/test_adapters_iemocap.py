"""IEMOCAP adapter on a tiny IEMOCAP_full_release written here: protocols, splits, names, findings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from merc.data_manifests import ManifestError, load_manifest
from merc.data_manifests.adapters.iemocap import load_iemocap
from merc.data_manifests.labels import IEMOCAP_4, IEMOCAP_6

# Per session: dialog -> turns (last field, start, emotion code), written out of time order on purpose.
TURNS = [("F000", 6.2, "neu"), ("M000", 1.5, "hap"), ("F001", 9.0, "exc"), ("M001", 12.0, "sad"),
         ("F002", 15.0, "ang"), ("M002", 18.0, "fru"), ("F003", 21.0, "xxx"), ("M003", 24.0, "sur")]
MISSING_WAV = "Ses02F_impro01_M001"


def dialogs(session: int) -> list[str]:
    names = [f"Ses0{session}F_impro01", f"Ses0{session}M_script01_1"]
    return names + (["Ses03M_impro08a"] if session == 3 else [])


def make_iemocap(base: Path, wavs: bool = True) -> Path:
    release = base / "IEMOCAP_full_release"
    audio = np.zeros(160, dtype=np.float32)
    for n in range(1, 6):
        session = release / f"Session{n}"
        evaluation, transcripts = session / "dialog" / "EmoEvaluation", session / "dialog" / "transcriptions"
        for folder in (evaluation / "Categorical", transcripts):
            folder.mkdir(parents=True, exist_ok=True)
        for dialog in dialogs(n):
            eva = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            tra = [f"{dialog}_MXX0 [000.0000-001.0000]: [LAUGHTER]", "M: (not a transcript line)"]
            for last, start, code in TURNS:
                utt = f"{dialog}_{last}"
                eva += [f"[{start:.4f} - {start + 2:.4f}]\t{utt}\t{code}\t[2.5000, 3.0000, 3.5000]",
                        "C-E1:\tNeutral;\t()", "A-E3:\tval 3; act 2; dom  2;\t()", ""]
                tra.append(f"{utt} [{start:08.4f}-{start + 2:08.4f}]: words of {utt}")
                if wavs and utt != MISSING_WAV:
                    (session / "sentences" / "wav" / dialog).mkdir(parents=True, exist_ok=True)
                    sf.write(session / "sentences" / "wav" / dialog / f"{utt}.wav", audio, 16000)
            (evaluation / f"{dialog}.txt").write_text("\n".join(eva) + "\n")
            (transcripts / f"{dialog}.txt").write_text("\r\n".join(tra) + "\r\n")
        # Traps: an AppleDouble file and an evaluator subfolder that would break parsing if read.
        (evaluation / f"._{dialogs(n)[0]}.txt").write_bytes(b"\x00\x05\x16\x07[garbage")
        (evaluation / "Categorical" / f"{dialogs(n)[0]}_e1_cat.txt").write_text(
            f"[1.0 - 2.0]\t{dialogs(n)[0]}_F000\tneu\t[1, 1, 1]\n")
    return release


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_iemocap(tmp_path_factory.mktemp("iemocap"))


def emotions(m) -> set[str]:
    return {u.labels["emotion"] for u in m.utterances()}


def test_6_erc(release: Path) -> None:
    m = load_iemocap(release, protocol="6-erc")
    assert m.label_spaces["emotion"] == IEMOCAP_6 and emotions(m) == set(IEMOCAP_6.classes)
    assert m.n_utterances == 11 * 6
    assert m.policies["dropped"] == {"by_code": {"xxx": 11, "sur": 11}, "total": 22, "empty_dialogues": []}
    assert "53" in m.policies["protocol"]["caution"]
    u = m.dialogue("Ses01F_impro01").utterances[0]
    assert u.labels == {"emotion": "hap", "valence": 2.5, "arousal": 3.0, "dominance": 3.5}
    assert u.text == "words of Ses01F_impro01_M000" and Path(u.media).name == "Ses01F_impro01_M000.wav"
    assert u.source_file.endswith("EmoEvaluation/Ses01F_impro01.txt") and u.source_row == 7
    assert m.policies["encodings"] == {"default": "utf-8", "other_files": {}}


def test_4_erc_drops_exc_and_fru(release: Path) -> None:
    m = load_manifest("iemocap", release, protocol="4-erc")
    assert m.label_spaces["emotion"] == IEMOCAP_4 and emotions(m) == {"hap", "sad", "neu", "ang"}
    assert m.n_utterances == 11 * 4 and m.policies["dropped"]["by_code"]["exc"] == 11


def test_4_ser_merges_exc_into_hap(release: Path) -> None:
    m = load_iemocap(release, protocol="4-ser")
    assert emotions(m) == {"hap", "sad", "neu", "ang"} and m.n_utterances == 11 * 5
    exc = m.dialogue("Ses01F_impro01").utterances[2]
    assert exc.id == "Ses01F_impro01_F001" and exc.labels["emotion"] == "hap"
    assert sum(u.labels["emotion"] == "hap" for u in m.utterances()) == 22


def test_order_speakers_and_names(release: Path) -> None:
    m = load_iemocap(release)
    d = m.dialogue("Ses03M_impro08a")
    assert [u.id.rsplit("_", 1)[1] for u in d.utterances] == ["M000", "F000", "F001", "M001", "F002", "M002"]
    assert [u.speaker for u in d.utterances][:2] == ["Ses03M", "Ses03F"]
    assert {u.speaker for u in m.utterances()} == {f"Ses0{n}{g}" for n in range(1, 6) for g in "FM"}


def test_appledouble_and_subfolders_are_ignored(release: Path) -> None:
    m = load_iemocap(release)
    assert m.policies["ignored_files"]["appledouble_or_hidden"] == 5
    assert len(m.dialogues) == 11


def test_session_5_is_test_and_dev_is_seeded(release: Path) -> None:
    a = load_iemocap(release, dev_fraction=0.25, dev_seed=3)
    b = load_iemocap(release, dev_fraction=0.25, dev_seed=3)
    assert {d.id for d in a.split("test")} == {"Ses05F_impro01", "Ses05M_script01_1"}
    dev, train = {d.id for d in a.split("dev")}, {d.id for d in a.split("train")}
    assert dev == {d.id for d in b.split("dev")} and len(dev) == 2 and not dev & train
    assert len(dev | train) == 9
    assert a.policies["splits"]["dev"]["seed"] == 3 and a.policies["splits"]["dev"]["dialogues"] == sorted(dev)
    assert {d.id for d in load_iemocap(release, dev_fraction=0.25, dev_seed=4, protocol="4-ser").split("dev")} \
        <= dev | train


def test_explicit_dev_list(release: Path) -> None:
    m = load_iemocap(release, dev_dialogues=["Ses03M_impro08a", "Ses01F_impro01"])
    assert {d.id for d in m.split("dev")} == {"Ses03M_impro08a", "Ses01F_impro01"}
    assert m.policies["splits"]["dev"]["rule"] == "explicit list"
    with pytest.raises(ManifestError, match="unknown dev dialogue 'Ses09F_impro01'.*Fix"):
        load_iemocap(release, dev_dialogues=["Ses09F_impro01"])
    with pytest.raises(ManifestError, match="Session 5"):
        load_iemocap(release, dev_dialogues=["Ses05F_impro01"])


def test_missing_wav_is_a_finding(release: Path) -> None:
    m = load_iemocap(release)
    [finding] = m.findings
    assert finding.utterance_id == MISSING_WAV and "audio features will be missing" in finding.problem
    assert finding.file.endswith("Ses02F_impro01.txt") and finding.row is not None
    assert next(u for u in m.utterances() if u.id == MISSING_WAV).media is None


def test_root_above_release_and_text_only(tmp_path: Path) -> None:
    make_iemocap(tmp_path / "data", wavs=False)
    m = load_iemocap(tmp_path, modalities=("text",))
    assert m.n_utterances == 66 and all(u.media is None for u in m.utterances())
    with pytest.raises(ManifestError, match="--modalities text"):
        load_iemocap(tmp_path)


def test_bad_turn_lines_name_file_and_row(tmp_path: Path) -> None:
    release = make_iemocap(tmp_path, wavs=False)
    path = release / "Session2" / "dialog" / "EmoEvaluation" / "Ses02F_impro01.txt"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace("\tneu\t", "\tjoy\t")
    lines[6] = "[1.5 - oops]"
    path.write_text("\n".join(lines))
    with pytest.raises(ManifestError) as err:
        load_iemocap(release, modalities=("text",))
    msg = str(err.value)
    assert f"{path}, row 3" in msg and "'joy'" in msg and f"{path}, row 7" in msg and "Fix" in msg
