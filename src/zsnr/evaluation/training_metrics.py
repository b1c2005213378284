"""Generation metrics while training: the curve that shows when the fix takes hold.

`GenerationMetrics` is a Lightning callback (configs/callbacks/with_metrics.yaml; off by default) that every
`every_n_steps` optimizer steps generates images for a fixed held-out caption set, image i with seed + i, split
over all ranks as launch/evaluate.py splits them (zsnr.sampling.ranks), and measures them as evaluate does
(zsnr.evaluation.metrics.ImageMetrics): FID against the reference images, the CLIP score, and the brightness
distribution with its Wasserstein-1 distance to the reference's, the paper's headline (a model that cannot make
dark or bright images has a brightness distribution squeezed towards the middle).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from zsnr.evaluation.clip_score import CLIPScore
from zsnr.evaluation.fid import ReferenceStats, reference_statistics
from zsnr.evaluation.images import to_uint8
from zsnr.evaluation.metrics import ImageMetrics
from zsnr.sampling import DTYPES, read_prompts, resolve_dtype
from zsnr.sampling.ranks import Ranks
from zsnr.training.callbacks import log_metrics
from zsnr.training.step import every_n_steps

# What is logged, as eval/<name>, from ImageMetrics.compute()'s result.
BRIGHTNESS = {"mean": "brightness_mean", "std": "brightness_std", "frac_dark": "frac_dark",
              "frac_bright": "frac_bright", "wasserstein_to_reference": "brightness_w1"}  # fmt: skip
SCALARS = ("fid", "clip_score", "inception_score")


def flatten(result: dict) -> dict[str, float]:
    """ImageMetrics.compute()'s result as eval/<name> scalars."""
    out = {f"eval/{k}": float(result[k]) for k in SCALARS if k in result}
    light = result["brightness"]
    out |= {f"eval/{name}": float(light[k]) for k, name in BRIGHTNESS.items() if k in light}
    return out


class GenerationMetrics(pl.Callback):
    """Every `every_n_steps` applied optimizer steps and at step 0: `captions` (a list, or a file as
    launch/evaluate.py reads them), the first `num_images` of them (all: None), sampled with the EMA (or the
    online) UNet in batches of `batch_size` on every rank, measured and logged by rank 0 (eval/fid,
    eval/clip_score, eval/brightness_mean, eval/brightness_w1, ...). `feature_extractor` and `reference_dir`
    give FID and the reference brightness (statistics cached in `reference_cache`), `clip` the CLIP score;
    each is optional. Collective: every rank runs it (a sharded UNet needs them all)."""

    def __init__(
        self,
        captions: list[str] | str,
        every_n_steps: int = 1000,
        num_images: int | None = None,
        seed: int = 0,
        batch_size: int = 8,
        num_steps: int = 25,
        guidance_scale: float = 7.5,
        guidance_rescale: float | None = None,
        use_ema: bool = True,
        dtype: str = "auto",
        feature_extractor: nn.Module | None = None,
        clip: CLIPScore | None = None,
        reference_dir: str | None = None,
        reference_cache: str = "outputs/cache/fid_reference",
        dark: float = -0.7,
        bright: float = 0.7,
        histogram_bins: int = 20,
    ) -> None:
        captions = read_prompts(captions) if isinstance(captions, str | Path) else list(captions)
        self.captions = captions[:num_images] if num_images is not None else captions
        if len(self.captions) < 2:
            raise ValueError(f"generation metrics need at least 2 captions, got {len(self.captions)}")
        if reference_dir is not None and feature_extractor is None:
            raise ValueError("reference_dir is set but feature_extractor is None: FID needs both")
        resolve_dtype(dtype, "cpu")  # a bad name fails here, before training starts
        self.every_n_steps, self.seed, self.batch_size, self.use_ema, self.dtype = (
            every_n_steps, seed, batch_size, use_ema, dtype,
        )  # fmt: skip
        self.sampling = {"num_steps": num_steps, "guidance_scale": guidance_scale,
                         "guidance_rescale": guidance_rescale}  # fmt: skip
        self.extractor, self.clip = feature_extractor, clip
        self.reference_dir, self.reference_cache = reference_dir, reference_cache
        self.brightness = {"dark": dark, "bright": bright, "histogram_bins": histogram_bins}
        self.reference: ReferenceStats | None = None
        self.last: dict[str, float] = {}
        self._done = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.every_n_steps:
            return
        if self.clip is not None:
            self.clip.model.to(pl_module.device)
        if self.reference_dir is not None and trainer.is_global_zero:  # only rank 0 computes the metrics
            self.reference, _, _ = reference_statistics(
                self.reference_dir, self.extractor, pl_module.resolution, self.reference_cache,
                device=pl_module.device,
            )  # fmt: skip
        if trainer.global_step == 0:
            self.run(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if every_n_steps(pl_module.last_step, step, self.every_n_steps) and step != self._done:
            self.run(trainer, pl_module)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Collective. Returns the logged metrics on rank 0, {} on the others."""
        self._done = trainer.global_step
        ranks = Ranks(trainer.global_rank, trainer.world_size, trainer.local_rank)
        metrics = ImageMetrics(self.extractor, self.reference, self.clip, device=pl_module.device,
                               **self.brightness)  # fmt: skip
        mine = ranks.batches(len(self.captions), self.batch_size)
        rounds = math.ceil(math.ceil(len(self.captions) / self.batch_size) / ranks.world_size)
        dtype = DTYPES[resolve_dtype(self.dtype, pl_module.device)]
        made = []
        for k in range(rounds):  # the same number of sampling calls on every rank: a sharded UNet needs it
            batch = mine[k] if k < len(mine) else range(0, 1)  # a stand-in, made and dropped
            caps = [self.captions[i] for i in batch]
            images = pl_module.sample_images(caps, [self.seed + i for i in batch], use_ema=self.use_ema,
                                             dtype=dtype, **self.sampling)  # fmt: skip
            if k < len(mine):
                metrics.update(to_uint8(images), caps)
                made.extend(batch)
        state = ranks.gather(metrics.state(), torch.tensor(made, dtype=torch.int64))
        if not ranks.is_main:
            return {}
        metrics.load(state)
        self.last = flatten(metrics.compute())
        log_metrics(trainer, self.last)
        return self.last
