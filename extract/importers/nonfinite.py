"""What an importer does with -inf / +inf / NaN in a community feature file: one named, recorded policy.

Released MOSI/MOSEI features hold non-finite values (COVAREP has ``-inf`` frames; MMSA's loader zeroes
them). A store must hold finite numbers, and a silent ``nan_to_num`` would make two imports of the same
file incomparable once someone changes it, so every importer counts what it found (how many values, in
which keys) and applies one of:

    zero    replace each non-finite value by 0 (what MMSA does; the default)
    mask    keep the utterance's labels, mark its vector in that feature set as missing (valid = False),
            so heads treat it like a clip that failed to extract
    error   refuse the file, naming the keys, so the user decides

The policy and the counts go into the import's provenance and the manifest's findings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from merc.data_manifests.errors import Finding, ManifestError

NAN_POLICIES = ("zero", "mask", "error")
DEFAULT_NAN_POLICY = "zero"
MAX_KEYS_LISTED = 10


def check_policy(policy: str, where: str) -> str:
    if policy not in NAN_POLICIES:
        raise ManifestError(f"unknown nan_policy {policy!r}", file=where,
                            fix=f"use one of {', '.join(NAN_POLICIES)} (default {DEFAULT_NAN_POLICY})")
    return policy


@dataclass
class NonFiniteReport:
    """Non-finite values of one feature source (a file and array), per key (segment or video id)."""

    file: str  # the file the values come from
    policy: str
    array: str = ""  # which array of the file ("audio" of an MMSA pickle); "" for a one-array file (.csd)
    neg_inf: int = 0
    pos_inf: int = 0
    nan: int = 0
    keys: dict[str, int] = field(default_factory=dict)  # key -> non-finite values in it
    masked: list[str] = field(default_factory=list)  # utterance ids marked missing (policy mask)

    @property
    def total(self) -> int:
        return self.neg_inf + self.pos_inf + self.nan

    def apply(self, key: str, values: np.ndarray) -> tuple[np.ndarray, bool]:
        """Count the non-finite values of `values` (the frames of one key) and apply the policy.

        Returns (finite values, usable); usable is False when the policy masks this key. The error policy
        only counts here: call `raise_if_error` once the whole file is read, so the message lists every key.
        """
        finite = np.isfinite(values)
        if finite.all():
            return values, True
        bad = values[~finite]
        self.nan += int(np.isnan(bad).sum())
        self.neg_inf += int(np.isneginf(bad).sum())
        self.pos_inf += int(np.isposinf(bad).sum())
        self.keys[key] = self.keys.get(key, 0) + int(bad.size)
        cleaned = np.where(finite, values, 0).astype(values.dtype, copy=False)
        if self.policy == "mask":
            self.masked.append(key)
            return cleaned, False
        return cleaned, True

    def raise_if_error(self, fix_hint: str) -> None:
        if self.policy == "error" and self.total:
            raise ManifestError(f"{self.describe()}; refused under nan_policy=error", file=self.file,
                                fix=f"clean the file, or import it with {fix_hint}zero (as MMSA does) or {fix_hint}mask")

    def describe(self) -> str:
        keys = list(self.keys)
        shown = ", ".join(keys[:MAX_KEYS_LISTED]) + (f" ... (+{len(keys) - MAX_KEYS_LISTED})"
                                                     if len(keys) > MAX_KEYS_LISTED else "")
        return (f"{self.array + ': ' if self.array else ''}{self.total} non-finite value(s) (-inf {self.neg_inf}, +inf {self.pos_inf}, "
                f"NaN {self.nan}) in {len(keys)} key(s): {shown}")

    def finding(self) -> Finding | None:
        """A non-fatal note for the manifest, or None when the source was clean."""
        if not self.total:
            return None
        done = {"zero": "set to 0", "mask": f"{len(self.masked)} vector(s) marked missing"}.get(self.policy, "")
        return Finding(file=self.file, problem=f"{self.describe()}; {done} (nan_policy={self.policy})",
                       fix="nothing to do if that is what you want; nan_policy=mask keeps them out of training")

    def to_dict(self) -> dict:
        return {"file": self.file, "array": self.array, "policy": self.policy, "values": self.total, "neg_inf": self.neg_inf,
                "pos_inf": self.pos_inf, "nan": self.nan, "keys": dict(self.keys), "masked": list(self.masked)}
