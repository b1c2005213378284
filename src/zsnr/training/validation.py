"""Validation loss: held-out batches at fixed timesteps and fixed noise, so the curve compares across steps and
runs (the training loss draws new t and noise every step, which makes its curve noisy and run-specific)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl

from zsnr.training.callbacks import log_metrics
from zsnr.training.step import every_n_steps


def fixed_timesteps(num_timesteps: int, buckets: int) -> list[int]:
    """One timestep per bucket of width T / buckets, each bucket's last: T - 1 (SNR 0 under the rescaled
    schedule, the step the paper's fix is about) is always one of them. T=1000, 10: 999, 899, ..., 99."""
    if not 1 <= buckets <= num_timesteps:
        raise ValueError(f"validation buckets must be in 1..{num_timesteps}, got {buckets}")
    width = num_timesteps // buckets
    return [num_timesteps - 1 - k * width for k in range(buckets)]


class ValidationLoss(pl.Callback):
    """Every `every_n_steps` optimizer steps and at step 0: the loss of the online UNet on the first
    `num_batches` held-out batches (the datamodule's val_batches(n), e.g. WebDataModule's) at fixed_timesteps(T, buckets), with the noise
    and posterior samples keyed on (seed, batch) only. Logged: val/loss (the mean over timesteps) and
    val/loss_t0999 ... per timestep, summed over ranks (each rank takes a share of the batches). The batches
    and noise do not depend on the step, the rank count or a resume, so a resumed run logs what the straight
    run logs."""

    def __init__(self, every_n_steps: int = 100, num_batches: int = 4, buckets: int = 10, seed: int = 0):
        self.every_n_steps, self.num_batches, self.buckets, self.seed = (
            every_n_steps,
            num_batches,
            buckets,
            seed,
        )
        self.batches: list[dict[str, Any]] | None = None
        self.last: dict[str, float] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.every_n_steps:
            return
        datamodule = getattr(trainer, "datamodule", None)
        if not getattr(datamodule, "has_val_data", False):  # WebDataModule: data.val_urls / val_synthetic
            raise ValueError(
                "ValidationLoss needs a datamodule with held-out data (has_val_data, val_batches(n)): set "
                "data.val_urls, or validation.every_n_steps=0"
            )
        self.batches = datamodule.val_batches(self.num_batches)
        if trainer.global_step == 0:
            self.run(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if every_n_steps(pl_module.last_step, trainer.global_step, self.every_n_steps):
            self.run(trainer, pl_module)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Collective: every rank calls it."""
        timesteps = fixed_timesteps(pl_module.schedule.num_timesteps, self.buckets)
        sums, counts = pl_module.fixed_timestep_losses(self.batches, timesteps, self.seed)
        sums = trainer.strategy.reduce(sums, reduce_op="sum")
        counts = trainer.strategy.reduce(counts, reduce_op="sum")
        per_t = (sums / counts).tolist()
        metrics = {f"val/loss_t{t:04d}": loss for t, loss in zip(timesteps, per_t, strict=True)}
        metrics["val/loss"] = sum(per_t) / len(per_t)
        log_metrics(trainer, metrics)
        self.last = metrics
        return metrics
