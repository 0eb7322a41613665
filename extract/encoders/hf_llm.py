"""Decoder-only LLMs (Llama, Qwen2, Mistral, ...) as frozen utterance encoders, with dialogue context.

The prompt of utterance i can hold the previous k utterances of its dialogue (`--prompt-context K`),
each as "speaker: text" lines, through a template (`--prompt-template`, fields {context}, {speaker},
{text}). Context reaches the preparer through `Encoder.prepare_dialogue` (the runner asks the encoder
for each dialogue's utterances; this one returns them with their context attached).

Vectors come from the utterance's OWN tokens only (mean, or the last of them): the context is there to
condition those tokens through causal attention, not to be averaged in. Which tokens are the
utterance's is read from the tokenizer's character offsets of the {text} span.

Padding: each prompt is tokenised alone and the batch is padded by hand (right by default, left on
request) with explicit position ids (cumulative sum of the mask), so a token's vector does not depend
on the padding side or on what it was batched with.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from string import Formatter

from merc.data_manifests.errors import MercError
from merc.data_manifests.manifest import Dialogue, Utterance

from . import ENCODER_FAMILIES
from ._device import OomGuard, check_device, resolve_dtype, to_device
from ._layers import (
    check_layer_spec,
    count_hidden_states,
    layer_multiplier,
    needs_hidden_states,
    select_layers,
)
from .base import FORMAT_VERSION, ContextUtterance, Encoded, Encoder, EncoderError, Prepared, Preparer
from .hf_text import load_pretrained, weights_hash

POOLINGS = ("mean", "last")
DEFAULT_TEMPLATE = "{context}{speaker}: {text}"
TEMPLATE_FIELDS = {"context", "speaker", "text"}


@dataclass
class LLMOptions:
    pooling: str = "mean"  # mean over the utterance's own tokens | last (its last own token)
    layers: str = "last"
    prompt_context: int = 0  # previous utterances of the dialogue in the prompt
    prompt_template: str = DEFAULT_TEMPLATE
    max_length: int = 1024  # tokens; longer prompts lose their oldest (leftmost) tokens
    batch_tokens: int = 0  # padded tokens per batch; 0 = 2048 on CPU, 16384 on CUDA
    padding_side: str = "right"  # right | left: must not change vectors (tested)
    adapter: str | None = None  # PEFT/LoRA adapter folder, merged into the weights
    device: str = "cpu"
    dtype: str = "auto"  # auto: bf16 on CUDA where supported, else fp16; fp32 on CPU


def check_template(template: str) -> None:
    fields = [f for _, f, _, _ in Formatter().parse(template) if f is not None]
    unknown = set(fields) - TEMPLATE_FIELDS
    if unknown or fields.count("text") != 1:
        raise EncoderError(f"prompt template {template!r} must hold {{text}} exactly once and only the fields "
                           f"{{context}}, {{speaker}}, {{text}}" + (f" (found {sorted(unknown)})" if unknown else ""),
                           fix='e.g. --prompt-template "{context}{speaker}: {text}"')


def render_prompt(template: str, utt: Utterance, context: tuple[tuple[str, str], ...]) -> tuple[str, int, int]:
    """The prompt and the character span [a, b) of the utterance's own text inside it."""
    marker = "\x00TEXT\x00"
    ctx = "".join(f"{speaker}: {text}\n" for speaker, text in context)
    rendered = template.format(context=ctx, speaker=utt.speaker, text=marker)
    a = rendered.index(marker)
    text = utt.text.strip()
    return rendered.replace(marker, text), a, a + len(text)


class LLMPreparer(Preparer):
    def __init__(self, template: str):
        self.template = template

    def __call__(self, utt: Utterance) -> Prepared:
        if not (utt.text or "").strip():
            raise MercError("empty transcript", file=utt.source_file, row=utt.source_row, utterance_id=utt.id,
                            fix="fill in the utterance text, or extract audio features only")
        context = utt.context if isinstance(utt, ContextUtterance) else ()
        prompt, a, b = render_prompt(self.template, utt, context)
        return Prepared(utt.id, (prompt, a, b), len(prompt))


