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
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from zsnr.data.buckets import nearest_bucket
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


class Window(NamedTuple):
    box: tuple[float, ...]  # (x0, y0, x1, y1) in source pixels
    top: int  # where the window starts in the resized image (SDXL's crop coordinates)
    left: int
    resized_width: int  # the width of the resized image


def crop_box(width: int, height: int, size: tuple[int, int], rng: random.Random | None) -> Window:
    """The window of a width x height image that becomes the output of `size` = (w, h); center crop if no rng.

    Placed like torchvision's Resize + CenterCrop / RandomCrop: the image is scaled to cover `size` (for a
    square, its short side to the square's), the other side to int(side x scale), and the window starts at a
    whole output pixel (rounded half-way for the center crop, uniform for the random crop).
    """
    out_w, out_h = size
    if width * out_h >= height * out_w:  # wider than the target: the heights match
        out_w = int(width * out_h / height)
    else:
        out_h = int(height * out_w / width)
    w, h = size
    if rng is None:
        left, top = int(round((out_w - w) / 2)), int(round((out_h - h) / 2))
    else:
        left, top = rng.randint(0, out_w - w), rng.randint(0, out_h - h)
    sx, sy = width / out_w, height / out_h
    return Window((left * sx, top * sy, (left + w) * sx, (top + h) * sy), top, left, out_w)


def resize_window(image: Image.Image, box: tuple[float, ...], size: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of a window of an RGB image to a uint8 [3, h, w], `size` = (w, h).

    Shrinking (the common case) uses torch's uint8 kernel on the window rounded to whole source pixels
    (under half an output pixel off); enlarging keeps the exact sub-pixel window through PIL.
    """
    if box[2] - box[0] < size[0]:
        resized = image.resize(size, Image.Resampling.BILINEAR, box=box)
        return torch.from_numpy(np.array(resized)).permute(2, 0, 1)
    window = np.array(image.crop(tuple(round(v) for v in box)))  # one copy of the window only
    window = torch.from_numpy(window).permute(2, 0, 1)  # channels-last strides: torch's fast uint8 path
    out = (size[1], size[0])
    return torch.nn.functional.interpolate(window[None], size=out, mode="bilinear", antialias=True)[0]


class Crop(NamedTuple):
    """A decoded image and where it came from (SDXL's micro-conditioning, kept so a user can see the crop)."""

    image: torch.Tensor  # uint8 [3, h, w]
    original_size: tuple[int, int]  # (height, width) of the stored image
    crop_top_left: tuple[int, int]  # (top, left) of the window in the resized (and flipped) image


def decode_crop(
    data: bytes,
    sizes: Sequence[tuple[int, int]],
    random_crop: bool = False,
    random_flip: bool = False,
    rng: random.Random | None = None,
) -> Crop:
    """Image bytes -> the image resized to cover the bucket of `sizes` ((w, h) each, zsnr.data.buckets) nearest
    its aspect ratio, center/random cropped to it, RGB uint8, with the crop recorded.

    Matches torchvision's Resize (bilinear, antialiased, as in diffusers' SD training script) + CenterCrop /
    RandomCrop, up to draft-mode decoding and sub-pixel rounding of the window.
    """
    if len(data) == 0:
        raise BadData("empty_member", "zero-byte image")
    rng = rng or random.Random(0)
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        size = nearest_bucket(width, height, tuple(sizes))
        scale = max(size[0] / width, size[1] / height)
        if image.format == "JPEG" and scale < 0.5:
            # DCT scaling to the smallest 1/2^k size that still covers the bucket
            image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
        image = image.convert("RGB") if image.mode != "RGB" else image
        image.load()
    except Exception as exn:  # PIL raises many types for broken files (OSError, SyntaxError, ValueError...)
        raise BadData("image_decode", f"image does not decode: {exn!r}") from None
    window = crop_box(image.size[0], image.size[1], size, rng if random_crop else None)
    out, left = resize_window(image, window.box, size), window.left
    if random_flip and rng.random() < 0.5:
        out, left = out.flip(-1), window.resized_width - size[0] - left  # the window, seen in the mirror
    return Crop(out.contiguous(), (height, width), (window.top, left))


def decode_image(
    data: bytes,
    resolution: int,
    random_crop: bool = False,
    random_flip: bool = False,
    rng: random.Random | None = None,
) -> torch.Tensor:
    """Image bytes -> uint8 tensor [3, resolution, resolution]: short side resized, center/random crop, RGB."""
    return decode_crop(data, [(resolution, resolution)], random_crop, random_flip, rng).image
