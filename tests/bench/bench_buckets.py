"""Samples per CPU-second of the pipeline with aspect-ratio buckets against the square path, same shards.

Run with `make bench` (prints the ratio; the full run is marked slow). Both are zsnr.data's ShardStream in
this one process (no DataLoader workers, torch on one thread, as in a worker) over LAION-like JPEGs of
256 to 2048 px per side drawn independently (aspect ratios from 1:8 to 8:1; bench_data.make_bench_shards),
with SD 2's filters: the square path center-crops every image to 512 x 512, the bucketed one crops it to
the nearest of the 512 px buckets (step 64, max_aspect 2) and holds it until its bucket fills a batch.
Rounds alternate square and buckets; the median of the per-round ratios is printed, in CPU seconds of this
process (the machine may be shared), with the wall-clock ratio beside it. Nothing here asserts a time; it
checks that both keep the same samples and that every bucketed batch is one bucket. It also prints what
the buckets buy: the share of each image's area that survives the crop, square against buckets.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from bench_data import RESOLUTION, full_bench_shards, make_bench_shards, our_pipeline

from zsnr.data import LaionFilter
from zsnr.data.buckets import BucketSpec, bucket_sizes, crop_share, nearest_bucket

SPEC = BucketSpec(64, 2.0)


def read(pipeline) -> tuple[dict, dict, int]:
    """{key: (h, w) of its batch}, {key: (height, width) stored}, and the most samples ever buffered."""
    shapes, originals, buffered = {}, {}, 0
    for batch in pipeline:
        h, w = batch["image"].shape[-2:]
        for key, size in zip(batch["key"], batch["original_size"].tolist(), strict=True):
            shapes[key], originals[key] = (h, w), tuple(size)
        buffered = max(buffered, len(batch["resume"]["buffered"]))
    return shapes, originals, buffered


def measure(urls: str, resolution: int, min_size: int = 512, rounds: int = 5) -> dict:
    filters = LaionFilter(min_width=min_size, min_height=min_size)
    spec = BucketSpec(SPEC.step * resolution // RESOLUTION, SPEC.max_aspect)  # the same buckets, scaled
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cpu, wall = {"square": [], "buckets": []}, {"square": [], "buckets": []}
    try:
        for _ in range(rounds):
            for name, buckets in (("square", None), ("buckets", spec)):
                start_cpu, start_wall = time.process_time(), time.perf_counter()
                shapes, originals, buffered = read(our_pipeline(urls, resolution, filters, buckets=buckets))
                cpu[name].append(len(shapes) / (time.process_time() - start_cpu))
                wall[name].append(len(shapes) / (time.perf_counter() - start_wall))
                result = {"shapes": shapes, "originals": originals, "buffered": buffered}
                if name == "square":
                    square = result
    finally:
        torch.set_num_threads(threads)
    sizes = bucket_sizes(resolution, spec)
    assert square["shapes"].keys() == result["shapes"].keys() and square["shapes"]
    assert set(square["shapes"].values()) == {(resolution, resolution)}
    for key, (height, width) in result["originals"].items():  # each sample in the batch of its own bucket
        assert result["shapes"][key] == nearest_bucket(width, height, sizes)[::-1]
    ratios = {
        k: [b / s for s, b in zip(v["square"], v["buckets"], strict=True)]
        for k, v in (("cpu", cpu), ("wall", wall))
    }
    kept_square = [crop_share(w, h, (resolution, resolution)) for h, w in result["originals"].values()]
    kept_buckets = [crop_share(w, h, nearest_bucket(w, h, sizes)) for h, w in result["originals"].values()]
    return {
        "samples": len(result["shapes"]),
        "square_sps": statistics.median(cpu["square"]),
        "buckets_sps": statistics.median(cpu["buckets"]),
        "cpu_ratio": statistics.median(ratios["cpu"]),
        "cpu_range": (min(ratios["cpu"]), max(ratios["cpu"])),
        "wall_ratio": statistics.median(ratios["wall"]),
        "kept_square": statistics.mean(kept_square),
        "kept_buckets": statistics.mean(kept_buckets),
        "buffered": result["buffered"],
        "sizes": sizes,
        "drawn": sorted({s[::-1] for s in result["shapes"].values()}),
    }


def report(result: dict, total: int, resolution: int, rounds: int) -> None:
    low, high = result["cpu_range"]
    buckets = " ".join(f"{w}x{h}" for w, h in result["sizes"])
    print(
        f"\n[bench_buckets] {total} LAION-like JPEGs, {result['samples']} kept by the filters, output "
        f"{resolution} px, one process, torch on 1 thread, median of {rounds} alternating rounds:\n"
        f"  square (center crop to {resolution} x {resolution}): {result['square_sps']:.1f} samples per "
        f"CPU-second\n"
        f"  buckets {buckets}: {result['buckets_sps']:.1f} samples per CPU-second\n"
        f"  ratio buckets / square: {result['cpu_ratio']:.2f}x in CPU time (rounds {low:.2f}-{high:.2f}), "
        f"{result['wall_ratio']:.2f}x in wall time; buckets drawn: {len(result['drawn'])} of "
        f"{len(result['sizes'])}, at most {result['buffered']} samples waiting in buffers\n"
        f"  image area kept by the crop: square {result['kept_square']:.0%}, buckets {result['kept_buckets']:.0%}"
    )


@pytest.mark.slow
def test_bench_buckets_against_the_square_path(tmp_path_factory):
    urls, _, total = full_bench_shards(str(tmp_path_factory.mktemp("bench_buckets")))
    result = measure(urls, RESOLUTION)
    report(result, total, RESOLUTION, rounds=5)
    assert result["kept_buckets"] > result["kept_square"]


def test_bench_buckets_tiny(tmp_path):
    """The benchmark's machinery on a few small images (seconds): same samples, each in its own bucket."""
    urls, _ = make_bench_shards(str(tmp_path), 24, seed=2, min_side=100, max_side=300)
    result = measure(urls, 64, min_size=128, rounds=1)
    report(result, 24, 64, rounds=1)
    assert result["kept_buckets"] >= result["kept_square"]
