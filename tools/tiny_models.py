"""Tiny real models of every encoder family, built from configs and saved like hub checkpoints.

Tests and benchmarks need each family's real loading and forward code without network or big
weights: these builders make a model a few hundred KB large from its config (hidden 16-32, 2 layers),
a tokenizer trained offline with `tokenizers`, the family's feature extractor / image processor,
and `save_pretrained` them all into one folder that `from_pretrained(folder)` loads back.
`write_video` makes the small mp4 clips the vision family needs.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

CORPUS = [
    "the weather is fine", "this is wonderful news", "stop that right now", "i miss them so much",
    "number one two three four five six seven eight nine zero", "A: B: speaker says hello",
    "what is the emotion of the speaker?", "I cannot believe you ate the whole thing without asking anyone.",
    "fine. okay. yes, no, maybe; sure! really?", "Audio 1: system user assistant You are a helpful assistant.",
]
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]


def train_tokenizer(specials: list[str], template: str | None = None, vocab_size: int = 400, **named):
    """A byte-level BPE tokenizer trained on CORPUS, wrapped in PreTrainedTokenizerFast.

    template: a TemplateProcessing single-sequence template such as "<s> $A </s>" (None: no specials added).
    named: bos_token=..., eos_token=..., pad_token=... for the wrapper.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    if template:
        used = [s for s in specials if s in template]
        tok.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(s, tok.token_to_id(s)) for s in used])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **named)


def _save(folder: Path, *parts) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for part in parts:
        part.save_pretrained(folder)
    return folder


def _seeded() -> None:
    import torch

    torch.manual_seed(0)


