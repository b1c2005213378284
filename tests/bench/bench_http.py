"""Samples per second streaming shards from a local HTTP server against reading the same shards from disk.

Run with `make bench` (prints the ratios; the full run is marked slow). The server (tests/shard_server.py)
runs in this process on 127.0.0.1, so the figure is the cost of our http reader (urllib, per-read timeouts,
the Range bookkeeping) and of the loopback, not of a real network. Two figures: the raw tar reading alone
(read_shard, no decoding), where the transport shows most, and the whole ShardStream (filter, shuffle,
decode, collate). Each is timed in wall-clock seconds (the server's thread works while the reader waits),
alternating disk and http, several rounds; the median of the per-round ratios is printed. Nothing here
asserts a time; it checks that both read the same samples.
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch
from bench_data import make_bench_shards
from shard_server import ShardServer

from zsnr.data import LaionFilter, ShardStream, parse_sources
from zsnr.data.shards import read_shard


def raw_keys(urls: list[str]) -> list[str]:
    keys, bad = [], []
    for url in urls:
        keys += [s["__key__"] for s in read_shard(url, lambda kind, u, detail: bad.append(f"bad {kind}"))]
    return keys + bad


def stream_keys(urls: list[str], resolution: int, min_size: int) -> list[str]:
    filters = LaionFilter(min_width=min_size, min_height=min_size)
    stream = ShardStream(parse_sources(urls), batch_size=16, resolution=resolution, filters=filters)
    return [k for batch in stream for k in batch["key"]]


def timed(fn, *args) -> tuple[list[str], float]:
    start = time.perf_counter()
    keys = fn(*args)
    return keys, time.perf_counter() - start


def measure(folder: str, num_samples: int, resolution: int, min_size: int, rounds: int, **sizes) -> dict:
    pattern, _ = make_bench_shards(folder, num_samples, **sizes)
    local = list(parse_sources(pattern)[0].urls)
    server = ShardServer(folder)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        remote = [server.url(os.path.basename(p)) for p in local]
        size = sum(os.path.getsize(p) for p in local)
        result = {"bytes": size, "shards": len(local)}
        for name, fn, extra in [("raw", raw_keys, ()), ("stream", stream_keys, (resolution, min_size))]:
            ratios, disk_sps, http_sps = [], [], []
            for _ in range(rounds):
                on_disk, disk_s = timed(fn, local, *extra)
                over_http, http_s = timed(fn, remote, *extra)
                assert on_disk == over_http and on_disk and not any(k.startswith("bad ") for k in on_disk)
                disk_sps.append(len(on_disk) / disk_s)
                http_sps.append(len(over_http) / http_s)
                ratios.append(http_sps[-1] / disk_sps[-1])
            result[name] = {
                "samples": len(on_disk),
                "disk_sps": statistics.median(disk_sps),
                "http_sps": statistics.median(http_sps),
                "ratio": statistics.median(ratios),
            }
    finally:
        torch.set_num_threads(threads)
        server.close()
    return result


def report(result: dict, rounds: int) -> None:
    mib = result["bytes"] / 2**20
    lines = [f"\n[bench_http] {result['shards']} shards, {mib:.1f} MiB, server on 127.0.0.1 in this process, "
             f"median of {rounds} alternating rounds (wall clock):"]  # fmt: skip
    for name, what in [("raw", "tar reading only"), ("stream", "ShardStream: filter, decode, collate")]:
        r = result[name]
        lines.append(
            f"  {what}: disk {r['disk_sps']:.0f}, http {r['http_sps']:.0f} samples/s over {r['samples']} "
            f"samples; http / disk ratio {r['ratio']:.2f}"
        )
    print("\n".join(lines))


@pytest.mark.slow
def test_bench_http_streaming_throughput(tmp_path):
    rounds = 5
    total = int(os.environ.get("ZSNR_BENCH_HTTP_SAMPLES", "200"))
    result = measure(str(tmp_path), total, 512, 512, rounds)
    report(result, rounds)
    assert result["stream"]["samples"] < result["raw"]["samples"] == total  # the filters reject some


def test_bench_http_tiny(tmp_path):
    """The benchmark's machinery on a few small images (seconds): the same samples over http and from disk."""
    result = measure(str(tmp_path), 24, 64, 128, 1, min_side=100, max_side=260)
    report(result, 1)
    assert result["raw"]["samples"] == 24
