"""Speech self-supervised encoders (wav2vec2, HuBERT, WavLM, data2vec-audio) through AutoModel.

Why it is written the way it is:
- workers decode and normalise each clip on its own (the feature extractor's zero-mean/unit-variance
  runs on the unpadded clip), so normalisation never sees another clip's padding;
- models whose CNN front end ends in layer norm (the "large" checkpoints, data2vec-audio) take an
  attention mask: batches are zero-padded and masked;
- models with group norm in the first conv layer (wav2vec2-base, HuBERT-base, WavLM-base:
  `feat_extract_norm="group"`) normalise over time, padding included, and must not see padding at
  all (the model card says: no attention mask, zero padding changes outputs). They are run in
  sub-batches of clips of identical length, so every clip's vector is what it would be alone;
- data2vec-audio's positional embedding is a stack of convolutions; HF zeroes padded frames only
  before the first one, so the later ones would mix padding into the last ~second of real frames.
  Forward hooks zero the padded frames after every layer of that stack, which makes a padded clip's
  frames equal to the clip's frames alone (conv padding is zeros too);
- pooling covers only the frames the CNN produced from real samples
  (`model._get_feat_extract_output_lengths`), never padding.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from merc.data_manifests.manifest import Utterance
from merc.extract.media import AudioPolicy, load_audio

from . import ENCODER_FAMILIES
from ._device import OomGuard, check_device, resolve_dtype, to_device
from ._layers import (
    check_layer_spec,
    count_hidden_states,
    layer_multiplier,
    needs_hidden_states,
    select_layers,
)
from .base import FORMAT_VERSION, Encoded, Encoder, EncoderError, Prepared, Preparer
from .hf_text import load_pretrained, weights_hash

POOLINGS = ("mean",)
SAMPLES_PER_SECOND = 16000


@dataclass
class AudioOptions:
    layers: str = "last"  # last | all | <int> | last<k>-mean (see _layers.py)
    pooling: str = "mean"  # mean over the real frames
    batch_seconds: float = 0.0  # padded audio per batch; 0 = 60 s on CPU, 400 s on CUDA
    device: str = "cpu"
    dtype: str = "auto"
    audio: AudioPolicy = field(default_factory=AudioPolicy)


def audio_notes(audio, policy: AudioPolicy) -> list[str]:
    return [f"capped {audio.capped_from:.1f} s to {policy.max_seconds:g} s"] if audio.capped_from else []


class SSLPreparer(Preparer):
    """Worker side: decode + resample the clip, then the model's own feature extractor on that clip alone."""

    def __init__(self, policy: AudioPolicy, feature_extractor):
        self.policy = policy
        self.feature_extractor = feature_extractor

    def __call__(self, utt: Utterance) -> Prepared:
        audio = load_audio(utt.media, self.policy, utt.start, utt.end)
        values = self.feature_extractor(audio.samples, sampling_rate=self.policy.sample_rate,
                                        return_tensors="np")["input_values"][0]
        values = np.ascontiguousarray(values, dtype=np.float32)
        return Prepared(utt.id, values, len(values), audio_notes(audio, self.policy))


