"""Callbacks: what the training step should not carry (metrics, data statistics, sample images).

They read what the latest step did from DiffusionModule.last_step (zsnr.training.step.StepResult) and act
after applied steps only (every_n_steps: a step skipped for a non-finite loss is not one).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar

from zsnr.data import WebDataModule, summary_line
from zsnr.data.position import StreamState
from zsnr.sampling import DTYPES, mean_brightness, resolve_dtype
from zsnr.training.step import every_n_steps

log = logging.getLogger("zsnr.train")


def log_metrics(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Straight to every logger at the optimizer step (rank 0 only), independent of log_every_n_steps."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


class TrainMetrics(pl.Callback):
    """Every `every_n_steps` optimizer steps: the loss (mean over the interval, and by timestep bucket), lr,
    throughput (images/s), the gradient norm and the count of skipped steps; where the output is not a
    terminal (a SLURM log, a pipe) also one line `step N/M  loss ...` on stdout."""

    def __init__(self, images_per_step: int, every_n_steps: int = 10, buckets: int = 10) -> None:
        self.images_per_step = images_per_step
        self.every_n_steps = every_n_steps
        self.buckets = buckets
        self.last_loss: float | None = None  # the latest interval's mean loss, for the progress bar
        self._reset(time.perf_counter(), 0)

    def _reset(self, now: float, step: int) -> None:
        self._sums = torch.zeros(self.buckets, dtype=torch.float64)
        self._counts = torch.zeros(self.buckets, dtype=torch.float64)
        self._since, self._since_step = now, step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset(time.perf_counter(), trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        result = pl_module.last_step
        if result is not None:
            # summed where the loss is (no device-to-host copy, so no wait for the step, until a log line)
            T, device = pl_module.schedule.num_timesteps, result.per_sample_loss.device
            if self._sums.device != device:
                self._sums, self._counts = self._sums.to(device), self._counts.to(device)
            bucket = result.timesteps * self.buckets // T
            self._sums.index_add_(0, bucket, result.per_sample_loss.double())
            self._counts.index_add_(0, bucket, torch.ones_like(bucket, dtype=torch.float64))
        step = trainer.global_step
        if not every_n_steps(result, step, self.every_n_steps) or step == self._since_step:
            return
        now = time.perf_counter()
        seconds = (now - self._since) / (step - self._since_step)
        metrics = {
            "train/step_time_s": seconds,
            "train/images_per_s": self.images_per_step / seconds,
            "train/lr": trainer.optimizers[0].param_groups[0]["lr"],
            "train/grad_norm": float(result.grad_norm),
            "train/skipped_steps": float(pl_module.skips.skipped),
        }
        width = pl_module.schedule.num_timesteps // self.buckets
        sums, counts = self._sums.tolist(), self._counts.tolist()
        for i in range(self.buckets):
            if counts[i] > 0:
                metrics[f"train/loss_t{i * width:04d}"] = sums[i] / counts[i]
        loss = sum(sums) / sum(counts) if sum(counts) else float("nan")
        metrics["train/loss"] = loss  # the mean over the interval's samples (this rank's)
        log_metrics(trainer, metrics)
        self.last_loss = loss
        if trainer.is_global_zero and not sys.stdout.isatty():  # logs and pipes: no live progress bar there
            print(f"step {step}/{trainer.max_steps}  loss {loss:.4f}  {metrics['train/images_per_s']:.1f} "
                  f"images/s  lr {metrics['train/lr']:.2e}", flush=True)  # fmt: skip
        self._reset(now, step)


class ProgressBar(TQDMProgressBar):
    """Lightning's live bar, showing TrainMetrics' latest interval loss. Not through self.log: Lightning keeps a
    logged value as a tensor on the module's device and reads it back for the bar at every batch, a device
    sync per step."""

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        losses = [c.last_loss for c in trainer.callbacks if isinstance(c, TrainMetrics)]
        if losses and losses[0] is not None:
            metrics["train/loss"] = f"{losses[0]:.4f}"
        return metrics


class DataStatsLogger(pl.Callback):
    """The data counters (WebDataModule.stats: seen, accepted, rejected/<filter>, bad/<kind>; cumulative,
    restored on resume) as data/<name> metrics summed over ranks every `every_n_steps` optimizer steps, and
    at every checkpoint one line on the log with the totals of all ranks."""

    def __init__(self, every_n_steps: int = 50):
        self.every_n_steps = every_n_steps

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx
    ) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, WebDataModule):
            return
        if every_n_steps(pl_module.last_step, trainer.global_step, self.every_n_steps):
            names = sorted(datamodule.stats)  # every rank has every counter (DataStats starts them all at 0)
            counts = torch.tensor(
                [datamodule.stats[n] for n in names], dtype=torch.float64, device=pl_module.device
            )
            total = trainer.strategy.reduce(counts, reduce_op="sum").tolist()
            log_metrics(trainer, {f"data/{name}": count for name, count in zip(names, total, strict=True)})

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Collective, like the datamodule's state_dict it calls: every rank saves, every rank takes part."""
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, WebDataModule):
            return
        state = datamodule.state_dict()  # every rank's counts, gathered
        if state and trainer.is_global_zero:
            totals = StreamState.from_dict(state).stats(rank=0, world=1)  # all ranks' counts to one
            log.info("data at step %d (all ranks): %s", trainer.global_step, summary_line(totals))


