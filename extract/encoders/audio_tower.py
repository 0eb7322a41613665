"""Qwen2-Audio's audio tower over the frames that hold the clip, instead of the full 30 s window.

The tower (a Whisper encoder) only accepts 3,000 log-mel frames, so a 2 s clip pays for 1,500
positions of attention and MLP of which 100 hold audio. Unlike Whisper itself, Qwen2-Audio masks
the padding positions as attention keys, so a real position's output depends on the padding only
through the two convolutions' receptive field (two mel frames past the clip). Running the tower on
the window cut a little past the longest clip of the batch, with the model's own mask, therefore
gives the real positions' outputs of the full window (to float rounding), and the language model
reads only those. The encoder checks this against the full model on a probe clip at start-up
(`hf_speech_llm`), and uses the full window if the two disagree.

The steps mirror `Qwen2AudioModel.forward` and `Qwen2AudioEncoder.forward` in transformers; only
the window length differs.
"""

from __future__ import annotations

import numpy as np

CONV_REACH = 2  # mel frames past a real encoder position that its two convolutions read


def supports_short_window(model) -> bool:
    """A Qwen2-Audio-style model whose tower and merge this module knows."""
    tower = getattr(model, "audio_tower", None)
    return (tower is not None and type(tower).__name__ == "Qwen2AudioEncoder"
            and hasattr(tower, "_get_feat_extract_output_lengths") and hasattr(model, "multi_modal_projector")
            and getattr(model.config, "audio_token_id", None) is not None)


def window_frames(mel_lengths: list[int], trimmed_lengths: list[int], full_frames: int) -> int:
    """Mel frames to run: past every clip's convolution reach and its shipped frames, even, at most the window."""
    need = max(max(n + CONV_REACH for n in mel_lengths), max(trimmed_lengths))
    return min(full_frames, need + need % 2)


def tower_states(tower, features_bfm, attention_mask=None):
    """`Qwen2AudioEncoder.forward` on a window of any length M: [B, n_mels, M] -> [B, M // 4, d] pooled states."""
    from torch import nn

    x = features_bfm.to(dtype=tower.conv1.weight.dtype, device=tower.conv1.weight.device)
    x = nn.functional.gelu(tower.conv1(x))
    x_btd = nn.functional.gelu(tower.conv2(x)).permute(0, 2, 1)
    hidden_btd = x_btd + tower.embed_positions.weight[: x_btd.shape[1]]
    for layer in tower.layers:
        hidden_btd = layer(hidden_btd, attention_mask)
    hidden_btd = tower.avg_pooler(hidden_btd.permute(0, 2, 1)).permute(0, 2, 1)
    return tower.layer_norm(hidden_btd)


def inputs_embeds(model, input_ids_bt, features_bfm, mel_lengths_b):
    """The language model's input embeddings with each clip's audio features in its audio-token slots.

    features_bfm: [B, n_mels, M] log-mels cut to M frames (`window_frames`); mel_lengths_b: [B] real
    mel frames per clip (the processor's feature_attention_mask sums).
    """
    import torch
    from transformers.masking_utils import create_bidirectional_mask

    tower = model.audio_tower
    batch, positions = features_bfm.shape[0], (features_bfm.shape[-1] - 1) // 2 + 1  # conv2's stride 2
    device = tower.conv1.weight.device
    feat_lengths_b, out_lengths_b = tower._get_feat_extract_output_lengths(mel_lengths_b.to(device))
    real_bt = torch.arange(positions, device=device)[None, :] < feat_lengths_b[:, None]
    mask = create_bidirectional_mask(config=tower.config, inputs_embeds=torch.zeros(
        (batch, positions, 1), dtype=tower.conv1.weight.dtype, device=device), attention_mask=real_bt.long())
    audio_btd = model.multi_modal_projector(tower_states(tower, features_bfm, mask))
    keep_bt = torch.arange(audio_btd.shape[1], device=audio_btd.device)[None, :] < out_lengths_b[:, None]
    text_btd = model.get_input_embeddings()(input_ids_bt.to(audio_btd.device))
    slots_bt1 = (input_ids_bt == model.config.audio_token_id).unsqueeze(-1).to(text_btd.device)
    if int(slots_bt1.sum()) != int(keep_bt.sum()):
        raise ValueError(f"{int(slots_bt1.sum())} audio tokens in the prompts, {int(keep_bt.sum())} audio features")
    return text_btd.masked_scatter(slots_bt1, audio_btd[keep_bt].to(text_btd.dtype))


def mel_lengths_of(n_samples: list[int], hop: int) -> np.ndarray:
    """Real mel frames per clip, as the processor's feature_attention_mask counts them (frames starting in the clip)."""
    return np.asarray([-(-n // hop) for n in n_samples], dtype=np.int64)


def audio_token_count(mel_length: int) -> int:
    """Audio tokens the processor puts in the prompt for a clip of `mel_length` real mel frames: the tower's
    output length after its stride-2 convolution and stride-2 pooling (`_get_feat_extract_output_lengths`)."""
    return (((mel_length - 1) // 2 + 1) - 2) // 2 + 1