class HFSpeechSSLEncoder(Encoder):
    modality = "audio"

    def __init__(self, name: str, model_id: str, options: AudioOptions | None = None):
        super().__init__(name)
        self.model_id = str(model_id)
        self.opts = options or AudioOptions()
        if self.opts.pooling not in POOLINGS:
            raise EncoderError(f"unknown pooling {self.opts.pooling!r} for a speech encoder",
                               fix=f"use one of {', '.join(POOLINGS)}")
        if self.opts.audio.sample_rate != SAMPLES_PER_SECOND:
            raise EncoderError("speech SSL models expect 16 kHz audio", fix="keep the default sample rate")
        check_device(self.opts.device)
        self.dtype = resolve_dtype(self.opts.dtype, self.opts.device)
        self.feature_extractor = load_pretrained(self.model_id, "AutoFeatureExtractor")
        self.model = load_pretrained(self.model_id, "AutoModel", dtype=self.dtype)
        self.model.eval().to(self.opts.device)
        config = self.model.config
        # group norm over time in the first conv layer: padding would change every clip's statistics
        self.group_norm = getattr(config, "feat_extract_norm", "layer") == "group"
        self._frame_mask_bt = None  # set during a padded forward, read by the positional-conv hooks
        self._mask_positional_convs()
        self.n_hidden_states = count_hidden_states(config)
        check_layer_spec(self.opts.layers, self.n_hidden_states)
        self.guard = OomGuard(self.opts.device)

    def _mask_positional_convs(self) -> None:
        """Zero padded frames after each layer of a stacked positional conv (data2vec-audio)."""
        pos = getattr(getattr(self.model, "encoder", None), "pos_conv_embed", None)
        layers = getattr(pos, "layers", None)
        if self.group_norm or layers is None or len(layers) < 2:
            return

        def zero_padding(module, inputs, output_bct):
            mask_bt = self._frame_mask_bt
            if mask_bt is None or mask_bt.shape[-1] != output_bct.shape[-1]:
                return output_bct
            return output_bct * mask_bt[:, None, :].to(output_bct.dtype)

        for layer in layers:
            layer.register_forward_hook(zero_padding)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size) * layer_multiplier(self.opts.layers, self.n_hidden_states)

    def preparer(self) -> Preparer:
        return SSLPreparer(self.opts.audio, self.feature_extractor)

    def batch_budget(self) -> int:
        seconds = self.opts.batch_seconds or (400.0 if self.opts.device.startswith("cuda") else 60.0)
        return self.guard.budget(int(seconds * SAMPLES_PER_SECOND))

    def encode_batch(self, items: list[Prepared]) -> list[Encoded]:
        if not self.group_norm:
            return self.guard.run(self._forward, items)
        # exact-length groups: no padding at all (items arrive length-sorted, so groups are contiguous)
        out: list[Encoded] = []
        start = 0
        for end in range(1, len(items) + 1):
            if end == len(items) or items[end].length != items[start].length:
                out.extend(self.guard.run(self._forward, items[start:end]))
                start = end
        return out

    def _forward(self, items: list[Prepared]) -> list[Encoded]:
        import torch

        lengths = [len(it.value) for it in items]
        waves_bn = torch.zeros(len(items), max(lengths), dtype=torch.float32)
        for i, it in enumerate(items):
            waves_bn[i, : lengths[i]] = torch.from_numpy(it.value)
        inputs = {"input_values": waves_bn}
        if not self.group_norm:
            inputs["attention_mask"] = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
        elif len(set(lengths)) > 1:
            raise AssertionError("group-norm models must only see equal-length batches")
        inputs = to_device(inputs, self.opts.device, self.dtype)
        n_frames = [max(1, int(n)) for n in self.model._get_feat_extract_output_lengths(torch.tensor(lengths))]
        width = max(n_frames)
        mask_bt = torch.arange(width)[None, :] < torch.tensor(n_frames)[:, None]
        self._frame_mask_bt = mask_bt.to(self.opts.device) if len(set(lengths)) > 1 else None
        try:
            with torch.inference_mode(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")  # WavLM, upstream
                out = self.model(**inputs, output_hidden_states=needs_hidden_states(self.opts.layers))
        finally:
            self._frame_mask_bt = None
        with torch.inference_mode():
            frames_btd = out.last_hidden_state if self.opts.layers == "last" else select_layers(
                out.hidden_states, self.opts.layers)
            if frames_btd.shape[1] != width:
                raise EncoderError(f"{self.model_id} gave {frames_btd.shape[1]} frames where its conv front end "
                                   f"should give {width}", file=self.model_id,
                                   fix="report this model to merc; it may need its own encoder family")
            frames_btd = frames_btd.float()
            mask_bt1 = mask_bt.to(frames_btd.device).unsqueeze(-1).float()
            pooled_bd = (frames_btd * mask_bt1).sum(1) / mask_bt1.sum(1)
            pooled = pooled_bd.cpu().numpy()
            if not self.keep_frames:
                return [Encoded(p) for p in pooled]
            frames = frames_btd.cpu().numpy()
        return [Encoded(pooled[i], frames[i, : n_frames[i]]) for i in range(len(items))]

    def fingerprint(self) -> dict:
        o = self.opts
        return {"family": "hf-speech-ssl", "model": self.model_id.rstrip("/").rsplit("/", 1)[-1],
                "weights": weights_hash(self.model_id), "layers": o.layers, "pooling": o.pooling,
                "padding": "exact-length groups" if self.group_norm else "zero pad + attention mask",
                "audio": o.audio.to_dict(), "dtype": str(self.dtype).replace("torch.", ""),
                "merc_format": FORMAT_VERSION}

    def info(self) -> dict:
        stride = int(np.prod(getattr(self.model.config, "conv_stride", (320,))))
        return {**super().info(), "frame_rate_hz": SAMPLES_PER_SECOND / stride, "model_id": self.model_id}


@ENCODER_FAMILIES.register("audio", "speech SSL (wav2vec2, HuBERT, WavLM, data2vec-audio): mean over the CNN's real frames")
def from_request(req, model_id: str) -> HFSpeechSSLEncoder:
    opts = AudioOptions(device=req.device, dtype=req.dtype, audio=req.audio)
    req.apply(opts, "batch_seconds", float)  # --batch-budget: seconds of padded audio
    return HFSpeechSSLEncoder(req.name, model_id, opts)
