"""Turn your images into webdataset shards that data.urls can read (same layout as img2dataset's LAION).

  python launch/make_shards.py input=path/to/folder out=data/mine            # image + same-name .txt
  python launch/make_shards.py input=captions.csv out=data/mine samples_per_shard=5000
  python launch/make_shards.py synthetic=true out=data/synthetic num_samples=2048 resolution=64

A manifest (CSV or parquet) has a path column (path|image|file), a caption column (caption|text) and any
LAION fields as further columns (punsafe, pwatermark, aesthetic, ...). Prints the brace pattern to use as
data.urls.
"""

from __future__ import annotations

from dataclasses import dataclass

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from zsnr.data.manifest import make_shards
from zsnr.data.synthetic import SyntheticSet, make_synthetic_shards


@dataclass
class MakeShardsConfig:
    out: str = MISSING  # output folder
    input: str | None = None  # image folder, or a .csv / .parquet manifest
    samples_per_shard: int = 10000
    prefix: str = "shard"
    synthetic: bool = False  # write the synthetic set instead of reading `input`
    num_samples: int = 2048
    resolution: int = 64
    seed: int = 0


ConfigStore.instance().store(name="make_shards", node=MakeShardsConfig)


@hydra.main(version_base=None, config_name="make_shards")
def main(cfg: MakeShardsConfig) -> None:
    if cfg.synthetic:
        spec = SyntheticSet(cfg.num_samples, cfg.resolution, cfg.seed, cfg.samples_per_shard)
        pattern = make_synthetic_shards(cfg.out, spec)
    elif cfg.input is None:
        raise SystemExit("give input=<image folder or manifest.csv/.parquet> (or synthetic=true)")
    else:
        pattern = make_shards(cfg.input, cfg.out, cfg.samples_per_shard, cfg.prefix)
    print(pattern)


if __name__ == "__main__":
    main()
