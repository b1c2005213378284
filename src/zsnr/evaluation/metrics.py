"""All metrics of a generated image set in one call: FID, IS, CLIP score and brightness statistics."""

from __future__ import annotations

import torch
from torch import nn

from zsnr.evaluation.brightness import brightness_stats, mean_brightness
from zsnr.evaluation.clip_score import CLIPScore
from zsnr.evaluation.fid import ReferenceStats, extract, frechet_distance, inception_score
from zsnr.evaluation.images import to_unit_range


def compute_metrics(
    images: torch.Tensor,
    captions: list[str] | None = None,
    extractor: nn.Module | None = None,
    reference: ReferenceStats | None = None,
    clip: CLIPScore | None = None,
    batch_size: int = 64,
    is_splits: int = 10,
    dark: float = -0.7,
    bright: float = 0.7,
    histogram_bins: int = 20,
    device: str | torch.device = "cpu",
) -> dict:
    """Metrics of uint8 images [N, 3, H, W] (as saved to PNG).

    - brightness: always (with the reference's brightness and its Wasserstein distance when `reference` is set);
    - fid: with `extractor` and `reference` (statistics from the same extractor, see reference_statistics);
    - inception_score / inception_score_std: when the extractor also returns logits;
    - clip_score: with `clip` and `captions` (one per image).
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"metrics take uint8 images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}")
    n = images.shape[0]
    batches = [images[i : i + batch_size] for i in range(0, n, batch_size)]
    out: dict = {"num_images": n}
    if extractor is not None:
        feats, logits, light = extract(extractor, batches, device)
        if reference is not None:
            out["fid"] = frechet_distance(reference, feats)
            out["fid_reference_images"] = reference.num_samples
        if logits is not None:
            out["inception_score"], out["inception_score_std"] = inception_score(
                logits, splits=min(is_splits, n)
            )
    else:
        light = torch.cat([mean_brightness(to_unit_range(b)) for b in batches])
    if clip is not None:
        if captions is None:
            raise ValueError("the CLIP score needs the captions the images were generated from")
        scores = [
            clip.per_image(images[i : i + batch_size], captions[i : i + batch_size])
            for i in range(0, n, batch_size)
        ]
        out["clip_score"] = float(torch.cat(scores).mean())
    ref_light = reference.brightness if reference is not None else None
    out["brightness"] = brightness_stats(light, ref_light, dark, bright, histogram_bins)
    return out
