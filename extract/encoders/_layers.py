"""Layer choice and masked pooling shared by the model families.

Layer specs (`--layers`), over `hidden_states` = (embedding output, layer 1, ..., layer L):
  last          the model's last hidden state
  <int>         one entry of hidden_states (0 = embeddings; negative counts from the end)
  last<k>-mean  the mean of the last k entries (e.g. last4-mean)
  all           every entry, concatenated on the feature axis: vectors are [(L+1) * D], layer-major,
                so `v.reshape(L + 1, D)[l]` is layer l. Pooling a concatenation equals concatenating
                per-layer pools, so the pooled vector holds every layer's pooled vector.
"""

from __future__ import annotations

import re

from .base import EncoderError

_LASTK = re.compile(r"^last(\d+)-mean$")
LAYER_HELP = "use last, all, an integer index (negative counts from the end) or last<k>-mean such as last4-mean"


def check_layer_spec(spec: str, n_hidden_states: int) -> None:
    """Raise a clear error now, before any audio is decoded, when `spec` cannot work for this model."""
    if spec in ("last", "all"):
        return
    m = _LASTK.match(spec)
    if m:
        k = int(m.group(1))
        if 1 <= k <= n_hidden_states:
            return
    else:
        try:
            i = int(spec)
        except ValueError:
            i = None
        if i is not None and -n_hidden_states <= i < n_hidden_states:
            return
    raise EncoderError(f"layer spec {spec!r} is not valid for a model with {n_hidden_states - 1} layers "
                       f"({n_hidden_states} hidden states)", fix=LAYER_HELP)


def layer_multiplier(spec: str, n_hidden_states: int) -> int:
    """How many D-sized blocks a vector holds for this spec."""
    return n_hidden_states if spec == "all" else 1


def needs_hidden_states(spec: str) -> bool:
    return spec != "last"


def select_layers(hidden_states, spec: str):
    """hidden_states: tuple of [B, T, D] (embeddings first). Returns [B, T, D] or [B, T, (L+1)*D] for `all`."""
    import torch

    if spec == "last":
        return hidden_states[-1]
    if spec == "all":
        return torch.cat(tuple(hidden_states), dim=-1)
    m = _LASTK.match(spec)
    if m:
        k = int(m.group(1))
        return torch.stack(tuple(hidden_states[-k:])).float().mean(0)
    try:
        return hidden_states[int(spec)]
    except (ValueError, IndexError):
        raise EncoderError(f"layer spec {spec!r} is not valid for a model with {len(hidden_states) - 1} layers",
                           fix=LAYER_HELP) from None


def masked_mean(values_btd, mask_bt):
    """Mean over the time axis of the positions where mask is true; float32 result [B, D]."""
    import torch

    mask = mask_bt.unsqueeze(-1).to(values_btd.device, dtype=torch.float32)
    return (values_btd.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def length_mask(lengths_b, max_len: int):
    """[B, max_len] bool, True for the first lengths[b] positions."""
    import torch

    lengths_b = torch.as_tensor(lengths_b)
    return torch.arange(max_len, device=lengths_b.device)[None, :] < lengths_b[:, None]


def count_hidden_states(config) -> int:
    """Entries of `hidden_states` (embeddings + one per layer) for a model config of any family."""
    for cfg in (config, getattr(config, "text_config", None), getattr(config, "vision_config", None)):
        if cfg is None:
            continue
        for attr in ("num_hidden_layers", "encoder_layers", "num_layers", "n_layer"):
            n = getattr(cfg, attr, None)
            if isinstance(n, int):
                return n + 1
    raise EncoderError(f"cannot tell how many layers a {type(config).__name__} model has",
                       fix="use --layers last with this model")
