"""From a sample's raw bytes to what the model needs: caption, metadata, a uint8 image crop, or latents.

Speed matters here (see tests/bench/bench_data.py). A large JPEG is decoded at 1/2, 1/4 or 1/8 scale by
PIL's draft mode (the DCT does the shrinking); only the crop window is resampled (`box=`), after a cheap
integer box reduction (`reducing_gap`); the result stays uint8 until the accelerator (`to_model_range`).
"""

from __future__ import annotations

import io
import json
import math
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

from zsnr.data.shards import BadData

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
LATENT_EXTS = ("latent.pth", "latent.npy")
TEXT_STATE_EXTS = ("text.pth", "text.npy")
# Resample the crop with bicubic after a box reduction that leaves it at most this factor above the target:
# Pillow's own speed/quality knob (2.0 is visually indistinguishable from a plain bicubic resize).
REDUCING_GAP = 2.0


def to_model_range(image: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float in [-1, 1] (call it on the accelerator, after the uint8 batch has moved)."""
    if image.dtype != torch.uint8:
        raise TypeError(f"to_model_range expects the uint8 batch['image'], got dtype {image.dtype}")
    return image.float().div_(127.5).sub_(1.0)


def first_member(sample: Mapping[str, Any], exts: tuple[str, ...]) -> str | None:
    return next((ext for ext in exts if ext in sample), None)


def read_caption(sample: Mapping[str, Any], meta: Mapping[str, Any]) -> str | None:
    """The .txt member (strict UTF-8), else the json 'caption' field, else None."""
    if "txt" in sample:
        try:
            text = sample["txt"].decode("utf-8")
        except UnicodeDecodeError as exn:
            raise BadData("caption_encoding", f"caption is not valid UTF-8: {exn}") from None
        if text.strip():
            return text.strip()
    caption = meta.get("caption")
    return caption.strip() if isinstance(caption, str) else None


def read_metadata(sample: Mapping[str, Any], required: bool) -> dict[str, Any]:
    """Parse the .json member; a missing one is bad data only when some filter needs it."""
    raw = sample.get("json")
    if raw is None:
        if required:
            raise BadData("json_missing", "sample has no .json metadata")
        return {}
    if len(raw) == 0:
        raise BadData("empty_member", "zero-byte .json")
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exn:
        raise BadData("json_broken", f"json does not parse: {exn}") from None
    if not isinstance(meta, dict):
        raise BadData("json_broken", f"json is a {type(meta).__name__}, not an object")
    return meta


def crop_box(width: int, height: int, resolution: int, rng: random.Random | None) -> tuple[float, ...]:
    """The square window, in source pixels, that becomes the output (center crop when rng is None).

    Placed like torchvision's Resize(resolution) + CenterCrop / RandomCrop: the short side is scaled to
    `resolution`, the long side to int(long * resolution / short), and the window starts at a whole output
    pixel (rounded half-way for the center crop, uniform for the random crop).
    """
    short = min(width, height)
    out_w, out_h = (int(width * resolution / short), int(height * resolution / short))
    out_w, out_h = (resolution if width == short else out_w), (resolution if height == short else out_h)
    if rng is None:
        left, top = int(round((out_w - resolution) / 2)), int(round((out_h - resolution) / 2))
    else:
        left, top = rng.randint(0, out_w - resolution), rng.randint(0, out_h - resolution)
    sx, sy = width / out_w, height / out_h
    return (left * sx, top * sy, (left + resolution) * sx, (top + resolution) * sy)


def decode_image(
    data: bytes,
    resolution: int,
    random_crop: bool = False,
    random_flip: bool = False,
    rng: random.Random | None = None,
) -> torch.Tensor:
    """Image bytes -> uint8 tensor [3, resolution, resolution]: short side resized, center/random crop, RGB.

    Matches torchvision's Resize(resolution, bicubic, antialias) + CenterCrop/RandomCrop up to resampling
    details (draft scaling, reducing_gap), at a fraction of the cost for large images.
    """
    if len(data) == 0:
        raise BadData("empty_member", "zero-byte image")
    rng = rng or random.Random(0)
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        scale = resolution / min(width, height)
        if image.format == "JPEG" and scale < 0.5:
            # DCT scaling to the smallest 1/2^k size that keeps the short side >= resolution
            image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        image = image.convert("RGB")
        box = crop_box(image.size[0], image.size[1], resolution, rng if random_crop else None)
        image = image.resize(
            (resolution, resolution), Image.Resampling.BICUBIC, box=box, reducing_gap=REDUCING_GAP
        )
    except BadData:
        raise
    except Exception as exn:  # PIL raises many types for broken files (OSError, SyntaxError, ValueError...)
        raise BadData("image_decode", f"image does not decode: {exn!r}") from None
    array = np.asarray(image)
    if random_flip and rng.random() < 0.5:
        array = array[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def load_tensor(data: bytes, ext: str) -> torch.Tensor:
    """A .pth (torch.save) or .npy member as a float32 tensor."""
    if len(data) == 0:
        raise BadData("empty_member", f"zero-byte .{ext}")
    try:
        if ext.endswith("npy"):
            value = torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False))
        else:
            value = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exn:
        raise BadData("tensor_decode", f".{ext} does not load: {exn!r}") from None
    if not isinstance(value, torch.Tensor):
        raise BadData("tensor_decode", f".{ext} holds a {type(value).__name__}, not a tensor")
    return value.float()
