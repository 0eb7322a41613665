"""CUDA-careful execution shared by every model family: dtypes, pinned non-blocking copies, OOM halving.

One helper so that every family behaves the same on a GPU:
- weights in fp16/bf16 (`resolve_dtype`), inputs cast on the host before the copy (half the bytes);
- inputs copied from pinned host memory with `non_blocking=True` (`to_device`), so the copy overlaps
  the previous batch's kernels;
- a batch that runs out of GPU memory is split in two and each half retried (`OomGuard.run`), and
  later batches get a smaller budget, instead of a run dying hours in on one long clip.
Everything here also runs on CPU (the OOM path is tested there with an injected error).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .base import EncoderError

T = TypeVar("T")
R = TypeVar("R")

DTYPES = ("auto", "fp32", "fp16", "bf16")
OOM_MARKERS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")


def is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def resolve_dtype(name: str, device: str, *, prefer_bf16: bool = False):
    """Weights dtype: `auto` is fp32 on CPU, and on CUDA fp16 (bf16 for LLMs when the GPU supports it)."""
    import torch

    if name not in DTYPES:
        raise EncoderError(f"unknown dtype {name!r}", fix=f"use one of {', '.join(DTYPES)}")
    if name == "auto":
        if not is_cuda(device):
            return torch.float32
        if prefer_bf16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def check_device(device: str) -> None:
    """Fail before loading weights when the user asks for a GPU that is not there."""
    import torch

    if is_cuda(device) and not torch.cuda.is_available():
        raise EncoderError(f"--device {device} asked for, but torch sees no CUDA device "
                           f"(torch {torch.__version__})",
                           fix="use --device cpu, or install a CUDA build of torch on a machine with a GPU")


def to_device(batch: Mapping[str, Any], device: str, float_dtype=None) -> dict[str, Any]:
    """Move a batch of host tensors to `device`; floating tensors are cast to `float_dtype` first.

    On CUDA the host tensor is pinned and copied with non_blocking=True: the copy is queued on the
    current stream behind the running kernels and the caching host allocator keeps the pinned buffer
    alive until it is done, so nothing here waits for the GPU.
    """
    import torch

    out: dict[str, Any] = {}
    for key, value in batch.items():
        if not torch.is_tensor(value):
            out[key] = value
            continue
        if float_dtype is not None and value.is_floating_point() and value.dtype != float_dtype:
            value = value.to(float_dtype)
        if is_cuda(device):
            value = value.pin_memory().to(device, non_blocking=True)
        elif str(device) != "cpu":
            value = value.to(device)
        out[key] = value
    return out


def is_oom(exc: BaseException) -> bool:
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in OOM_MARKERS)


def release_memory(device: str) -> None:
    """Give cached blocks back after an OOM so the retry starts from a clean allocator."""
    gc.collect()
    if is_cuda(device):
        import torch

        torch.cuda.empty_cache()


class OomGuard:
    """Runs `fn(items)`; on out-of-memory, halves the batch and retries each half (recursively).

    `scale` (1, 1/2, 1/4 ...) records how often memory ran out; encoders multiply their batch budget
    by it (`budget()`), so the runner cuts smaller batches for the rest of the run.
    """

    def __init__(self, device: str, min_scale: float = 1 / 1024):
        self.device = device
        self.scale = 1.0
        self.min_scale = min_scale
        self.ooms = 0

    def budget(self, base: int) -> int:
        return max(1, int(base * self.scale))

    def run(self, fn: Callable[[list[T]], list[R]], items: list[T]) -> list[R]:
        try:
            return fn(items)
        except RuntimeError as exc:  # torch.OutOfMemoryError is a RuntimeError
            if not is_oom(exc):
                raise
            if len(items) <= 1:
                what = getattr(items[0], "utterance_id", "?") if items else "?"
                length = getattr(items[0], "length", "?") if items else "?"
                raise EncoderError(
                    f"out of memory on {self.device} encoding one utterance alone ({what}, length {length})",
                    fix="lower --max-seconds, use --dtype fp16 or bf16, or a smaller model") from None
        # Retry outside the except block: the failed attempt's tensors are referenced by the traceback
        # until the block ends, so releasing memory inside it would free nothing.
        self.ooms += 1
        self.scale = max(self.min_scale, self.scale / 2)
        release_memory(self.device)
        mid = len(items) // 2
        return self.run(fn, items[:mid]) + self.run(fn, items[mid:])
