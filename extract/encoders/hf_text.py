"""Frozen Hugging Face text encoders (MiniLM, RoBERTa, BERT, any AutoModel) with layer and pooling choice.

Batches arrive length-sorted from the runner, so padding is small; pooling uses the attention mask,
so an utterance's vector does not depend on what it was batched with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import ENCODER_FAMILIES
from ._device import OomGuard, check_device, resolve_dtype, to_device
from ._layers import (
    check_layer_spec,
    count_hidden_states,
    layer_multiplier,
    needs_hidden_states,
    select_layers,
)
from .base import FORMAT_VERSION, Encoded, Encoder, EncoderError, Prepared, Preparer, TextPreparer

POOLINGS = ("mean", "cls")


@dataclass
class TextOptions:
    pooling: str = "mean"  # mean over real tokens | cls (first token)
    layers: str = "last"  # last | all | <int> (hidden_states index, negative from the end) | last<k>-mean
    normalize: bool = False  # L2-normalise the pooled vector (sentence-transformers models do)
    max_length: int = 128
    batch_tokens: int = 0  # padded tokens per batch; 0 = 512 on CPU (larger ran slower there), 16384 on CUDA
    device: str = "cpu"
    dtype: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16


def weights_hash(model_dir: str | Path) -> str:
    """Hash of the weight files' names and sizes plus the first MiB of each: cheap and changes with the weights."""
    h = hashlib.sha256()
    path = Path(model_dir)
    if not path.is_dir():
        return f"hub:{model_dir}"
    for f in sorted(path.glob("*")):
        if f.suffix in {".safetensors", ".bin", ".pt", ".json", ".model", ".txt"} and f.is_file():
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def torch_dtype(name: str, device: str):
    return resolve_dtype(name, device)


def load_pretrained(model_id: str, loader: str = "AutoModel", **kwargs):
    """`from_pretrained` with a message that says how to get the weights when they are not on disk."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    try:
        return getattr(transformers, loader).from_pretrained(model_id, **kwargs)
    except (OSError, ValueError) as exc:
        raise EncoderError(
            f"cannot load {model_id!r} with {loader}.from_pretrained ({str(exc).splitlines()[0]})",
            file=str(model_id),
            fix=("download it once on a machine with network access: `hf download "
                 f"{model_id} --local-dir models/{Path(str(model_id)).name}` (the CLI of huggingface_hub) and "
                 "pass that folder, or unset HF_HUB_OFFLINE where the hub is reachable"),
        ) from None


class HFTextEncoder(Encoder):
    modality = "text"

    def __init__(self, name: str, model_id: str, options: TextOptions | None = None):
        super().__init__(name)
        self.model_id = str(model_id)
        self.opts = options or TextOptions()
        if self.opts.pooling not in POOLINGS:
            raise EncoderError(f"unknown pooling {self.opts.pooling!r} for a text encoder",
                               fix=f"use one of {', '.join(POOLINGS)}")

        check_device(self.opts.device)
        self.tokenizer = load_pretrained(self.model_id, "AutoTokenizer")
        self.model = load_pretrained(self.model_id, "AutoModel",
                                     dtype=torch_dtype(self.opts.dtype, self.opts.device))
        self.model.eval().to(self.opts.device)
        self.n_hidden_states = count_hidden_states(self.model.config)
        check_layer_spec(self.opts.layers, self.n_hidden_states)
        self.guard = OomGuard(self.opts.device)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size) * layer_multiplier(self.opts.layers, self.n_hidden_states)

    def preparer(self) -> Preparer:
        return TextPreparer()

    def batch_budget(self) -> int:
        tokens = self.opts.batch_tokens or (16384 if self.opts.device.startswith("cuda") else 512)
        return self.guard.budget(tokens * 4)  # Prepared.length counts characters; ~4 per token

    def encode_batch(self, items: list[Prepared]) -> list[Encoded]:
        return self.guard.run(self._encode, items)

    def _encode(self, items: list[Prepared]) -> list[Encoded]:
        import torch

        texts = [it.value for it in items]
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.opts.max_length,
                             return_tensors="pt")
        enc = to_device(dict(enc), self.opts.device)
        with torch.inference_mode():
            out = self.model(**enc, output_hidden_states=needs_hidden_states(self.opts.layers))
            tokens_bld = out.last_hidden_state if self.opts.layers == "last" else select_layers(
                out.hidden_states, self.opts.layers)
            tokens_bld = tokens_bld.float()
            mask_bl = enc["attention_mask"].bool()
            if self.opts.pooling == "cls":
                pooled_bd = tokens_bld[:, 0]
            else:
                mask_bl1 = mask_bl.unsqueeze(-1).float()
                pooled_bd = (tokens_bld * mask_bl1).sum(1) / mask_bl1.sum(1).clamp(min=1.0)
            if self.opts.normalize:
                pooled_bd = torch.nn.functional.normalize(pooled_bd, dim=-1)
            pooled = pooled_bd.cpu().numpy().astype(np.float32)
            if not self.keep_frames:
                return [Encoded(v) for v in pooled]
            tokens = tokens_bld.cpu().numpy().astype(np.float32)
            mask = mask_bl.cpu().numpy()
        return [Encoded(pooled[i], tokens[i][mask[i]]) for i in range(len(items))]  # frames: real tokens only

    def fingerprint(self) -> dict:
        o = self.opts
        return {"family": "hf-text", "model": Path(self.model_id).name, "weights": weights_hash(self.model_id),
                "pooling": o.pooling, "layers": o.layers, "normalize": o.normalize, "max_length": o.max_length,
                "dtype": str(torch_dtype(o.dtype, o.device)).replace("torch.", ""), "merc_format": FORMAT_VERSION}


@ENCODER_FAMILIES.register("text", "text encoders (BERT/RoBERTa/MPNet/MiniLM...): CLS or mean pooling, any layer")
def from_request(req, model_id: str, **defaults) -> HFTextEncoder:
    """The text family's builder; `defaults` are the short name's options (minilm: mean pooling, L2 norm)."""
    opts = TextOptions(device=req.device, dtype=req.dtype, **defaults)
    req.apply(opts, "batch_tokens")
    return HFTextEncoder(req.name, model_id, opts)
