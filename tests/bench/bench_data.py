"""Samples per second of zsnr.data against a naive webdataset pipeline, on the same LAION-like shards.

Run with `make bench` (prints the ratio; the full run is marked slow). Both pipelines run in this one
process (no DataLoader workers), on shards of JPEGs from 256 to 2048 px per side, about 40% of which the SD 2
filters reject (short side < 512, punsafe, watermark, aesthetic). The naive pipeline is webdataset's
idiom: decode every image to PIL, then filter on the json, then torchvision Resize + CenterCrop + ToTensor +
Normalize. Ours filters on the json first, shuffles compressed bytes, decodes JPEGs in draft mode, resamples
only the crop (torch's uint8 antialiased bilinear kernel) and keeps uint8. Both run with torch on one thread,
as in a DataLoader worker; each is timed twice, alternating, in CPU seconds of this process (the machine
may be shared), and the faster run counts. Nothing here asserts a wall-clock time; it checks that both pipelines keep
the same samples and produce nearly the same pixels.
"""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torchvision import transforms as T

from zsnr.data import LaionFilter, ShardStream, parse_sources, to_model_range, write_shards
from zsnr.data.buckets import BucketSpec

RESOLUTION = 512


def photo_like(rng: np.random.Generator, width: int, height: int) -> bytes:
    """Colour fields at three scales with a 1/f-like falloff plus fine grain, as a quality-90 JPEG.

    About 1.4-1.7 bits per pixel, like web photos; the report prints the figure for the set.
    """
    pixels = np.zeros((height, width, 3), np.float32)
    for cells, amplitude in ((6, 90.0), (24, 35.0), (96, 14.0)):
        layer = rng.normal(0, amplitude, (cells, cells, 3)).astype(np.float32)
        for c in range(3):
            plane = Image.fromarray(layer[..., c], mode="F").resize((width, height), Image.Resampling.BICUBIC)
            pixels[..., c] += np.asarray(plane)
    grain = rng.normal(0, 4, (128, 128, 3)).astype(np.float32)
    pixels += np.tile(grain, (height // 128 + 1, width // 128 + 1, 1))[:height, :width]
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels + 128, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def laion_like_samples(num_samples: int, seed: int, min_side: int = 256, max_side: int = 2048):
    rng = np.random.default_rng(seed)
    for i in range(num_samples):
        width, height = (int(v) for v in rng.integers(min_side, max_side + 1, 2))
        meta = {
            "original_width": width,
            "original_height": height,
            "punsafe": float(rng.uniform(0.1, 1) if rng.random() < 0.06 else rng.uniform(0, 0.1)),
            "pwatermark": float(rng.uniform(0.5, 1) if rng.random() < 0.05 else rng.uniform(0, 0.5)),
            "aesthetic": float(rng.uniform(2, 4.5) if rng.random() < 0.08 else rng.uniform(4.5, 8)),
            "caption": f"photo {i}",
        }
        yield {
            "__key__": f"{i:06d}",
            "jpg": photo_like(rng, width, height),
            "json": json.dumps(meta),
            "txt": meta["caption"],
        }


def make_bench_shards(folder: str, num_samples: int, seed: int = 0, **sizes) -> tuple[str, float]:
    """Write the shards; returns their brace pattern and the JPEGs' mean bits per pixel."""
    bits = pixels = 0

    def counted(samples):
        nonlocal bits, pixels
        for sample in samples:
            meta = json.loads(sample["json"])
            bits, pixels = (
                bits + 8 * len(sample["jpg"]),
                pixels + meta["original_width"] * meta["original_height"],
            )
            yield sample

    pattern = os.path.join(folder, "laion-%04d.tar")
    samples = counted(laion_like_samples(num_samples, seed, **sizes))
    paths = write_shards(samples, pattern, maxcount=50, total=num_samples, desc="bench shards")
    return paths[0].replace("0000.tar", f"{{0000..{len(paths) - 1:04d}}}.tar"), bits / pixels


def full_bench_shards(folder: str) -> tuple[str, float, int]:
    """The full runs' set: ZSNR_BENCH_DATA_SAMPLES (300) LAION-like JPEGs; pattern, bits per pixel, count."""
    total = int(os.environ.get("ZSNR_BENCH_DATA_SAMPLES", "300"))
    return *make_bench_shards(folder, total), total


def naive_pipeline(urls: str, resolution: int, filters: LaionFilter):
    """The common webdataset recipe: decode everything, then filter, then torchvision transforms."""
    transform = T.Compose(
        [T.Resize(resolution), T.CenterCrop(resolution), T.ToTensor(), T.Normalize([0.5], [0.5])]
    )

    def keep(sample):
        return filters.check(sample["json"], sample["txt"]) is None

    return (
        wds.WebDataset(urls, shardshuffle=False, empty_check=False)
        .decode("pil")
        .select(keep)
        .map(lambda s: {"key": s["__key__"], "image": transform(s["jpg"])})
    )


def our_pipeline(
    urls: str, resolution: int, filters: LaionFilter, batch_size: int = 16, buckets: BucketSpec | None = None
) -> ShardStream:
    return ShardStream(
        parse_sources(urls),
        batch_size=batch_size,
        resolution=resolution,
        shuffle_buffer=1000,
        filters=filters,
        buckets=buckets,
    )


def timed(pipeline) -> tuple[dict, float]:
    """Run a pipeline; returns {key: image} and the CPU seconds this process spent (one thread: on a shared
    machine, CPU time is what the pipeline cost, wall time also counts waiting for other jobs)."""
    start = time.process_time()
    out = {}
    for item in pipeline:
        keys, images = (
            (item["key"], item["image"])
            if isinstance(item["key"], list)
            else ([item["key"]], [item["image"]])
        )
        out.update(zip(keys, images, strict=True))
    return out, time.process_time() - start


def measure(urls: str, resolution: int, min_size: int = 512, rounds: int = 2) -> dict:
    """Best of `rounds` alternating runs of each pipeline, torch on one thread as in a DataLoader worker.

    Samples per CPU-second of this process (see `timed`)."""
    filters = LaionFilter(min_width=min_size, min_height=min_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        naive_s = ours_s = float("inf")
        for _ in range(rounds):
            naive, seconds = timed(naive_pipeline(urls, resolution, filters))
            naive_s = min(naive_s, seconds)
            ours, seconds = timed(our_pipeline(urls, resolution, filters))
            ours_s = min(ours_s, seconds)
    finally:
        torch.set_num_threads(threads)
    assert ours.keys() == naive.keys() and len(ours) > 0
    diff = (
        torch.stack([(to_model_range(ours[k]) - naive[k]).abs().mean() for k in ours]).mean().item() * 127.5
    )
    return {
        "kept": len(ours),
        "naive_sps": len(naive) / naive_s,
        "ours_sps": len(ours) / ours_s,
        "pixel_diff": diff,
    }


def report(result: dict, total: int, resolution: int, bpp: float) -> None:
    ratio = result["ours_sps"] / result["naive_sps"]
    print(
        f"\n[bench_data] {total} LAION-like JPEGs ({bpp:.2f} bits/pixel), {total - result['kept']} rejected "
        f"({1 - result['kept'] / total:.0%}), output {resolution} px, one process, torch on 1 thread:\n"
        f"  naive webdataset (decode all, filter, torchvision): {result['naive_sps']:.1f} samples per CPU-second\n"
        f"  zsnr.data (filter first, draft decode, crop resample, uint8): {result['ours_sps']:.1f} samples per CPU-second\n"
        f"  ratio: {ratio:.2f}x (target >= 3x); mean |pixel difference| {result['pixel_diff']:.2f} / 255"
    )


@pytest.mark.slow
def test_bench_data_pipeline_speed(tmp_path_factory):
    urls, bpp, total = full_bench_shards(str(tmp_path_factory.mktemp("bench_data")))
    result = measure(urls, RESOLUTION)
    report(result, total, RESOLUTION, bpp)
    assert 0.3 < result["kept"] / total < 0.8
    assert result["pixel_diff"] < 6  # same crops; bicubic-after-draft vs bilinear on the full image


def test_bench_data_tiny(tmp_path):
    """The benchmark's machinery on a few small images (seconds): same samples kept, same pixels."""
    urls, bpp = make_bench_shards(str(tmp_path), 16, seed=1, min_side=100, max_side=260)
    result = measure(urls, 64, min_size=128, rounds=1)
    report(result, 16, 64, bpp)
    assert result["pixel_diff"] < 6