def own_token_positions(offsets: list[tuple[int, int]], a: int, b: int) -> list[int]:
    """Tokens whose characters overlap the utterance span [a, b); special tokens have empty offsets."""
    return [j for j, (s, e) in enumerate(offsets) if e > s and s < b and e > a]


def dir_hash(folder: str | None) -> str | None:
    if not folder:
        return None
    h = hashlib.sha256()
    for f in sorted(Path(folder).glob("*")):
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes()[: 1 << 20])
    return h.hexdigest()[:16]


class HFLLMEncoder(Encoder):
    modality = "text"

    def __init__(self, name: str, model_id: str, options: LLMOptions | None = None):
        super().__init__(name)
        self.model_id = str(model_id)
        self.opts = o = options or LLMOptions()
        if o.pooling not in POOLINGS:
            raise EncoderError(f"unknown pooling {o.pooling!r} for an LLM encoder", fix=f"use one of {', '.join(POOLINGS)}")
        if o.padding_side not in ("left", "right"):
            raise EncoderError(f"unknown padding side {o.padding_side!r}", fix="use left or right")
        if o.prompt_context < 0:
            raise EncoderError("--prompt-context must be 0 or more", fix="e.g. --prompt-context 3")
        check_template(o.prompt_template)
        check_device(o.device)
        self.dtype = resolve_dtype(o.dtype, o.device, prefer_bf16=True)
        self.tokenizer = load_pretrained(self.model_id, "AutoTokenizer")
        if not getattr(self.tokenizer, "is_fast", False):
            raise EncoderError(f"the tokenizer of {self.model_id} is not a fast tokenizer; own-token pooling needs "
                               "character offsets", file=self.model_id,
                               fix="install `tokenizers` and use a checkpoint with tokenizer.json")
        self.model = self._load_model()
        self.model.eval().to(o.device)
        self.pad_id = next((i for i in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id) if i is not None), 0)
        self.n_hidden_states = count_hidden_states(self.model.config)
        check_layer_spec(o.layers, self.n_hidden_states)
        self.guard = OomGuard(o.device)
        # explicit position ids keep left padding exact; models with position-free attention (ALiBi: BLOOM,
        # MPT) take none and derive positions from the mask themselves
        self.takes_position_ids = "position_ids" in inspect.signature(self.model.forward).parameters

    def _load_model(self):
        """The decoder stack without the LM head (AutoModel), with a PEFT adapter merged in when asked."""
        if not self.opts.adapter:
            return load_pretrained(self.model_id, "AutoModel", dtype=self.dtype)
        try:
            from peft import PeftModel
        except ImportError:
            raise EncoderError("--adapter needs the peft library, which is not installed",
                               fix="pip install peft (or pip install merc[lora])") from None
        if not Path(self.opts.adapter).is_dir():
            raise EncoderError("adapter folder not found", file=self.opts.adapter,
                               fix="pass the folder that holds adapter_config.json")
        lm = load_pretrained(self.model_id, "AutoModelForCausalLM", dtype=self.dtype)
        merged = PeftModel.from_pretrained(lm, self.opts.adapter).merge_and_unload()
        return merged.get_decoder() if hasattr(merged, "get_decoder") else merged.base_model

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size) * layer_multiplier(self.opts.layers, self.n_hidden_states)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The prompt shows speaker names when the template or the context lines hold them."""
        template = self.opts.prompt_template
        speakers = "{speaker}" in template or (self.opts.prompt_context > 0 and "{context}" in template)
        return ("text", "speaker") if speakers else ("text",)

    def prepare_dialogue(self, dialogue: Dialogue) -> list[Utterance]:
        k = self.opts.prompt_context
        if k == 0:
            return dialogue.utterances
        out: list[Utterance] = []
        for i, u in enumerate(dialogue.utterances):
            prev = dialogue.utterances[max(0, i - k): i]
            context = tuple((p.speaker, (p.text or "").strip()) for p in prev)
            out.append(ContextUtterance(**{f: getattr(u, f) for f in u.__dataclass_fields__}, context=context))
        return out

    def preparer(self) -> Preparer:
        return LLMPreparer(self.opts.prompt_template)

    def batch_budget(self) -> int:
        tokens = self.opts.batch_tokens or (16384 if self.opts.device.startswith("cuda") else 2048)
        return self.guard.budget(tokens * 4)  # Prepared.length counts characters; ~4 per token

    def tokenize(self, item: Prepared) -> tuple[list[int], list[int]]:
        """Token ids of the prompt and the positions of the utterance's own tokens."""
        prompt, a, b = item.value
        enc = self.tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=True)
        ids = list(enc["input_ids"])
        own = own_token_positions([tuple(o) for o in enc["offset_mapping"]], a, b)
        cut = max(0, len(ids) - self.opts.max_length)
        if cut:
            ids = ids[cut:]
            own = [j - cut for j in own if j >= cut]
        return ids, own or [len(ids) - 1]

    def encode_batch(self, items: list[Prepared]) -> list[Encoded]:
        return self.guard.run(self._forward, items)

    def _forward(self, items: list[Prepared]) -> list[Encoded]:
        import torch

        toks = [self.tokenize(it) for it in items]
        width = max(len(ids) for ids, _ in toks)
        ids_bt = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask_bt = torch.zeros((len(items), width), dtype=torch.long)
        own_bt = torch.zeros((len(items), width), dtype=torch.bool)
        for i, (ids, own) in enumerate(toks):
            shift = width - len(ids) if self.opts.padding_side == "left" else 0
            ids_bt[i, shift: shift + len(ids)] = torch.tensor(ids)
            mask_bt[i, shift: shift + len(ids)] = 1
            own_bt[i, [shift + j for j in own]] = True
        inputs = {"input_ids": ids_bt, "attention_mask": mask_bt}
        if self.takes_position_ids:
            inputs["position_ids"] = (mask_bt.cumsum(-1) - 1).clamp(min=0)
        inputs = to_device(inputs, self.opts.device)
        with torch.inference_mode():
            out = self.model(**inputs, output_hidden_states=needs_hidden_states(self.opts.layers), use_cache=False)
            tokens_btd = out.last_hidden_state if self.opts.layers == "last" else select_layers(
                out.hidden_states, self.opts.layers)
            tokens_btd = tokens_btd.float().cpu()
        results = []
        for i in range(len(items)):
            own_td = tokens_btd[i][own_bt[i]]
            pooled = own_td.mean(0) if self.opts.pooling == "mean" else own_td[-1]
            results.append(Encoded(pooled.numpy(), own_td.numpy() if self.keep_frames else None))
        return results

    def fingerprint(self) -> dict:
        o = self.opts
        return {"family": "hf-llm", "model": self.model_id.rstrip("/").rsplit("/", 1)[-1],
                "weights": weights_hash(self.model_id), "adapter": dir_hash(o.adapter), "pooling": o.pooling,
                "layers": o.layers, "prompt_context": o.prompt_context, "prompt_template": o.prompt_template,
                "pooled_tokens": "own", "max_length": o.max_length, "dtype": str(self.dtype).replace("torch.", ""),
                "merc_format": FORMAT_VERSION}


@ENCODER_FAMILIES.register("llm", "decoder-only LLMs: dialogue-context prompts, own-token pooling")
def from_request(req, model_id: str) -> HFLLMEncoder:
    opts = LLMOptions(device=req.device, dtype=req.dtype, prompt_context=req.prompt_context, adapter=req.adapter)
    if req.prompt_template:
        opts.prompt_template = req.prompt_template
    req.apply(opts, "batch_tokens")
    return HFLLMEncoder(req.name, model_id, opts)
