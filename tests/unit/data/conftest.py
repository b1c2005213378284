"""Synthetic shard sets shared by the data tests (generated once per session, 32 px: fast to decode)."""

from __future__ import annotations

import glob
import os

import pytest
from shard_factory import passes_sd2_filters, read_keys_and_meta

from zsnr.data import make_synthetic_shards
from zsnr.data.synthetic import SyntheticSet


class ShardSet:
    def __init__(self, folder: str, num_samples: int, samples_per_shard: int, seed: int = 0, aspects=(1.0,)):
        spec = SyntheticSet(num_samples, 32, seed, samples_per_shard, aspects=aspects)
        self.urls = make_synthetic_shards(folder, spec)
        self.paths = sorted(glob.glob(os.path.join(folder, "*.tar")))
        self.meta = dict(kv for p in self.paths for kv in read_keys_and_meta(p))
        self.accepted = {k for k, m in self.meta.items() if passes_sd2_filters(m)}


@pytest.fixture(scope="session")
def six_shards(tmp_path_factory) -> ShardSet:
    """240 samples in 6 shards: more shards than 2 ranks x 2 workers."""
    return ShardSet(str(tmp_path_factory.mktemp("six")), 240, 40)


@pytest.fixture(scope="session")
def three_shards(tmp_path_factory) -> ShardSet:
    """90 samples in 3 shards: fewer shards than 2 ranks x 2 workers."""
    return ShardSet(str(tmp_path_factory.mktemp("three")), 90, 30, seed=1)


@pytest.fixture(scope="session")
def aspect_shards(tmp_path_factory) -> ShardSet:
    """160 samples in 4 shards, of about 32 x 32 pixels at width / height 1/2, 3/4, 1, 4/3 and 2."""
    return ShardSet(
        str(tmp_path_factory.mktemp("aspects")), 160, 40, seed=2, aspects=(0.5, 0.75, 1, 4 / 3, 2)
    )
