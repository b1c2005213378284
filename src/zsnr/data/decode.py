"""From a sample's raw bytes to what the model needs: caption, metadata, a uint8 image crop (latents: latents.py).

Speed matters here (see tests/bench/bench_data.py). A large JPEG is decoded at 1/2, 1/4 or 1/8 scale by
PIL's draft mode (the DCT does the shrinking); only the crop window is resampled, by torch's uint8
antialiased bilinear kernel (same result as PIL's / torchvision's bilinear Resize, several times faster
on CPUs with AVX2); the result stays uint8 until the accelerator (`to_model_range`).
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
    """The square window (x0, y0, x1, y1), in source pixels, that becomes the output (center crop if no rng).

    Placed like torchvision's Resize(resolution) + CenterCrop / RandomCrop: the short side is scaled to
    `resolution`, the long side to int(long * resolution / short), and the window starts at a whole output
    pixel (rounded half-way for the center crop, uniform for the random crop).
    """
    short = min(width, height)
    out_w = resolution if width == short else int(width * resolution / short)
    out_h = resolution if height == short else int(height * resolution / short)
    if rng is None:
        left, top = int(round((out_w - resolution) / 2)), int(round((out_h - resolution) / 2))
    else:
        left, top = rng.randint(0, out_w - resolution), rng.randint(0, out_h - resolution)
    sx, sy = width / out_w, height / out_h
    return (left * sx, top * sy, (left + resolution) * sx, (top + resolution) * sy)


def resize_window(image: Image.Image, box: tuple[float, ...], resolution: int) -> torch.Tensor:
    """Bilinear, antialiased resize of a window of an RGB image to a uint8 [3, resolution, resolution].

    Shrinking (the common case) uses torch's uint8 kernel on the window rounded to whole source pixels
    (under half an output pixel off); enlarging keeps the exact sub-pixel window through PIL.
    """
    if box[2] - box[0] < resolution:
        resized = image.resize((resolution, resolution), Image.Resampling.BILINEAR, box=box)
        return torch.from_numpy(np.array(resized)).permute(2, 0, 1)
    window = np.array(image.crop(tuple(round(v) for v in box)))  # one copy of the window only
    window = torch.from_numpy(window).permute(2, 0, 1)  # channels-last strides: torch's fast uint8 path
    size = (resolution, resolution)
    return torch.nn.functional.interpolate(window[None], size=size, mode="bilinear", antialias=True)[0]


def decode_image(
    data: bytes,
    resolution: int,
    random_crop: bool = False,
    random_flip: bool = False,
    rng: random.Random | None = None,
) -> torch.Tensor:
    """Image bytes -> uint8 tensor [3, resolution, resolution]: short side resized, center/random crop, RGB.

    Matches torchvision's Resize(resolution) (bilinear, antialiased, as in diffusers' SD training script)
    + CenterCrop / RandomCrop, up to draft-mode decoding and sub-pixel rounding of the window.
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
        image = image.convert("RGB") if image.mode != "RGB" else image
        image.load()
    except Exception as exn:  # PIL raises many types for broken files (OSError, SyntaxError, ValueError...)
        raise BadData("image_decode", f"image does not decode: {exn!r}") from None
    box = crop_box(image.size[0], image.size[1], resolution, rng if random_crop else None)
    out = resize_window(image, box, resolution)
    if random_flip and rng.random() < 0.5:
        out = out.flip(-1)
    return out.contiguous()
