"""The two training loops that tests/bench/gpu_train_step.py times, and how it times and counts them.

ours:  DiffusionModule.training_step through a pytorch_lightning Trainer built from configs/trainer/default.yaml
       (precision plugin; zsnr.training.step.train_step: the objective, clipping at 1.0, AdamW, the EMA) with the
       callbacks launch/train.py always adds (TrainMetrics, DataStatsLogger); batches from the latent cache, so
       no VAE.
plain: no Lightning, no callbacks, no EMA: a diffusers-style objective (train_text_to_image.py's shape:
       DDPMScheduler.add_noise / get_velocity, the same UNet under torch.autocast, MSE on v) through the same
       train_step (backward, clipping at 1.0, AdamW): the update exists once, so the two cannot drift.
Both read the same pinned latent batch each step (host to device, as from a DataLoader). Timing: the device is
synchronised after every step; warmup steps are left out; a step budget in seconds ends a run. `clock` is
time.perf_counter, or on a shared CPU time.process_time (the process's CPU seconds: robust to other jobs). FLOPs: the last
warmup step's forward + backward (the first encodes the empty caption once) under torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions,
attention: what MFU counts; the loss arithmetic and the optimizer are not counted).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, IterableDataset
from torch.utils.flop_counter import FlopCounterMode

from zsnr.models.unet import input_memory_format
from zsnr.training.step import OneProcess, Update, train_step

TRAINER_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "trainer" / "default.yaml"
ZERO_SNR = {"betas": "scaled_linear", "rescale_zero_terminal_snr": True, "prediction_type": "v_prediction"}


@dataclass(frozen=True)
class Variant:
    name: str
    loop: str = "ours"  # "ours" | "plain"
    latent: int = 64  # latent side: 64 = 512 px, 96 = 768 px for SD 2.1's 8x autoencoder
    batch: int = 8  # micro-batch per GPU
    precision: str = "bf16-mixed"  # "bf16-mixed" | "32-true" (Lightning's names; plain: autocast or not)
    attention: str = "sdpa"
    channels_last: bool = False
    compile: bool = False
    checkpointing: bool = False
    cudnn_benchmark: bool = False
    callbacks: bool = True  # ours: launch/train.py's per-step callbacks on
    count_flops: bool = False
    fused_adamw: bool = False  # torch's fused AdamW (no per-parameter host work)
    compile_objective: bool = (
        False  # ours: module.compile=loss (noise, UNet, loss in one graph); plain: its objective
    )
    cuda_graphs: bool = False  # with compile_objective: torch.compile's mode="reduce-overhead" (CUDA graphs)


@dataclass
class Timing:
    images_per_s: float
    step_ms: float
    steps: int
    peak_mem_gib: float | None
    flops: float | None  # forward + backward of one step (the whole micro-batch)


def latent_batch(batch: int, latent: int, text_dim: int, pin: bool) -> dict[str, torch.Tensor]:
    """A latent-cache batch as the data pipeline hands it over (zsnr.data.latents, decoded to float32 on the
    host): the SD VAE posterior (mean, std) and the text states."""
    g = torch.Generator().manual_seed(0)
    out = {
        "latent_mean": torch.randn(batch, 4, latent, latent, generator=g),
        "latent_std": torch.rand(batch, 4, latent, latent, generator=g) * 0.01,
        "text_states": torch.randn(batch, 77, text_dim, generator=g),
    }
    return {k: v.pin_memory() for k, v in out.items()} if pin else out


class Repeat(IterableDataset):
    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self.batch = batch

    def __iter__(self):
        while True:
            yield self.batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _timing(times: list[float], warmup: int, batch: int, device: torch.device, flops: float | None) -> Timing:
    steps = len(times) - warmup
    if steps < 1:
        raise RuntimeError(f"no timed steps: {len(times)} steps ran, {warmup} of them warmup")
    seconds = times[-1] - times[warmup - 1]
    return Timing(batch * steps / seconds, 1e3 * seconds / steps, steps, _peak_gib(device), flops)


def _done(times: list[float], warmup: int, seconds: float, max_steps: int) -> bool:
    timed = len(times) - warmup
    return timed >= max_steps or (timed >= 1 and seconds > 0 and times[-1] - times[warmup - 1] >= seconds)


class StepTimer(pl.Callback):
    """Synchronised end-of-step clock for the Trainer; counts the FLOPs of the last warmup step's fwd + bwd."""

    def __init__(self, warmup: int, seconds: float, max_steps: int, count_flops: bool,
                 clock: Callable[[], float] = time.perf_counter) -> None:  # fmt: skip
        self.warmup, self.seconds, self.max_steps, self.clock = warmup, seconds, max_steps, clock
        self.counter = FlopCounterMode(display=False) if count_flops else None
        self.counting = False
        self.flops: float | None = None
        self.times: list[float] = []

    def _stop_counting(self) -> None:
        if self.counting:
            self.counter.__exit__(None, None, None)
            self.counting, self.flops = False, float(self.counter.get_total_flops())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.counter is not None and batch_idx == self.warmup - 1:  # not the first: it encodes ""
            self.counter.__enter__()
            self.counting = True

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._stop_counting()  # forward + backward only

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._stop_counting()
        _sync(pl_module.device)
        self.times.append(self.clock())
        if _done(self.times, self.warmup, self.seconds, self.max_steps):
            trainer.should_stop = True

    def on_fit_end(self, trainer, pl_module) -> None:
        # Between rows, not timed: the teardown would copy AdamW's moments and the module (7 GB at SD 2.1 size)
        # to the host, and the next row would copy the module back. Drop the moments and the last gradients,
        # and let the module's .cpu() pass until run_ours removes this instance attribute again.
        for optimizer in trainer.optimizers:
            optimizer.state.clear()
        pl_module.zero_grad(set_to_none=True)
        pl_module.cpu = lambda: pl_module


