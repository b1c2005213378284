"""One sample's way through a worker: raw tar members -> record -> decoded item -> batch.

`scan` runs the cheap checks on raw bytes and the json filters (no decoding), `decode` makes the image crop
(or loads the latent posterior), `collate` stacks items of one shape. The stream (zsnr.data.stream) owns the
counters and positions; these only update the counters they are handed. `reread` brings back samples a
saved position says were buffered (zsnr.data.buckets), without counting them again.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch

from zsnr.data import latents
from zsnr.data.buckets import Size
from zsnr.data.decode import IMAGE_EXTS, decode_crop, first_member, read_caption, read_metadata
from zsnr.data.filters import LaionFilter
from zsnr.data.http_shards import HttpOptions
from zsnr.data.shards import BadData, read_shard
from zsnr.data.stats import DataStats

log = logging.getLogger("zsnr.data")
Tokenizer = Callable[[list[str]], torch.Tensor]


class SampleReader:
    """decode="images": an image member, json filters, a crop to the nearest of `sizes` ((w, h) each).
    decode="latents": a latent-cache member (zsnr.data.latents), filtered on caption only."""

    def __init__(
        self,
        decode: str,
        filters: LaionFilter,
        sizes: Sequence[Size],
        random_crop: bool = False,
        random_flip: bool = False,
    ):
        self.decode_mode, self.filters, self.sizes = decode, filters, tuple(sizes)
        self.random_crop, self.random_flip = random_crop, random_flip

    def scan(self, sample: dict[str, Any], stats: DataStats, on_bad: Callable) -> dict[str, Any] | None:
        """Cheap checks on raw bytes and json: returns a record to shuffle, or None (counted)."""
        stats.seen()
        try:
            if self.decode_mode == "images":
                ext = first_member(sample, IMAGE_EXTS)
                if ext is None:
                    raise BadData(
                        "missing_image",
                        f"no image member among {sorted(k for k in sample if not k.startswith('__'))}",
                    )
                if len(sample[ext]) == 0:
                    raise BadData("empty_member", f"zero-byte .{ext}")
                payload: Any = sample[ext]
            else:
                payload = sample.get(latents.MEMBER)
                if payload is None:
                    raise BadData(
                        "missing_latent",
                        f"no .{latents.MEMBER} member among {sorted(k for k in sample if not k.startswith('__'))} "
                        "(launch/encode_latents.py writes them)",
                    )
            required = self.decode_mode == "images" and self.filters.needs_metadata
            meta = read_metadata(sample, required=required)
            caption = read_caption(sample, meta)
        except BadData as exn:
            on_bad(exn.kind, sample["__url__"], f"{sample['__key__']}: {exn}")
            return None
        reason = self.filters.check(meta, caption)
        if reason is not None:
            stats.rejected(reason)
            return None
        stats.accepted()
        return {"key": sample["__key__"], "url": sample["__url__"], "caption": caption, "payload": payload}

    def decode(self, record: dict[str, Any], seed: str) -> dict[str, Any]:
        """The item: the record without its bytes, plus tensors. Augmentations are drawn from a generator keyed
        on (seed, the sample's cursor), so decoding a sample again gives the same item."""
        item = {k: v for k, v in record.items() if k != "payload"}
        if self.decode_mode == "latents":
            return {**item, **latents.decode_sample(record["payload"])}
        ordinal, index = record["cursor"]
        rng = random.Random(f"zsnr-augment/{seed}/{ordinal}/{index}")
        crop = decode_crop(record["payload"], self.sizes, self.random_crop, self.random_flip, rng)
        return {
            **item,
            "image": crop.image,
            "original_size": torch.tensor(crop.original_size),
            "crop_top_left": torch.tensor(crop.crop_top_left),
        }

    def reread(
        self, cursors: Sequence[Sequence[int]], url_of: Callable[[int], str], http: HttpOptions, seed: str
    ) -> list[dict[str, Any]]:
        """The items at `cursors` ([ordinal, index in the shard]), decoded as before and in that order: each
        shard is read once, up to the last index wanted, and nothing is counted (the counts that came with
        the saved batches already hold them). A sample that cannot be read again is left out, with a warning."""
        wanted: dict[int, set[int]] = {}
        for ordinal, index in cursors:
            wanted.setdefault(ordinal, set()).add(index)
        found: dict[tuple[int, int], dict[str, Any]] = {}
        uncounted = DataStats()

        def ignore(*args: Any) -> None:
            pass

        for ordinal, indices in wanted.items():
            last = max(indices)
            for index, sample in enumerate(read_shard(url_of(ordinal), ignore, ignore, http)):
                record = self.scan(sample, uncounted, ignore) if index in indices else None
                if record is not None:
                    record["cursor"] = (ordinal, index)
                    try:
                        found[(ordinal, index)] = self.decode(record, seed)
                    except BadData:
                        pass
                if index >= last:
                    break
        lost = [list(c) for c in cursors if tuple(c) not in found]
        if lost:
            log.warning(
                "%d buffered sample(s) of the saved position could not be read again (shard ordinal, index: %s); "
                "the resumed stream goes on without them",
                len(lost),
                lost[:5],
            )
        return [found[tuple(c)] for c in cursors if tuple(c) in found]


def collate(items: list[dict[str, Any]], tokenizer: Tokenizer | None) -> dict[str, Any]:
    """Keys and captions as lists, every tensor stacked (items of one bucket: same shapes), token ids."""
    batch: dict[str, Any] = {"key": [i["key"] for i in items], "caption": [i["caption"] for i in items]}
    for name, value in items[0].items():
        if isinstance(value, torch.Tensor):
            batch[name] = torch.stack([i[name] for i in items])
    if tokenizer is not None:
        batch["input_ids"] = tokenizer(batch["caption"])
    return batch
