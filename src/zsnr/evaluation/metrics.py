"""All metrics of a generated image set: FID, IS, CLIP score and brightness statistics, fed batch by batch
(10k generated images never need to be in memory at once; only their features are)."""

from __future__ import annotations

import torch
from torch import nn

from zsnr.evaluation.brightness import brightness_stats
from zsnr.evaluation.clip_score import CLIPScore
from zsnr.evaluation.fid import ReferenceStats, extract, frechet_distance, inception_score


class ImageMetrics:
    """Accumulate uint8 batches [B, 3, H, W] (as saved to PNG), then `compute()`:

    - brightness: always (with the reference's brightness and the Wasserstein distance to it when
      `reference` is set);
    - fid: with `extractor` and `reference` (statistics from the same extractor: reference_statistics);
    - inception_score / inception_score_std: when the extractor also returns logits;
    - clip_score: with `clip` (each batch then needs its captions).
    """

    def __init__(
        self,
        extractor: nn.Module | None = None,
        reference: ReferenceStats | None = None,
        clip: CLIPScore | None = None,
        is_splits: int = 10,
        dark: float = -0.7,
        bright: float = 0.7,
        histogram_bins: int = 20,
        device: str | torch.device = "cpu",
    ) -> None:
        self.extractor, self.reference, self.clip = extractor, reference, clip
        self.is_splits, self.dark, self.bright, self.bins, self.device = (
            is_splits,
            dark,
            bright,
            histogram_bins,
            device,
        )
        self._feats: list[torch.Tensor] = []
        self._logits: list[torch.Tensor] = []
        self._light: list[torch.Tensor] = []
        self._clip: list[torch.Tensor] = []

    def update(self, images: torch.Tensor, captions: list[str] | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"metrics take uint8 images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        net = self.extractor if self.extractor is not None else nn.Identity()
        feats, logits, light = extract(net, [images], self.device)
        self._light.append(light)
        if self.extractor is not None:
            self._feats.append(feats)
            if logits is not None:
                self._logits.append(logits)
        if self.clip is not None:
            if captions is None:
                raise ValueError("the CLIP score needs the captions the images were generated from")
            self._clip.append(self.clip.per_image(images, captions))

    def state(self) -> dict[str, torch.Tensor]:
        """What `compute` reads, one row per image in update order: for gathering over ranks (`load`)."""
        parts = {
            "brightness": self._light,
            "features": self._feats,
            "logits": self._logits,
            "clip": self._clip,
        }
        return {name: torch.cat(rows) for name, rows in parts.items() if rows}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Replace what was accumulated with `state` (e.g. every rank's, gathered in image order)."""
        self._light, self._feats, self._logits, self._clip = (
            [state[name]] if name in state else [] for name in ("brightness", "features", "logits", "clip")
        )

    def compute(self) -> dict:
        if not self._light:
            raise ValueError("no images were given to the metrics")
        light = torch.cat(self._light)
        out: dict = {"num_images": light.numel()}
        if self._feats and self.reference is not None:
            out["fid"] = frechet_distance(self.reference, torch.cat(self._feats))
            out["fid_reference_images"] = self.reference.num_samples
        if self._logits:
            logits = torch.cat(self._logits)
            out["inception_score"], out["inception_score_std"] = inception_score(
                logits, splits=min(self.is_splits, logits.shape[0])
            )
        if self._clip:
            out["clip_score"] = float(torch.cat(self._clip).mean())
        ref_light = self.reference.brightness if self.reference is not None else None
        out["brightness"] = brightness_stats(light, ref_light, self.dark, self.bright, self.bins)
        return out


def compute_metrics(
    images: torch.Tensor, captions: list[str] | None = None, batch_size: int = 64, **kwargs
) -> dict:
    """ImageMetrics(**kwargs) over all of `images` (uint8 [N, 3, H, W]) at once."""
    metrics = ImageMetrics(**kwargs)
    for i in range(0, images.shape[0], batch_size):
        metrics.update(images[i : i + batch_size], None if captions is None else captions[i : i + batch_size])
    return metrics.compute()
