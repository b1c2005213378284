"""zsnr.data: LAION-style webdataset shards -> filtered, decoded, resumable batches (see WebDataModule)."""

from zsnr.data.datamodule import WebDataModule, check_no_run_keys
from zsnr.data.decode import decode_image, to_model_range
from zsnr.data.filters import LaionFilter
from zsnr.data.shards import parse_sources, write_shards
from zsnr.data.stats import BadDataError, summary_line
from zsnr.data.stream import ShardStream
from zsnr.data.synthetic import SyntheticSet, ensure_synthetic_shards, make_synthetic_shards

__all__ = [
    "BadDataError",
    "LaionFilter",
    "ShardStream",
    "SyntheticSet",
    "WebDataModule",
    "check_no_run_keys",
    "decode_image",
    "ensure_synthetic_shards",
    "make_synthetic_shards",
    "parse_sources",
    "summary_line",
    "to_model_range",
    "write_shards",
]
