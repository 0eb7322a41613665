"""openSMILE functionals (eGeMAPS v02: 88-d, ComParE 2016: 6373-d) - the embedded audio defaults.

Cheap per clip (~30-60 ms) and single-threaded, so the whole computation happens in the worker
processes: decode + resample + functionals, and the main process only stores the vectors. They are
stored as float32: their raw values are far outside float16's range and resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from merc.data_manifests.manifest import Utterance
from merc.extract.media import AudioPolicy, load_audio

from .base import FORMAT_VERSION, Encoder, Prepared, Preparer

FEATURE_SETS = {"egemaps": ("eGeMAPSv02", 88), "compare": ("ComParE_2016", 6373)}


@dataclass
class SmilePreparer(Preparer):
    feature_set: str
    policy: AudioPolicy

    def __post_init__(self) -> None:
        self._smile = None  # built lazily inside each worker process

    def __getstate__(self) -> dict:
        return {"feature_set": self.feature_set, "policy": self.policy}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __call__(self, utt: Utterance) -> Prepared:
        audio = load_audio(utt.media, self.policy, utt.start, utt.end)
        if self._smile is None:
            import opensmile

            self._smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, self.feature_set),
                                          feature_level=opensmile.FeatureLevel.Functionals)
        values = self._smile.process_signal(audio.samples, self.policy.sample_rate).to_numpy()[0]
        notes = [f"capped {audio.capped_from:.1f} s to {self.policy.max_seconds:g} s"] if audio.capped_from else []
        return Prepared(utt.id, values.astype(np.float32), len(audio.samples), notes)


class OpenSmileEncoder(Encoder):
    modality = "audio"
    final_in_preparer = True
    store_dtype = "float32"  # functionals span 1e-4 .. 1e11 (ComParE spectral variances): float16 would give inf

    def __init__(self, name: str, policy: AudioPolicy | None = None):
        super().__init__(name)
        self.feature_set, self._dim = FEATURE_SETS[name]
        self.policy = policy or AudioPolicy()

    @property
    def dim(self) -> int:
        return self._dim

    def preparer(self) -> Preparer:
        return SmilePreparer(self.feature_set, self.policy)

    def fingerprint(self) -> dict:
        import opensmile

        return {"family": "opensmile", "feature_set": self.feature_set, "opensmile": opensmile.__version__,
                "level": "functionals", "audio": self.policy.to_dict(), "merc_format": FORMAT_VERSION}
