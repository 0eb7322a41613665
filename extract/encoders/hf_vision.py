"""Image models (CLIP, ViT, SigLIP, DINOv2, ...) over frames sampled from each utterance's video.

Workers decode the clip with PyAV, keep one frame every 1/fps seconds of the utterance's span
(`--fps`, default 2; at least one frame), and run the model's image processor on them. The main
process embeds all frames of a batch at once and averages each utterance's frame embeddings; with
`--keep-frames` the per-frame embeddings are stored as the utterance's frames.

Frame embedding (`--pooling`):
  auto  CLIP/SigLIP-style models: the projected image embedding (`get_image_features` /
        `image_embeds`); other models: their pooler output if they have one, else the CLS token
  cls   the first token of the chosen layer
  mean  the mean over the chosen layer's tokens
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from merc.data_manifests.manifest import Utterance
from merc.extract.media import AudioPolicy, MediaError

from . import ENCODER_FAMILIES
from ._device import OomGuard, check_device, resolve_dtype, to_device
from ._layers import check_layer_spec, count_hidden_states, select_layers
from .base import FORMAT_VERSION, Encoded, Encoder, EncoderError, Prepared, Preparer
from .hf_text import load_pretrained, weights_hash

POOLINGS = ("auto", "cls", "mean")
DEFAULT_FPS = 2.0


def read_frames(path: str | None, fps: float, start: float | None = None, end: float | None = None,
                max_seconds: float | None = None) -> tuple[list[np.ndarray], list[str]]:
    """RGB frames [H, W, 3] uint8, one every 1/fps s of [start, end) (at least one), and notes."""
    import av

    if not path:
        raise MediaError("the utterance has no media file", fix="add the clip, or extract text/audio features only")
    notes: list[str] = []
    t0 = start or 0.0
    stop = end if end is not None else float("inf")
    if max_seconds is not None and stop - t0 > max_seconds:
        notes.append(f"video span capped to {max_seconds:g} s")
        stop = t0 + max_seconds
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError("the file has no video stream", file=str(path),
                                 fix="use a clip with video, or extract text/audio features only")
            stream = container.streams.video[0]  # PyAV's default: frame threads decode short clips slower (bench_extract.py --sections media)
            if t0 > 1.0 and stream.time_base:
                container.seek(int(t0 / stream.time_base), stream=stream, backward=True, any_frame=False)
            step = 1.0 / fps
            next_t = t0
            first = None
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else 0.0
                if t >= stop:
                    break
                if t + 1e-6 < t0:
                    first = frame  # the last frame before the span, in case the span holds none
                    continue
                if t + 1e-6 >= next_t:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    while next_t <= t + 1e-6:
                        next_t += step
            if not frames and first is not None:
                frames.append(first.to_ndarray(format="rgb24"))
    except MediaError:
        raise
    except FileNotFoundError:
        raise MediaError("media file not found", file=str(path), fix="restore the file or fix the manifest path") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a per-utterance failure
        raise MediaError(f"cannot decode video ({type(exc).__name__}: {exc})", file=str(path),
                         fix="the file is corrupt or not a video; re-copy it from the corpus") from None
    if not frames:
        raise MediaError("no video frames in the utterance's span", file=str(path),
                         fix="check the manifest start/end times")
    return frames, notes


class VisionPreparer(Preparer):
    """Worker side: decode and sample frames, then the model's image processor (resize, crop).

    Frames travel to the main process as uint8 at the model's input size (a quarter of float32) and
    are rescaled and normalised there (`pixels`), exactly as the processor would; processors whose
    resized output is not 8-bit send normalised float32 instead.
    """

    def __init__(self, image_processor, fps: float, policy: AudioPolicy):
        self.image_processor = image_processor
        self.fps = fps
        self.policy = policy

    def __call__(self, utt: Utterance) -> Prepared:
        frames, notes = read_frames(utt.media, self.fps, utt.start, utt.end, self.policy.max_seconds)
        proc = self.image_processor
        if all(hasattr(proc, a) for a in ("do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std")):
            raw = proc(images=frames, return_tensors="np", do_rescale=False, do_normalize=False)["pixel_values"]
            if raw.dtype == np.uint8 or (raw.min() >= 0 and raw.max() <= 255 and np.array_equal(raw, np.round(raw))):
                return Prepared(utt.id, np.ascontiguousarray(raw, dtype=np.uint8), len(frames), notes)
        pixels_nchw = proc(images=frames, return_tensors="np")["pixel_values"]
        return Prepared(utt.id, np.ascontiguousarray(pixels_nchw, dtype=np.float32), len(frames), notes)


def pixels(image_processor, value_nchw: np.ndarray) -> np.ndarray:
    """Model input from a preparer's frames: uint8 frames are rescaled and normalised like the processor does."""
    if value_nchw.dtype != np.uint8:
        return value_nchw
    x = value_nchw.astype(np.float32)
    if image_processor.do_rescale:
        x = x * np.float32(image_processor.rescale_factor)
    if image_processor.do_normalize:
        mean = np.asarray(image_processor.image_mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(image_processor.image_std, np.float32).reshape(1, -1, 1, 1)
        x = (x - mean) / std
    return x


@dataclass
class VisionOptions:
    pooling: str = "auto"
    layers: str = "last"  # only with --pooling cls|mean
    fps: float = DEFAULT_FPS
    batch_frames: int = 0  # frames per batch; 0 = 64 on CPU, 512 on CUDA
    device: str = "cpu"
    dtype: str = "auto"
    audio: AudioPolicy = field(default_factory=AudioPolicy)  # max_seconds caps the video span too


class HFVisionEncoder(Encoder):
    modality = "video"

    def __init__(self, name: str, model_id: str, options: VisionOptions | None = None):
        super().__init__(name)
        self.model_id = str(model_id)
        self.opts = o = options or VisionOptions()
        if o.pooling not in POOLINGS:
            raise EncoderError(f"unknown pooling {o.pooling!r} for a vision encoder",
                               fix=f"use one of {', '.join(POOLINGS)}")
        if o.fps <= 0:
            raise EncoderError(f"--fps must be positive, not {o.fps}", fix="e.g. --fps 2")
        if o.pooling == "auto" and o.layers != "last":
            raise EncoderError("--layers needs --pooling cls or mean for a vision encoder",
                               fix="add --pooling cls (or mean), or drop --layers")
        check_device(o.device)
        self.dtype = resolve_dtype(o.dtype, o.device)
        self.image_processor = load_pretrained(self.model_id, "AutoImageProcessor")
        self.model = load_pretrained(self.model_id, self._model_class(), dtype=self.dtype)
        self.model.eval().to(o.device)
        self.n_hidden_states = count_hidden_states(getattr(self.model.config, "vision_config", self.model.config))
        check_layer_spec(o.layers, self.n_hidden_states)
        self.guard = OomGuard(o.device)
        probe = np.zeros((32, 32, 3), np.uint8)
        pixels_nchw = self.image_processor(images=[probe], return_tensors="np")["pixel_values"]
        self._dim = int(self._embed(pixels_nchw).shape[-1])  # one black frame: the embedding size of any model kind

    def _model_class(self) -> str:
        """AutoModel, except for checkpoints saved with an image projection head that AutoModel would drop
        (CLIPVisionModelWithProjection, SiglipVisionModel... loaded as the class they were saved as)."""
        import transformers

        config = load_pretrained(self.model_id, "AutoConfig")
        for arch in getattr(config, "architectures", None) or []:
            if arch.endswith("WithProjection") and hasattr(transformers, arch):
                return arch
        return "AutoModel"

    @property
    def dim(self) -> int:
        return self._dim

    def preparer(self) -> Preparer:
        return VisionPreparer(self.image_processor, self.opts.fps, self.opts.audio)

    def batch_budget(self) -> int:
        frames = self.opts.batch_frames or (512 if self.opts.device.startswith("cuda") else 64)
        return self.guard.budget(frames)

    def _embed(self, pixels_nchw: np.ndarray):
        """[N, 3, H, W] -> [N, D] float32 tensor on the CPU."""
        import torch

        inputs = to_device({"pixel_values": torch.from_numpy(pixels_nchw)}, self.opts.device, self.dtype)
        pooling = self.opts.pooling
        with torch.inference_mode():
            if pooling == "auto" and hasattr(self.model, "get_image_features"):
                out = self.model.get_image_features(**inputs)
                emb = out if torch.is_tensor(out) else out.pooler_output
            else:
                out = self.model(**inputs, output_hidden_states=self.opts.layers != "last")
                if pooling == "auto":
                    emb = getattr(out, "image_embeds", None)
                    if emb is None:
                        emb = getattr(out, "pooler_output", None)
                    if emb is None:
                        emb = out.last_hidden_state[:, 0]
                    if emb.dim() > 2:  # conv nets pool to [N, C, 1, 1]
                        emb = emb.flatten(1)
                else:
                    tokens = out.last_hidden_state if self.opts.layers == "last" else select_layers(
                        out.hidden_states, self.opts.layers)
                    if tokens.dim() != 3:
                        raise EncoderError(f"--pooling {pooling} needs a transformer image model (tokens), "
                                           f"{type(self.model).__name__} gives feature maps",
                                           fix="use --pooling auto")
                    emb = tokens[:, 0] if pooling == "cls" else tokens.mean(1)
            return emb.float().cpu()

    def encode_batch(self, items: list[Prepared]) -> list[Encoded]:
        return self.guard.run(self._forward, items)

    def _forward(self, items: list[Prepared]) -> list[Encoded]:
        emb_nd = self._embed(np.concatenate([pixels(self.image_processor, it.value) for it in items])).numpy()
        results, n = [], 0
        for it in items:
            frames_fd = emb_nd[n: n + it.length]
            n += it.length
            results.append(Encoded(frames_fd.mean(0), frames_fd if self.keep_frames else None))
        return results

    def fingerprint(self) -> dict:
        o = self.opts
        return {"family": "hf-vision", "model": self.model_id.rstrip("/").rsplit("/", 1)[-1],
                "weights": weights_hash(self.model_id), "pooling": o.pooling, "layers": o.layers, "fps": o.fps,
                "frame_pooling": "mean", "max_seconds": o.audio.max_seconds,
                "dtype": str(self.dtype).replace("torch.", ""), "merc_format": FORMAT_VERSION}

    def info(self) -> dict:
        return {**super().info(), "frame_rate_hz": self.opts.fps, "model_id": self.model_id}


@ENCODER_FAMILIES.register("vision", "image models over frames sampled from the video")
def from_request(req, model_id: str) -> HFVisionEncoder:
    opts = VisionOptions(device=req.device, dtype=req.dtype, audio=req.audio)
    if req.fps:
        opts.fps = float(req.fps)
    req.apply(opts, "batch_frames")  # --batch-budget: video frames per batch
    return HFVisionEncoder(req.name, model_id, opts)
