"""`merc-extract verify` and `status`: the store checked and summarised without trusting any of it.

verify reads every file of every committed dialogue against its recorded checksum, decodes it, checks
shapes against the manifest and values for NaN/inf, and checks that each dialogue was extracted from
what the manifest now says. A damaged file is a problem line naming the dialogue, never a crash; each
feature set with problems ends with the one command that redoes exactly the bad dialogues.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .files import DamagedError, check_files, read_array, read_attrs
from .layout import FRAME_ARRAYS, FRAMES, PACKED, POOLED, VALID, StoreError, dialogue_key
from .reader import DialogueState, StoreReader
from .writer import committed_groups


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return self.problems + [f"fix: {f}" for f in self.fixes]


def verify_store(reader: StoreReader) -> Report:
    report = Report()
    for ds in reader.datasets():
        try:
            reader.manifest_columns(ds)
        except StoreError as exc:
            report.problems.append(exc.finding.problem)
            report.fixes.append(exc.finding.fix)
            continue
        for fs in reader.feature_sets(ds):
            where = f"{ds}/{fs}"
            try:
                problems = _verify_feature_set(reader, ds, fs)
            except Exception as exc:  # noqa: BLE001 - verify reports, it never crashes on what it reads
                problems = [f"{where}: cannot be checked ({type(exc).__name__}: {exc})"]
            if problems:
                report.problems.extend(problems)
                report.fixes.append(f"rerun {reader.extract_command(ds, fs, None)} (it redoes exactly these "
                                    "dialogues and keeps the rest)")
    return report


def _verify_feature_set(reader: StoreReader, ds: str, fs: str) -> list[str]:
    info = reader.info(ds, fs)
    folder = reader.path / ds / fs
    dim = int(info["dim"])
    lengths = reader.utterance_counts(ds)
    problems = []
    states = reader.dialogue_states(ds, fs)
    manifest_keys = {s.key for s in states}
    for key in sorted(k.name for k in folder.iterdir() if k.is_dir() and k.name != PACKED):
        if key not in manifest_keys:
            attrs = read_attrs(folder / key) or {}
            what = "committed" if attrs.get("complete") else "uncommitted"
            problems.append(f"{ds}/{fs}/{key}: a {what} dialogue the manifest does not have "
                            f"({attrs.get('dialogue_id', '?')}); the next merc-extract run drops it")
    missing = [s.dialogue_id for s in states if s.state == "missing"]
    if missing:
        leftover = [s.dialogue_id for s in states if s.state == "missing" and (folder / s.key).exists()]
        problems.append(f"{ds}/{fs}: {len(missing)} dialogue(s) not extracted yet (first: {missing[0]})"
                        + (f"; {len(leftover)} of them uncommitted (a killed run)" if leftover else ""))
    stale = [s.dialogue_id for s in states if s.state == "stale"]
    if stale:
        problems.append(f"{ds}/{fs}: {len(stale)} dialogue(s) extracted from other inputs than the manifest now "
                        f"holds (first: {stale[0]})")
    for s in states:
        if s.state == "current":
            why = _check_dialogue(reader, ds, fs, s, lengths[s.dialogue_id], dim, FRAMES in info["levels"])
            if why:
                problems.append(f"{ds}/{fs}/{s.key}: dialogue {s.dialogue_id!r} is damaged: {why}")
    if (folder / PACKED).exists() and not missing and not stale and not reader.packed_current(ds, fs):
        problems.append(f"{ds}/{fs}/packed: does not match the per-dialogue arrays (damaged or out of date); "
                        "readers ignore it")
    return problems


def _check_dialogue(reader: StoreReader, ds: str, fs: str, s: DialogueState, n_utt: int, dim: int,
                    frames: bool) -> str | None:
    folder = reader.path / ds / fs / s.key
    if not s.checksums:
        return "no checksums recorded"
    bad = check_files(folder, s.checksums)
    if bad:
        return bad[0] + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
    try:
        pooled, valid = (read_array(folder, n, s.checksums) for n in (POOLED, VALID))
        if pooled.shape != (n_utt, dim) or valid.shape != (n_utt,):
            return f"pooled {pooled.shape} / valid {valid.shape}, the manifest has {n_utt} utterances of dim {dim}"
        if not np.isfinite(pooled[valid].astype(np.float32)).all():
            return "non-finite values in valid rows"
        if frames:
            x, offsets = (read_array(folder, n, s.checksums) for n in FRAME_ARRAYS)
            if len(offsets) != n_utt + 1 or offsets[0] != 0 or offsets[-1] != len(x) or (np.diff(offsets) < 0).any():
                return "frame offsets do not cover the frames"
    except DamagedError as exc:
        return exc.finding.problem
    return None


def status_rows(reader: StoreReader) -> list[dict]:
    """One row per feature set: what it is, how complete, what failed (reads markers, not arrays)."""
    rows = []
    for ds in reader.datasets():
        try:
            n_dia = reader.dataset_attrs(ds).get("n_dialogues", 0)
        except StoreError:
            n_dia = "?"
        for fs in reader.feature_sets(ds):
            try:
                info = reader.info(ds, fs)
                states = reader.dialogue_states(ds, fs)
                current = sum(s.state == "current" for s in states)
                stale = sum(s.state == "stale" for s in states)
                packed = reader.packed_current(ds, fs)
            except StoreError:
                info, current, stale, packed = {}, len(committed_groups(reader.path / ds / fs)), "?", False
            report = info.get("report", {})
            rows.append({"dataset": ds, "feature_set": fs, "encoder": info.get("encoder", ""),
                         "modality": info.get("modality", ""), "dim": info.get("dim"),
                         "dialogues_done": current, "dialogues_stale": stale, "dialogues_total": n_dia,
                         "utterances_failed": report.get("utterances_failed", 0), "packed": packed,
                         "fingerprint": info.get("fingerprint_hash"), "failures": report.get("failures", []),
                         "provenance": info.get("provenance")})
    return rows


def provenance_rows(reader: StoreReader) -> list[tuple[str, dict, bool]]:
    """(where, provenance, is_dataset) of every imported dataset table and feature set (for `status`)."""
    out = []
    for ds in reader.datasets():
        try:
            prov = (reader.dataset_attrs(ds)["manifest"].get("policies") or {}).get("import")
        except StoreError:
            continue
        if prov:
            out.append((ds, prov, True))
        for fs in reader.feature_sets(ds):
            try:
                fs_prov = reader.info(ds, fs).get("provenance")
            except StoreError:
                continue
            if fs_prov:
                out.append((f"{ds}/{fs}", fs_prov, False))
    return out


__all__ = ["Report", "dialogue_key", "provenance_rows", "status_rows", "verify_store"]