class SampleGrid(pl.Callback):
    """Every `every_n_steps` and at the end: samples for fixed prompts and seeds from each of `weights` ("ema":
    the average, what export and evaluation use; "online": the weights being trained, which is what shows
    progress while a slow EMA, e.g. 0.9999 without warmup, is still mostly the starting model), saved as
    labelled PNG grids (step=NNNNNN_ema.png, step=NNNNNN_online.png) with a JSON of each image's mean
    brightness, and logged: images to wandb, brightness as samples/<weights>/brightness/... to every logger.
    `dtype` is the networks' compute dtype (zsnr.sampling: "auto" is bfloat16 on CUDA, float32 on a CPU);
    the EMA itself stays float32."""

    def __init__(
        self,
        dirpath: str,
        prompts: list[str],
        seeds: list[int],
        every_n_steps: int = 1000,
        num_steps: int = 25,
        guidance_scale: float = 7.5,
        guidance_rescale: float | None = None,
        weights: Sequence[str] = ("ema", "online"),
        dtype: str = "auto",
    ) -> None:
        unknown = set(weights) - {"ema", "online"}
        if unknown or not weights:
            raise ValueError(
                f"samples.weights must be a non-empty list of 'ema' / 'online', got {list(weights)}"
            )
        self.dirpath = Path(dirpath)
        self.pairs = [(p, int(s)) for p in prompts for s in seeds]
        self.every_n_steps = every_n_steps
        self.weights = list(weights)
        resolve_dtype(dtype, "cpu")  # a bad name fails here, before training starts
        self.dtype = dtype
        self.kwargs = {
            "num_steps": num_steps,
            "guidance_scale": guidance_scale,
            "guidance_rescale": guidance_rescale,
        }
        self._done = -1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if every_n_steps(pl_module.last_step, step, self.every_n_steps) and step != self._done:
            self.run(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_steps and trainer.global_step != self._done:  # 0: no grids, the final one neither
            self.run(trainer, pl_module)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, list[float]]:
        """Every rank samples (a sharded model needs them all); rank 0 writes and logs. Returns the brightness
        of each image, per weights."""
        step, self._done = trainer.global_step, trainer.global_step
        prompts, seeds = [p for p, _ in self.pairs], [s for _, s in self.pairs]
        dtype = resolve_dtype(self.dtype, pl_module.device)
        out = {}
        for weights in self.weights:
            images = pl_module.sample_images(
                prompts, seeds, use_ema=weights == "ema", dtype=DTYPES[dtype], **self.kwargs
            ).cpu()
            out[weights] = mean_brightness(images).tolist()
            if trainer.is_global_zero:
                self._write(trainer, step, weights, dtype, images, out[weights])
        return out

    def _write(
        self,
        trainer: pl.Trainer,
        step: int,
        weights: str,
        dtype: str,
        images: torch.Tensor,
        brightness: list[float],
    ) -> None:
        from torchvision.utils import save_image

        self.dirpath.mkdir(parents=True, exist_ok=True)
        stem = self.dirpath / f"step={step:06d}_{weights}"
        per_row = max(1, len(self.pairs) // len({p for p, _ in self.pairs}))
        save_image((images + 1) / 2, f"{stem}.png", nrow=per_row, padding=1)
        rows = [
            {"prompt": p, "seed": s, "brightness": b}
            for (p, s), b in zip(self.pairs, brightness, strict=True)
        ]
        record = {"step": step, "weights": weights, **self.kwargs, "dtype": dtype, "images": rows}
        Path(f"{stem}.json").write_text(json.dumps(record, indent=1))
        log_metrics(
            trainer,
            {
                f"samples/{weights}/brightness/{_slug(r['prompt'])}_seed{r['seed']}": r["brightness"]
                for r in rows
            },
        )
        captions = [
            f"{weights}: {r['prompt']} (seed {r['seed']}): brightness {r['brightness']:+.3f}" for r in rows
        ]
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # WandbLogger
                logger.log_image(f"samples/{weights}", list((images + 1) / 2), step=step, caption=captions)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40]
