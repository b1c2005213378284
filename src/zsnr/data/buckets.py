"""Aspect-ratio buckets: which sizes a batch can have, which one an image goes to, and the per-bucket buffers.

Without buckets every image is resized and center-cropped to one square (the paper's, and SD 2's, recipe), so
a wide photo loses its sides. With them (data.buckets.enabled) the image goes to the bucket whose aspect ratio
is nearest its own and is cropped only by what the two ratios differ; every bucket holds about the pixels of
the model's square (so a step costs about the same whatever bucket it draws), with sides in multiples of
`step` pixels. A worker keeps one buffer per bucket and hands out a batch when a buffer is full, so a batch
is one size; what is buffered belongs to the stream's position (zsnr.data.stream), so resume stays exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

Size = tuple[int, int]  # (width, height) in pixels


@dataclass(frozen=True)
class BucketSpec:
    """step: bucket sides are multiples of it (64 for SD: the VAE's 8x times the UNet's 8x); max_aspect: the
    longest side is at most this many times the shortest."""

    step: int = 64
    max_aspect: float = 2.0

    def __post_init__(self) -> None:
        if self.step < 1 or not self.max_aspect >= 1:
            raise ValueError(
                f"data.buckets needs step >= 1 and max_aspect >= 1; got step={self.step}, "
                f"max_aspect={self.max_aspect}"
            )

    @classmethod
    def from_any(cls, value: BucketSpec | Mapping[str, Any] | None) -> BucketSpec | None:
        """None, a BucketSpec, or a config mapping {enabled, step, max_aspect} (None when not enabled)."""
        if value is None or isinstance(value, BucketSpec):
            return value
        options = dict(value)
        enabled = options.pop("enabled", True)
        known = {f.name for f in fields(cls)}
        if set(options) - known:
            raise ValueError(
                f"data.buckets has unknown key(s) {sorted(set(options) - known)}; it takes enabled and "
                f"{sorted(known)}"
            )
        return cls(**options) if enabled else None

    def check_multiple(self, multiple: int) -> None:
        """Refuse a step that is not a multiple of the model's pixel multiple (zsnr.models.size_multiple)."""
        if self.step % multiple:
            raise ValueError(
                f"data.buckets.step={self.step} is not a multiple of {multiple}, the side length this model "
                "needs (the autoencoder's downsampling times the UNet's): its UNet would have to resize "
                f"feature maps between levels. Set data.buckets.step to a multiple of {multiple}."
            )


def bucket_sizes(resolution: int, spec: BucketSpec | None) -> tuple[Size, ...]:
    """The buckets' (width, height), ordered from the tallest to the widest; without a spec, the one square.

    For each short side s = step, 2 step, ... (while s^2 <= resolution^2) the long side is the longest
    multiple of step with s x long <= resolution^2, so no bucket has more pixels than the square and none
    could grow by a step without exceeding it; both orientations, if long / s <= max_aspect.
    """
    if spec is None:
        return ((resolution, resolution),)
    area, step = resolution * resolution, spec.step
    sizes: set[Size] = set()
    for short in range(step, math.isqrt(area) + 1, step):
        long = area // (short * step) * step
        if long <= spec.max_aspect * short:
            sizes |= {(short, long), (long, short)}
    if not sizes:
        raise ValueError(
            f"data.buckets (step {step}, max_aspect {spec.max_aspect}) gives no bucket around resolution "
            f"{resolution}: no pair of sides in whole steps holds about resolution^2 pixels within max_aspect. "
            f"Use a smaller step, e.g. at most resolution / 4 ({resolution // 4} here) and a multiple of the "
            "model's size multiple, or a larger max_aspect."
        )
    return tuple(sorted(sizes, key=lambda size: size[0] / size[1]))


def crop_share(width: int, height: int, size: Size) -> float:
    """The share of a width x height image's area left after scaling it to cover `size` and cropping to it:
    min(r / r_b, r_b / r), r = width / height and r_b = w / h (1 for a bucket of the image's own shape)."""
    ratio, bucket = width / height, size[0] / size[1]
    return min(ratio / bucket, bucket / ratio)


def nearest_bucket(width: int, height: int, sizes: tuple[Size, ...]) -> Size:
    """The bucket that crops least: the one whose aspect ratio is nearest the image's in log scale. Ties go to
    the first of `sizes`."""
    return max(sizes, key=lambda size: crop_share(width, height, size))


def shape_key(item: Mapping[str, Any]) -> tuple:
    """What must match for items to stack into one batch: the shapes of all their tensors."""
    return tuple((name, tuple(v.shape)) for name, v in sorted(item.items()) if isinstance(v, torch.Tensor))


class BucketBuffers:
    """Decoded samples waiting for their bucket to fill, in arrival order per bucket.

    Buckets are kept in the order their oldest sample arrived (a full one is taken out), so `cursors`, which a
    batch's position records, lists the buffered samples in an order that rebuilds these same buffers.
    """

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.buffers: dict[tuple, list[dict[str, Any]]] = {}

    def add(self, item: dict[str, Any]) -> list[dict[str, Any]] | None:
        """Buffer an item; returns its bucket's batch when this item filled it."""
        key = shape_key(item)
        buffer = self.buffers.setdefault(key, [])
        buffer.append(item)
        return self.buffers.pop(key) if len(buffer) == self.batch_size else None

    def cursors(self) -> list[list[int]]:
        """[ordinal, index] of every buffered sample (zsnr.data.stream's cursor), bucket by bucket."""
        return [list(item["cursor"]) for buffer in self.buffers.values() for item in buffer]

    def drain(self) -> Iterator[list[dict[str, Any]]]:
        """The partial buckets, oldest first (the end of a single pass); each is taken out before it is given."""
        while self.buffers:
            yield self.buffers.pop(next(iter(self.buffers)))
