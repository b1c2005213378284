"""Callbacks: what the training step should not carry (metrics, sample images, the non-finite guard)."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from zsnr.models.pipeline import mean_brightness


def _log(trainer: pl.Trainer, metrics: dict[str, float]) -> None:
    """Straight to every logger at the optimizer step (rank 0 only), independent of log_every_n_steps."""
    if trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


def grad_norm(parameters: Any) -> torch.Tensor:
    """Total L2 norm of the gradients (full norm across FSDP2 shards; every rank must call it)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norm = torch.nn.utils.get_total_norm(grads)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


class NonFiniteGuard(pl.Callback):
    """A non-finite loss or gradient never reaches the weights: the step is skipped and counted, and after
    `max_consecutive` bad batches in a row training stops with an error. Also logs the gradient norm."""

    def __init__(self, max_consecutive: int = 10) -> None:
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0
        self._bad_grads = False

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm = grad_norm(params)
        if not torch.isfinite(norm):
            for p in params:
                p.grad = None  # AdamW leaves parameters without gradients untouched
            self._bad_grads = True
        _log(trainer, {"train/grad_norm": float(norm)})

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args
    ) -> None:
        skipped = not isinstance(outputs, dict) or outputs.get("loss") is None  # Lightning passes {} for None
        bad = skipped or self._bad_grads
        self._bad_grads = False
        if not bad:
            self.consecutive = 0
            return
        self.skipped += 1
        self.consecutive += 1
        _log(trainer, {"train/skipped_batches": float(self.skipped)})
        if self.consecutive >= self.max_consecutive:
            raise RuntimeError(
                f"{self.consecutive} batches in a row had a non-finite loss or gradient (step "
                f"{trainer.global_step}, {self.skipped} skipped in all); stopping. Lower the learning rate, check "
                "the data (batch stats) and the precision setting, then resume from the last checkpoint."
            )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped, self.consecutive = int(state_dict["skipped"]), int(state_dict["consecutive"])


class TrainMetrics(pl.Callback):
    """Every `every_n_steps` optimizer steps: loss by timestep bucket, lr, throughput (images/s); where the
    output is not a terminal (a SLURM log, a pipe) also one line `step N/M  loss ...` on stdout."""

    def __init__(self, images_per_step: int, every_n_steps: int = 10, buckets: int = 10) -> None:
        self.images_per_step = images_per_step
        self.every_n_steps = every_n_steps
        self.buckets = buckets
        self._reset(time.perf_counter(), 0)

    def _reset(self, now: float, step: int) -> None:
        self._sums = torch.zeros(self.buckets, dtype=torch.float64)
        self._counts = torch.zeros(self.buckets, dtype=torch.float64)
        self._since, self._since_step = now, step

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset(time.perf_counter(), trainer.global_step)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args
    ) -> None:
        if isinstance(outputs, dict) and "per_sample_loss" in outputs:
            T = pl_module.schedule.num_timesteps
            bucket = (outputs["timesteps"].cpu() * self.buckets // T).long()
            self._sums.index_add_(0, bucket, outputs["per_sample_loss"].double().cpu())
            self._counts.index_add_(0, bucket, torch.ones_like(bucket, dtype=torch.float64))
        step = trainer.global_step
        if step == self._since_step or step % self.every_n_steps:
            return
        now = time.perf_counter()
        seconds = (now - self._since) / (step - self._since_step)
        metrics = {
            "train/step_time_s": seconds,
            "train/images_per_s": self.images_per_step / seconds,
            "train/lr": trainer.optimizers[0].param_groups[0]["lr"],
        }
        width = pl_module.schedule.num_timesteps // self.buckets
        for i in range(self.buckets):
            if self._counts[i] > 0:
                metrics[f"train/loss_t{i * width:04d}"] = float(self._sums[i] / self._counts[i])
        _log(trainer, metrics)
        if trainer.is_global_zero and not sys.stdout.isatty():  # logs and pipes: no live progress bar there
            loss = float(self._sums.sum() / self._counts.sum()) if self._counts.sum() else float("nan")
            print(f"step {step}/{trainer.max_steps}  loss {loss:.4f}  {metrics['train/images_per_s']:.1f} "
                  f"images/s  lr {metrics['train/lr']:.2e}", flush=True)  # fmt: skip
        self._reset(now, step)


class SampleGrid(pl.Callback):
    """Every `every_n_steps` and at the end: EMA samples for fixed prompts and seeds, saved as a PNG grid with
    a JSON of each image's mean brightness, logged (images to wandb, brightness as metrics to every logger)."""

    def __init__(
        self,
        dirpath: str,
        prompts: list[str],
        seeds: list[int],
        every_n_steps: int = 1000,
        num_steps: int = 25,
        guidance_scale: float = 7.5,
        guidance_rescale: float | None = None,
    ) -> None:
        self.dirpath = Path(dirpath)
        self.pairs = [(p, int(s)) for p in prompts for s in seeds]
        self.every_n_steps = every_n_steps
        self.kwargs = {
            "num_steps": num_steps,
            "guidance_scale": guidance_scale,
            "guidance_rescale": guidance_rescale,
        }
        self._done = -1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step and step % self.every_n_steps == 0 and step != self._done:
            self.run(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._done:
            self.run(trainer, pl_module)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[float]:
        """Every rank samples (a sharded EMA needs them all); rank 0 writes and logs."""
        from torchvision.utils import save_image

        step, self._done = trainer.global_step, trainer.global_step
        prompts, seeds = [p for p, _ in self.pairs], [s for _, s in self.pairs]
        images = pl_module.sample_images(prompts, seeds, **self.kwargs).cpu()
        brightness = mean_brightness(images).tolist()
        if not trainer.is_global_zero:
            return brightness
        self.dirpath.mkdir(parents=True, exist_ok=True)
        stem = self.dirpath / f"step={step:06d}"
        per_row = max(1, len(self.pairs) // len(set(prompts)))
        save_image((images + 1) / 2, f"{stem}.png", nrow=per_row, padding=1)
        rows = [
            {"prompt": p, "seed": s, "brightness": b}
            for (p, s), b in zip(self.pairs, brightness, strict=True)
        ]
        Path(f"{stem}.json").write_text(json.dumps({"step": step, **self.kwargs, "images": rows}, indent=1))
        _log(
            trainer,
            {f"samples/brightness/{_slug(r['prompt'])}_seed{r['seed']}": r["brightness"] for r in rows},
        )
        captions = [f"{r['prompt']} (seed {r['seed']}): brightness {r['brightness']:+.3f}" for r in rows]
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # WandbLogger
                logger.log_image("samples", list((images + 1) / 2), step=step, caption=captions)
        return brightness


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40]
