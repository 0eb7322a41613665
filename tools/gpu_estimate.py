"""Estimate one-GPU extraction throughput for data2vec-base and whisper-large-v3 from FLOP counts, and what
cutting Qwen2-Audio's tower window to the clip saves.

No weights and no GPU needed: the published architectures are built from their configs on the `meta`
device and one forward pass per input shape is counted with torch.utils.flop_counter.FlopCounterMode.
Throughput = (GPU dense bf16/fp16 peak x an assumed model-FLOP utilisation) / FLOPs per clip.

    .venv/bin/python tools/gpu_estimate.py [--mfu 0.35] [--clip-seconds 3.2]

What the numbers mean and what they leave out is written in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse

# dense (no sparsity) tensor-core peaks from the vendors' datasheets, TFLOP/s
GPUS = {"A100 (bf16/fp16)": 312.0, "H100 SXM (bf16/fp16)": 989.0, "L4 (bf16/fp16)": 121.0}


def flops(model, *inputs) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(*inputs)
    return float(counter.get_total_flops())


def data2vec_base_flops(seconds: float) -> tuple[float, int]:
    """FLOPs of facebook/data2vec-audio-base on one clip of `seconds` (the config defaults are the base model)."""
    import torch
    import transformers as tf

    cfg = tf.Data2VecAudioConfig()
    with torch.device("meta"):
        model = tf.Data2VecAudioModel(cfg).eval()
        params = sum(p.numel() for p in model.parameters())
        return flops(model, torch.zeros(1, int(seconds * 16000))), params


def whisper_large_v3_encoder_flops() -> tuple[float, int]:
    """FLOPs of openai/whisper-large-v3's encoder on one 30 s window (it always sees 30 s)."""
    import torch
    import transformers as tf

    cfg = tf.WhisperConfig(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                           decoder_layers=1, decoder_attention_heads=20, decoder_ffn_dim=5120, num_mel_bins=128,
                           max_source_positions=1500, vocab_size=51866)
    with torch.device("meta"):
        encoder = tf.WhisperModel(cfg).get_encoder().eval()
        params = sum(p.numel() for p in encoder.parameters())
        return flops(encoder, torch.zeros(1, 128, 3000)), params


def qwen2_audio_tower_flops(seconds: float) -> tuple[float, float, int]:
    """FLOPs of Qwen2-Audio's audio tower (the config defaults are Qwen2-Audio-7B's) on one clip of `seconds`:
    over the full 30 s window as the model's forward runs it, and over merc's window cut past the clip."""
    import torch
    import transformers as tf

    from merc.extract.encoders.audio_tower import mel_lengths_of, tower_states, window_frames

    cfg = tf.Qwen2AudioEncoderConfig()
    mel = int(mel_lengths_of([int(seconds * 16000)], 160)[0])
    cut = window_frames([mel], [mel + 3], 3000)  # + the STFT window's overlap that workers ship
    with torch.device("meta"):
        tower = tf.models.qwen2_audio.modeling_qwen2_audio.Qwen2AudioEncoder(cfg).eval()
        params = sum(p.numel() for p in tower.parameters())
        full = flops(lambda x: tower_states(tower, x), torch.zeros(1, cfg.num_mel_bins, 3000))
        short = flops(lambda x: tower_states(tower, x), torch.zeros(1, cfg.num_mel_bins, cut))
    return full, short, params


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mfu", type=float, default=0.35, help="assumed model-FLOP utilisation of the GPU")
    ap.add_argument("--clip-seconds", type=float, default=3.2, help="mean utterance length (MELD: 3.2 s)")
    args = ap.parse_args()
    d2v, d2v_params = data2vec_base_flops(args.clip_seconds)
    wsp, wsp_params = whisper_large_v3_encoder_flops()
    rows = [("data2vec-audio-base", d2v_params, f"{args.clip_seconds:g} s clip", d2v),
            ("whisper-large-v3 encoder", wsp_params, "30 s window", wsp)]
    print(f"{'model':26s} {'params':>8s} {'input':>12s} {'GFLOP/clip':>11s}")
    for name, params, what, f in rows:
        print(f"{name:26s} {params / 1e6:7.0f}M {what:>12s} {f / 1e9:11.1f}")
    full, short, params = qwen2_audio_tower_flops(args.clip_seconds)
    print(f"{'Qwen2-Audio audio tower':26s} {params / 1e6:7.0f}M {'30 s window':>12s} {full / 1e9:11.1f}")
    print(f"{'  merc: window cut to clip':26s} {'':8s} {f'{args.clip_seconds:g} s clip':>12s} {short / 1e9:11.1f}"
          f"   ({full / short:.1f}x fewer; the language model's share is unchanged)")
    print(f"\nclips per second at {args.mfu:.0%} of the dense peak, and the model time for MELD's 13,708 utterances")
    print(f"{'GPU':22s} {'peak TF/s':>9s} " + " ".join(f"{n:>34s}" for n, *_ in rows))
    for gpu, peak in GPUS.items():
        rates = [peak * 1e12 * args.mfu / f for *_, f in rows]
        cells = " ".join(f"{r:10.0f} clips/s, MELD {_duration(13708 / r):>7s}" for r in rates)
        print(f"{gpu:22s} {peak:9.0f} {cells}")


if __name__ == "__main__":
    main()
