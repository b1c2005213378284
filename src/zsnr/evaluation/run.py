"""Generate one image per caption and measure the set: the body of launch/evaluate.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

from zsnr.evaluation.images import save_png, to_uint8
from zsnr.evaluation.metrics import ImageMetrics
from zsnr.sampling import SamplingSettings, generate


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
) -> dict:
    """Image i is generated from captions[i] with seed + i, so every run of a sweep sees the same prompts
    and x_T. The first `save_images` images (-1: all) go to out_dir/images/ with index.json."""
    out_dir = Path(out_dir)
    keep = len(captions) if save_images < 0 else min(save_images, len(captions))
    chunks = range(0, len(captions), batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc=f"evaluate: {len(captions)} images", unit="batch")
    index = []
    for start in chunks:
        caps = captions[start : start + batch_size]
        seeds = [seed + start + j for j in range(len(caps))]
        images = to_uint8(generate(model, caps, seeds, settings, batch_size, progress=False))
        metrics.update(images, caps)
        for j, image in enumerate(images):
            if start + j < keep:
                name = f"{start + j:05d}.png"
                save_png(image, out_dir / "images" / name)
                index.append({"file": name, "caption": caps[j], "seed": seeds[j]})
    if index:
        (out_dir / "images" / "index.json").write_text(json.dumps(index, indent=1))
    return metrics.compute()
