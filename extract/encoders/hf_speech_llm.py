"""Speech LLMs (Qwen2-Audio and kin): the clip plus an instruction prompt, read out at the answer side.

The model sees "<audio> What is the emotion of the speaker?" in its chat format, ending where the
assistant's answer would start. Vectors are taken from the last hidden layer (or `--layers`) at:
- `last` (default): the final prompt token - the state from which the model would start answering,
  which has attended to the audio and the whole instruction;
- `mean`: the mean over every token after the audio (the instruction and the assistant header).
Audio-token states themselves are not pooled: they are the audio tower's output, not the LLM's reading.

The processor (Whisper log-mel + tokenizer that expands the audio placeholder into one token per
audio frame) runs in the main process on each batch; the audio tower always gets full 30 s inputs
with their own mask, and text is right-padded, so batching does not change a clip's vector (tested).
Clips longer than 30 s are cut to 30 s (the audio tower's window) and the cut is reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from merc.data_manifests.manifest import Utterance
from merc.extract.media import AudioPolicy, load_audio

from ._device import OomGuard, check_device, resolve_dtype, to_device
from ._layers import (
    check_layer_spec,
    count_hidden_states,
    layer_multiplier,
    needs_hidden_states,
    select_layers,
)
from .base import FORMAT_VERSION, Encoded, Encoder, EncoderError, Prepared, Preparer
from .hf_audio import audio_notes
from .hf_text import load_pretrained, weights_hash

POOLINGS = ("last", "mean")
DEFAULT_INSTRUCTION = "What is the emotion of the speaker?"
MAX_SECONDS = 30.0


@dataclass
class SpeechLLMOptions:
    pooling: str = "last"
    layers: str = "last"
    instruction: str = DEFAULT_INSTRUCTION
    batch_clips: int = 0  # clips of 30 s per batch; 0 = 1 on CPU (its 30 s attention does not gain), 32 on CUDA
    device: str = "cpu"
    dtype: str = "auto"
    audio: AudioPolicy = field(default_factory=AudioPolicy)


class SpeechLLMPreparer(Preparer):
    def __init__(self, policy: AudioPolicy):
        self.policy = policy

    def __call__(self, utt: Utterance) -> Prepared:
        audio = load_audio(utt.media, self.policy, utt.start, utt.end)
        notes = audio_notes(audio, self.policy)
        limit = int(MAX_SECONDS * self.policy.sample_rate)
        if len(audio.samples) > limit:
            notes.append(f"speech LLM: cut {len(audio.samples) / self.policy.sample_rate:.1f} s to "
                         f"{MAX_SECONDS:g} s (the audio tower's window)")
        samples = audio.samples[:limit]
        # cost: a full 30 s window in the audio tower, plus LLM tokens in proportion to the duration
        return Prepared(utt.id, samples, limit + len(samples), notes)


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
        return SpeechLLMPreparer(self.opts.audio)

    def batch_budget(self) -> int:
        clips = self.opts.batch_clips or (32 if self.opts.device.startswith("cuda") else 1)
        return self.guard.budget(clips * 2 * int(MAX_SECONDS * self.opts.audio.sample_rate))

    def encode_batch(self, items: list[Prepared]) -> list[Encoded]:
        return self.guard.run(self._forward, items)

    def _forward(self, items: list[Prepared]) -> list[Encoded]:
        import torch

        inputs = self.processor(text=[self.prompt] * len(items), audio=[it.value for it in items],
                                sampling_rate=self.opts.audio.sample_rate, return_tensors="pt", padding=True)
        inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "input_features",
                                                           "feature_attention_mask")}
        ids_bt = inputs["input_ids"]
        mask_bt = inputs["attention_mask"].bool()
        positions_t = torch.arange(ids_bt.shape[1])
        after_audio_b = torch.stack([
            (positions_t[ids_bt[i] == self.audio_eos_id].max() if (ids_bt[i] == self.audio_eos_id).any()
             else torch.tensor(-1)) for i in range(len(items))])
        answer_bt = mask_bt & (positions_t[None, :] > after_audio_b[:, None])
        last_b = (mask_bt.long() * positions_t[None, :]).max(1).values
        inputs = to_device(inputs, self.opts.device, self.dtype)
        with torch.inference_mode():
            out = self.model(**inputs, output_hidden_states=needs_hidden_states(self.opts.layers), use_cache=False)
            tokens_btd = out.last_hidden_state if self.opts.layers == "last" else select_layers(
                out.hidden_states, self.opts.layers)
            tokens_btd = tokens_btd.float().cpu()
        results = []
        for i in range(len(items)):
            answer_td = tokens_btd[i][answer_bt[i]]
            pooled = tokens_btd[i, last_b[i]] if self.opts.pooling == "last" else answer_td.mean(0)
            results.append(Encoded(pooled.numpy(), answer_td.numpy() if self.keep_frames else None))
        return results

    def fingerprint(self) -> dict:
        o = self.opts
        return {"family": "hf-speech-llm", "model": self.model_id.rstrip("/").rsplit("/", 1)[-1],
                "weights": weights_hash(self.model_id), "pooling": o.pooling, "layers": o.layers,
                "prompt": self.prompt, "audio": o.audio.to_dict(), "dtype": str(self.dtype).replace("torch.", ""),
                "merc_format": FORMAT_VERSION}


def from_request(req, model_id: str) -> HFSpeechLLMEncoder:
    opts = SpeechLLMOptions(device=req.device, dtype=req.dtype, audio=req.audio)
    if req.instruction:
        opts.instruction = req.instruction
    if req.pooling:
        opts.pooling = req.pooling
    if req.layers:
        opts.layers = req.layers
    if req.batch_budget:
        opts.batch_clips = req.batch_budget  # --batch-budget: 30 s clips per batch
    return HFSpeechLLMEncoder(req.name, model_id, opts)
