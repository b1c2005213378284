"""Generate one image per caption and measure the set: the body of launch/evaluate.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from zsnr.evaluation.images import save_png, to_uint8
from zsnr.evaluation.metrics import ImageMetrics
from zsnr.sampling import SamplingSettings, generate
from zsnr.sampling.ranks import Ranks


def pick_captions(captions: list[str], num_images: int | None, seed: int = 0) -> list[str]:
    """`num_images` captions drawn without replacement (seeded), or all of them in order when None."""
    if num_images is None:
        return list(captions)
    if not 1 <= num_images <= len(captions):
        raise ValueError(
            f"num_images must be in 1..{len(captions)} (the captions in the file), got {num_images}"
        )
    return random.Random(seed).sample(list(captions), num_images)


def generate_and_measure(
    model,
    captions: list[str],
    settings: SamplingSettings,
    metrics: ImageMetrics,
    out_dir: str | Path,
    batch_size: int = 16,
    seed: int = 0,
    save_images: int = 64,
    progress: bool = True,
    ranks: Ranks = Ranks(),
) -> dict | None:
    """Image i is generated from captions[i] with seed + i, so every run of a sweep sees the same prompts
    and x_T. The first `save_images` images (-1: all) go to out_dir/images/ with index.json.

    On several processes each rank makes its share of the batches (Ranks.batches) and saves its own images;
    the metrics' inputs are gathered in image order, and rank 0 computes the metrics and returns them (the
    other ranks return None): the same numbers as one process."""
    out_dir = Path(out_dir)
    keep = len(captions) if save_images < 0 else min(save_images, len(captions))
    batches = ranks.batches(len(captions), batch_size)
    if progress and ranks.is_main:
        from tqdm.auto import tqdm

        batches = tqdm(
            batches, desc=f"evaluate: {len(captions)} images on {ranks.world_size} ranks", unit="batch"
        )
    index, made = [], []
    for batch in batches:
        caps = [captions[i] for i in batch]
        seeds = [seed + i for i in batch]
        images = to_uint8(generate(model, caps, seeds, settings, batch_size, progress=False))
        metrics.update(images, caps)
        made.extend(batch)
        for i, image in zip(batch, images, strict=True):
            if i < keep:
                save_png(image, out_dir / "images" / f"{i:05d}.png")
                index.append({"file": f"{i:05d}.png", "caption": captions[i], "seed": seed + i})
    index = sorted(ranks.gather_objects(index), key=lambda entry: entry["file"])
    state = ranks.gather(metrics.state(), torch.tensor(made, dtype=torch.int64))
    if not ranks.is_main:
        return None
    if index:
        (out_dir / "images" / "index.json").write_text(json.dumps(index, indent=1))
    metrics.load(state)
    return metrics.compute()
