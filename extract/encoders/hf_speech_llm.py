"""Speech LLMs (Qwen2-Audio and kin): the clip plus an instruction prompt, read out at the answer side.

The model sees "<audio> What is the emotion of the speaker?" in its chat format, ending where the
assistant's answer would start. Vectors are taken from the last hidden layer (or `--layers`) at:
- `last` (default): the final prompt token - the state from which the model would start answering,
  which has attended to the audio and the whole instruction;
- `mean`: the mean over every token after the audio (the instruction and the assistant header).
Audio-token states themselves are not pooled: they are the audio tower's output, not the LLM's reading.

Workers compute the clip's Whisper log-mel over its real frames only (`hf_whisper.log_mel_real_frames`,
bitwise the feature extractor's padded 30 s window), so the main process only restores the window and
tokenises the prompt with the audio placeholder expanded to one token per audio frame, as the
processor does; at start-up the encoder checks that this gives the processor's own inputs for a probe
clip, and hands every batch to the processor when it does not.

Qwen2-Audio's tower masks the padding, so it runs over the batch's clips cut a little past the longest
one instead of the whole 30 s window (`audio_tower`): the same vectors to float rounding, checked
against the full window on probe clips at start-up (else the full window is used), and a 2 s clip no
longer pays for 30 s. Text is right-padded, so batching does not change a clip's vector (tested).
Clips longer than 30 s are cut to 30 s (the audio tower's window) and the cut is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from merc.data_manifests.manifest import Utterance
from merc.extract.media import AudioPolicy, load_audio

from . import ENCODER_FAMILIES, audio_tower
from ._device import OomGuard, check_device, resolve_dtype, to_device
from ._layers import (
    check_layer_spec,
    count_hidden_states,
    layer_multiplier,
    needs_hidden_states,
    select_layers,
)
from .audio_tower import audio_token_count, mel_lengths_of, supports_short_window, window_frames
from .base import FORMAT_VERSION, Encoded, Encoder, EncoderError, Prepared, Preparer
from .hf_audio import audio_notes
from .hf_text import load_pretrained, weights_hash
from .hf_whisper import can_trim_stft, log_mel_real_frames, untrim_mel, window_mel_frames

POOLINGS = ("last", "mean")
DEFAULT_INSTRUCTION = "What is the emotion of the speaker?"
MAX_SECONDS = 30.0
MODEL_INPUTS = ("input_ids", "attention_mask", "input_features", "feature_attention_mask")


@dataclass
class SpeechLLMOptions:
    pooling: str = "last"
    layers: str = "last"
    instruction: str = DEFAULT_INSTRUCTION
    batch_clips: int = 0  # 30 s of audio (x2: tower and LLM tokens) per batch; 0 = 1 on CPU, 32 on CUDA
    device: str = "cpu"
    dtype: str = "auto"
    audio: AudioPolicy = field(default_factory=AudioPolicy)


class SpeechLLMPreparer(Preparer):
    """Worker side: decode, cut to 30 s, and (with `feature_extractor`) the log-mel of the real frames."""

    def __init__(self, policy: AudioPolicy, feature_extractor=None, short_window: bool = False):
        self.policy = policy
        self.feature_extractor = feature_extractor
        self.short_window = short_window

    def __call__(self, utt: Utterance) -> Prepared:
        audio = load_audio(utt.media, self.policy, utt.start, utt.end)
        notes = audio_notes(audio, self.policy)
        limit = int(MAX_SECONDS * self.policy.sample_rate)
        if len(audio.samples) > limit:
            notes.append(f"speech LLM: cut {len(audio.samples) / self.policy.sample_rate:.1f} s to "
                         f"{MAX_SECONDS:g} s (the audio tower's window)")
        samples = audio.samples[:limit]
        value = samples if self.feature_extractor is None else LogMel.of(samples, self.feature_extractor)
        # cost: the audio tower's window (the clip with the short window, else a full 30 s) plus LLM tokens in
        # proportion to the duration; the short window counts 1 s for the prompt's own tokens
        tower = len(samples) + self.policy.sample_rate if self.short_window else limit
        return Prepared(utt.id, value, tower + len(samples), notes)


@dataclass
class LogMel:
    """A clip's log-mel as workers ship it: the frames computed from real audio and the padding's fill value."""

    trimmed_fm: np.ndarray
    fill: float
    n_samples: int

    @classmethod
    def of(cls, samples: np.ndarray, feature_extractor) -> LogMel:
        return cls(*log_mel_real_frames(samples, feature_extractor), len(samples))


def _probe_clip(seconds: float, rate: int, period: float) -> np.ndarray:
    """A quiet sine for the start-up checks: deterministic, and not silence (whose log-mel is flat)."""
    return (0.1 * np.sin(np.arange(int(seconds * rate)) / period)).astype(np.float32)


class HFSpeechLLMEncoder(Encoder):
    modality = "audio"

    def __init__(self, name: str, model_id: str, options: SpeechLLMOptions | None = None):
        super().__init__(name)
        self.model_id = str(model_id)
        self.opts = o = options or SpeechLLMOptions()
        if o.pooling not in POOLINGS:
            raise EncoderError(f"unknown pooling {o.pooling!r} for a speech LLM",
                               fix=f"use one of {', '.join(POOLINGS)}")
        check_device(o.device)
        self.dtype = resolve_dtype(o.dtype, o.device, prefer_bf16=True)
        self.processor = load_pretrained(self.model_id, "AutoProcessor")
        self.processor.tokenizer.padding_side = "right"
        self.model = load_pretrained(self.model_id, "AutoModel", dtype=self.dtype)  # no LM head
        self.model.eval().to(o.device)
        self.prompt = self._prompt(o.instruction)
        tok = self.processor.tokenizer
        self.audio_eos_id = tok.convert_tokens_to_ids(getattr(self.processor, "audio_eos_token", "<|audio_eos|>"))
        self.text_config = getattr(self.model.config, "text_config", self.model.config)
        self.n_hidden_states = count_hidden_states(self.text_config)
        check_layer_spec(o.layers, self.n_hidden_states)
        self.guard = OomGuard(o.device)
        self.fast_inputs = self._inputs_match_the_processor()
        self.short_window = self.fast_inputs and supports_short_window(self.model) and self._short_window_matches()

    def _inputs_match_the_processor(self) -> bool:
        """Whether `_inputs` from worker log-mels equals the processor's output on a probe clip (else: processor)."""
        import torch

        fe = getattr(self.processor, "feature_extractor", None)
        if fe is None or not can_trim_stft(fe) or not hasattr(self.processor, "audio_token"):
            return False
        probe = _probe_clip(1.37, self.opts.audio.sample_rate, 7.0)
        try:
            ours = self._inputs([LogMel.of(probe, fe)])
        except Exception:  # noqa: BLE001 - any surprise in the processor's conventions: use the processor
            return False
        theirs = self._processor_inputs([probe])
        return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)

    def _short_window_matches(self) -> bool:
        """Whether the audio tower over the clips' own frames gives the full window's states on probe clips."""
        fe = self.processor.feature_extractor
        rate = self.opts.audio.sample_rate
        mels = [LogMel.of(_probe_clip(sec, rate, 5.0 + sec), fe) for sec in (1.37, 0.41)]
        try:
            short = self._answer_states(mels, short=True)
        except Exception:  # noqa: BLE001 - a model this module does not know after all: the full window
            return False
        full = self._answer_states(mels, short=False)
        scale = max(1.0, max(float(np.abs(f).max()) for f in full))
        tol = 1e-4 if self.dtype is None or "float32" in str(self.dtype) else 3e-2
        return all(a.shape == b.shape and float(np.abs(a - b).max()) <= tol * scale
                   for a, b in zip(short, full, strict=True))

    def _answer_states(self, mels: list[LogMel], short: bool) -> list[np.ndarray]:
        tokens_btd, answer_bt, _ = self._states(self._inputs(mels, short), short)
        return [tokens_btd[i][answer_bt[i]].numpy() for i in range(len(mels))]

    def _processor_inputs(self, clips: list[np.ndarray]) -> dict:
        inputs = self.processor(text=[self.prompt] * len(clips), audio=clips,
                                sampling_rate=self.opts.audio.sample_rate, return_tensors="pt", padding=True)
        return {k: v for k, v in inputs.items() if k in MODEL_INPUTS}

    def _inputs(self, mels: list[LogMel], short: bool = False) -> dict:
        """The processor's model inputs, from log-mels computed by the workers: the 30 s windows restored,
        their frame masks, and the prompt with one audio token per audio-tower output frame. With `short`,
        the windows are cut past the batch's longest clip (`audio_tower.window_frames`)."""
        import torch

        fe, tok = self.processor.feature_extractor, self.processor.tokenizer
        n_frames = window_mel_frames(fe)
        mel_lengths = mel_lengths_of([m.n_samples for m in mels], int(fe.hop_length)).tolist()
        if short:
            n_frames = window_frames(mel_lengths, [m.trimmed_fm.shape[1] for m in mels], n_frames)
        audio_token = self.processor.audio_token
        texts = [self.prompt.replace(audio_token, audio_token * audio_token_count(n)) for n in mel_lengths]
        text = tok(texts, return_tensors="pt", padding=True)
        features = np.stack([untrim_mel(m.trimmed_fm, m.fill, n_frames) for m in mels])
        frame_mask = (np.arange(n_frames)[None, :] < np.asarray(mel_lengths)[:, None]).astype(np.int32)
        return {"input_ids": text["input_ids"], "attention_mask": text["attention_mask"],
                "input_features": torch.from_numpy(features), "feature_attention_mask": torch.from_numpy(frame_mask)}

    def _prompt(self, instruction: str) -> str:
        """The processor's chat template with one audio and the instruction, up to the assistant's turn."""
        messages = [{"role": "user", "content": [{"type": "audio", "audio_url": "clip"},
                                                 {"type": "text", "text": instruction}]}]
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return f"<|audio_bos|>{self.processor.audio_token}<|audio_eos|>{instruction}"

    @property
    def dim(self) -> int:
        return int(self.text_config.hidden_size) * layer_multiplier(self.opts.layers, self.n_hidden_states)

    def preparer(self) -> Preparer:
        return SpeechLLMPreparer(self.opts.audio, self.processor.feature_extractor if self.fast_inputs else None,
                                 self.short_window)

    def batch_budget(self) -> int:
        clips = self.opts.batch_clips or (32 if self.opts.device.startswith("cuda") else 1)
        return self.guard.budget(clips * 2 * int(MAX_SECONDS * self.opts.audio.sample_rate))

    def encode_batch(self, items: list[Prepared]) -> list[Encoded]:
        return self.guard.run(self._forward, items)

    def _forward(self, items: list[Prepared]) -> list[Encoded]:
        values = [it.value for it in items]
        from_workers = all(isinstance(v, LogMel) for v in values)  # else raw samples, for the processor
        short = from_workers and self.short_window
        inputs = self._inputs(values, short) if from_workers else self._processor_inputs(values)
        tokens_btd, answer_bt, last_b = self._states(inputs, short)
        results = []
        for i in range(len(items)):
            answer_td = tokens_btd[i][answer_bt[i]]
            pooled = tokens_btd[i, last_b[i]] if self.opts.pooling == "last" else answer_td.mean(0)
            results.append(Encoded(pooled.numpy(), answer_td.numpy() if self.keep_frames else None))
        return results

    def _states(self, inputs: dict, short: bool):
        """Hidden states [B, T, D] of the chosen layer(s), the answer-side token mask [B, T], the last token [B].

        With `short`, the audio tower runs over the cut windows (`audio_tower.inputs_embeds`) and the
        language model gets the merged embeddings; otherwise the model's own forward does both."""
        import torch

        ids_bt = inputs["input_ids"]
        mask_bt = inputs["attention_mask"].bool()
        positions_t = torch.arange(ids_bt.shape[1])
        after_audio_b = torch.stack([
            (positions_t[ids_bt[i] == self.audio_eos_id].max() if (ids_bt[i] == self.audio_eos_id).any()
             else torch.tensor(-1)) for i in range(len(ids_bt))])
        answer_bt = mask_bt & (positions_t[None, :] > after_audio_b[:, None])
        last_b = (mask_bt.long() * positions_t[None, :]).max(1).values
        inputs = to_device(inputs, self.opts.device, self.dtype)
        hidden = needs_hidden_states(self.opts.layers)
        with torch.inference_mode():
            if short:
                embeds = audio_tower.inputs_embeds(self.model, inputs["input_ids"], inputs["input_features"],
                                                   inputs["feature_attention_mask"].sum(-1))
                out = self.model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"],
                                 output_hidden_states=hidden, use_cache=False)
            else:
                out = self.model(**inputs, output_hidden_states=hidden, use_cache=False)
            tokens_btd = out.last_hidden_state if self.opts.layers == "last" else select_layers(
                out.hidden_states, self.opts.layers)
            tokens_btd = tokens_btd.float().cpu()
        return tokens_btd, answer_bt, last_b

    def fingerprint(self) -> dict:
        o = self.opts
        return {"family": "hf-speech-llm", "model": self.model_id.rstrip("/").rsplit("/", 1)[-1],
                "weights": weights_hash(self.model_id), "pooling": o.pooling, "layers": o.layers,
                "prompt": self.prompt, "audio": o.audio.to_dict(), "dtype": str(self.dtype).replace("torch.", ""),
                "merc_format": FORMAT_VERSION}


@ENCODER_FAMILIES.register("sllm", "speech LLMs (Qwen2-Audio): clip + instruction")
def from_request(req, model_id: str) -> HFSpeechLLMEncoder:
    opts = SpeechLLMOptions(device=req.device, dtype=req.dtype, audio=req.audio)
    if req.instruction:
        opts.instruction = req.instruction
    req.apply(opts, "batch_clips")  # --batch-budget: 30 s clips per batch
    return HFSpeechLLMEncoder(req.name, model_id, opts)