def roberta(folder: Path) -> Path:
    from transformers import RobertaConfig, RobertaModel

    tok = train_tokenizer(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<s> $A </s>", bos_token="<s>",
                          eos_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    _seeded()  # 3 layers: 4 hidden states, so last4-mean is valid
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=130, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return _save(folder, RobertaModel(cfg), tok)


def _ssl_conv() -> dict:
    # the real 7-layer front end (kernels 10,3,3,3,3,2,2; strides 5,2,...: 320 samples per frame) with 16 channels
    return {"conv_dim": (16,) * 7, "conv_stride": (5, 2, 2, 2, 2, 2, 2), "conv_kernel": (10, 3, 3, 3, 3, 2, 2),
            "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
            "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}


def data2vec_audio(folder: Path) -> Path:
    from transformers import Data2VecAudioConfig, Data2VecAudioModel, Wav2Vec2FeatureExtractor

    _seeded()
    cfg = Data2VecAudioConfig(**{**_ssl_conv(), "num_conv_pos_embeddings": 5}, conv_pos_kernel_size=5)
    fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    return _save(folder, Data2VecAudioModel(cfg), fe)


def wav2vec2_group(folder: Path) -> Path:
    """wav2vec2-base style: group norm in the first conv layer, so padding is not allowed (no attention mask)."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    _seeded()
    cfg = Wav2Vec2Config(**_ssl_conv(), feat_extract_norm="group", do_stable_layer_norm=False)
    fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False)
    return _save(folder, Wav2Vec2Model(cfg), fe)


def wavlm_layer(folder: Path) -> Path:
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    _seeded()
    cfg = WavLMConfig(**_ssl_conv(), feat_extract_norm="layer", do_stable_layer_norm=True, num_buckets=32,
                      max_bucket_distance=100)
    fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    return _save(folder, WavLMModel(cfg), fe)


def hubert_layer(folder: Path) -> Path:
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    _seeded()
    cfg = HubertConfig(**_ssl_conv(), feat_extract_norm="layer", do_stable_layer_norm=True)
    fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    return _save(folder, HubertModel(cfg), fe)


def whisper(folder: Path) -> Path:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    _seeded()
    cfg = WhisperConfig(vocab_size=64, d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=80,
                        max_source_positions=1500, max_target_positions=32, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2, decoder_start_token_id=3, suppress_tokens=[], begin_suppress_tokens=[])
    return _save(folder, WhisperModel(cfg), WhisperFeatureExtractor(feature_size=80))


def llama(folder: Path) -> Path:
    """A decoder-only LM whose tokenizer adds BOS and has no pad token (like Llama's)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = train_tokenizer(["<s>", "</s>"], "<s> $A", bos_token="<s>", eos_token="</s>")
    _seeded()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    return _save(folder, LlamaForCausalLM(cfg), tok)


def qwen2(folder: Path) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = train_tokenizer(QWEN_SPECIALS, None, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    _seeded()
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=512,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    return _save(folder, Qwen2ForCausalLM(cfg), tok)


def qwen2_audio(folder: Path) -> Path:
    """A Qwen2-Audio-style speech LLM: tiny Whisper-like audio tower + tiny Qwen2, with its real processor."""
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        Qwen2Config,
        WhisperFeatureExtractor,
    )

    tok = train_tokenizer(QWEN_SPECIALS, None, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    _seeded()
    audio_cfg = Qwen2AudioEncoderConfig(d_model=16, encoder_layers=2, encoder_attention_heads=2,
                                        encoder_ffn_dim=32, num_mel_bins=80, max_source_positions=1500)
    text_cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=1, intermediate_size=64, max_position_embeddings=2048,
                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg = Qwen2AudioConfig(audio_config=audio_cfg.to_dict(), text_config=text_cfg.to_dict(),
                           audio_token_id=tok.convert_tokens_to_ids("<|AUDIO|>"))
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok)
    return _save(folder, Qwen2AudioForConditionalGeneration(cfg), processor)


def vit(folder: Path) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    _seeded()
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=32)
    proc = ViTImageProcessor(size={"height": 32, "width": 32})
    return _save(folder, ViTModel(cfg), proc)


def clip_vision(folder: Path) -> Path:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    _seeded()
    cfg = CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=32, projection_dim=12)
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return _save(folder, CLIPVisionModelWithProjection(cfg), proc)


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "roberta": roberta, "data2vec-audio": data2vec_audio, "wav2vec2-group": wav2vec2_group, "wavlm": wavlm_layer,
    "hubert": hubert_layer, "whisper": whisper, "llama": llama, "qwen2": qwen2, "qwen2-audio": qwen2_audio,
    "vit": vit, "clip-vision": clip_vision,
}


def build(kind: str, folder: Path) -> Path:
    """Build the tiny model `kind` (a BUILDERS key) into `folder` and return it."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return BUILDERS[kind](Path(folder))


def write_video(path: Path, seconds: float, fps: int = 10, size: int = 32, seed: int = 0,
                with_audio: bool = False, noise: int = 0) -> Path:
    """An mp4 (H.264, yuv420p) whose colour drifts over time, optionally with a mono AAC tone; `noise` adds
    per-pixel noise of that amplitude, which makes the clip as costly to decode as camera footage."""
    import av

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 200, size=3)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        audio = out.add_stream("aac", rate=16000, layout="mono") if with_audio else None
        for i in range(int(seconds * fps)):
            img = np.zeros((size, size, 3), np.uint8)
            img[...] = (base + 5 * i) % 255
            img[: size // 2, : size // 2] = 255 - img[: size // 2, : size // 2]
            if noise:
                img = np.clip(img.astype(np.int16) + rng.integers(-noise, noise + 1, img.shape), 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        if audio is not None:
            t = np.arange(int(seconds * 16000)) / 16000
            wave = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)[None, :]
            pts = 0
            for i in range(0, wave.shape[1], 1024):
                chunk = np.ascontiguousarray(wave[:, i: i + 1024])
                af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = 16000, pts, Fraction(1, 16000)
                pts += chunk.shape[1]
                for packet in audio.encode(af):
                    out.mux(packet)
            for packet in audio.encode(None):
                out.mux(packet)
    return path