def trainer_kwargs(accelerator: str) -> dict[str, Any]:
    """configs/trainer/default.yaml as launch/train.py instantiates it (read as plain YAML: no Hydra needed)."""
    cfg = yaml.safe_load(TRAINER_CONFIG.read_text())
    cfg.pop("_target_")
    cfg.update(accelerator=accelerator, devices=1, logger=False, enable_progress_bar=False)
    return cfg


def run_ours(module: pl.LightningModule, v: Variant, batch: dict, device: torch.device, warmup: int,
             seconds: float, max_steps: int, clock: Callable[[], float] = time.perf_counter) -> Timing:  # fmt: skip
    from zsnr.training import DataStatsLogger, TrainMetrics

    timer = StepTimer(warmup, seconds, max_steps, v.count_flops, clock)
    callbacks: list[pl.Callback] = [timer]
    if v.callbacks:
        callbacks += [TrainMetrics(v.batch), DataStatsLogger()]
    kwargs = trainer_kwargs("gpu" if device.type == "cuda" else "cpu")
    kwargs.update(precision=v.precision, benchmark=v.cudnn_benchmark, max_steps=warmup + max_steps)
    trainer = pl.Trainer(**kwargs, callbacks=callbacks)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        trainer.fit(module, DataLoader(Repeat(batch), batch_size=None))
    finally:
        module.__dict__.pop("cpu", None)  # StepTimer.on_fit_end's stand-in
    return _timing(timer.times, warmup, v.batch, device, timer.flops)


def plain_objective(unet: torch.nn.Module, scheduler, device: torch.device, bf16: bool):
    """A diffusers-style objective (train_text_to_image.py's shape) on a latent batch: per-sample MSE on v."""

    def objective(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        mean = batch["latent_mean"].to(device, non_blocking=True)
        latents = mean + batch["latent_std"].to(device, non_blocking=True) * torch.randn_like(
            mean
        )  # a sample
        text = batch["text_states"].to(device, non_blocking=True)
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=device)
        noisy = scheduler.add_noise(latents, noise, t).contiguous(memory_format=input_memory_format(unet))
        target = scheduler.get_velocity(latents, noise, t)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = unet(noisy, t, encoder_hidden_states=text).sample
        return F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3)), t

    return objective


def _compiled(objective, cuda_graphs: bool):
    """torch.compile'd; with CUDA graphs, each call starts a new graph step and copies its loss out of the
    graph's memory (the next replay overwrites it), as DiffusionModule does."""
    compiled = torch.compile(objective, mode="reduce-overhead" if cuda_graphs else None)
    if not cuda_graphs:
        return compiled

    def step(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        torch.compiler.cudagraph_mark_step_begin()
        loss, t = compiled(batch)
        return loss.clone(), t.clone()

    return step


class _CountForwardBackward(OneProcess):
    """One process, counting the FLOPs of the forward (entered by the caller) and the backward."""

    def __init__(self, counter: FlopCounterMode) -> None:
        self.counter = counter

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()
        self.counter.__exit__(None, None, None)


def plain_step(update: Update, objective, batch: dict, count: bool = False) -> float | None:
    """One step of the plain loop: train_step on `objective`; returns the FLOPs of forward + backward if
    `count`."""
    if not count:
        train_step(update, [batch], objective)
        return None
    counter = FlopCounterMode(display=False)
    counter.__enter__()
    train_step(update, [batch], objective, _CountForwardBackward(counter))
    return float(counter.get_total_flops())


def run_plain(unet: torch.nn.Module, v: Variant, batch: dict, device: torch.device, warmup: int,
              seconds: float, max_steps: int, clock: Callable[[], float] = time.perf_counter) -> Timing:  # fmt: skip
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        rescale_betas_zero_snr=True,
        prediction_type="v_prediction",
    )  # fmt: skip  (diffusion=zero_snr, diffusers' way)
    torch.backends.cudnn.benchmark = v.cudnn_benchmark
    unet.to(device).train()
    optimizer = torch.optim.AdamW(
        unet.parameters(), lr=1e-4, weight_decay=1e-2, fused=True if v.fused_adamw else None
    )
    update = Update(list(unet.parameters()), optimizer, max_grad_norm=1.0)
    objective = plain_objective(unet, scheduler, device, v.precision == "bf16-mixed")
    if v.compile_objective:
        objective = _compiled(objective, v.cuda_graphs)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times: list[float] = []
    flops = None
    try:
        while not _done(times, warmup, seconds, max_steps):
            count = v.count_flops and len(times) == warmup - 1
            f = plain_step(update, objective, batch, count)
            flops = f if count else flops
            _sync(device)
            times.append(clock())
    finally:
        optimizer.state.clear()
        unet.zero_grad(set_to_none=True)
    return _timing(times, warmup, v.batch, device, flops)


def largest_fitting(fits: Callable[[int], bool], start: int, cap: int, granularity: int,
                    deadline: float) -> tuple[int, list[tuple[int, bool]]]:  # fmt: skip
    """The largest micro-batch n <= cap (a multiple of `granularity` once bisecting) with fits(n), given that
    `start` fits: double until something fails, then bisect; stops early at `deadline` (time.monotonic)."""
    good, bad, probes = start, None, []
    while bad is None and good * 2 <= cap and time.monotonic() < deadline:
        n = good * 2
        ok = fits(n)
        probes.append((n, ok))
        good, bad = (n, None) if ok else (good, n)
    while bad is not None and time.monotonic() < deadline:
        n = (good + bad) // 2 // granularity * granularity
        if n <= good:
            break
        ok = fits(n)
        probes.append((n, ok))
        good, bad = (n, bad) if ok else (good, n)
    return good, probes
