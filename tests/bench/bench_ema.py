"""What the EMA options cost: `module.ema_every_n_steps` and `module.ema_on_cpu` against the default (an update
after every optimizer step, the EMA beside the UNet).

`make bench` runs the full version (marked slow). Two measurements, torch on one thread:
- the tiny model's optimizer step under a Lightning Trainer (batch 32 at 32 px, the EMA update included), one
  fresh run per option and round, the options in turn within each round; the median step time per option and
  its ratio to the default's. On a CPU machine ema_on_cpu changes where nothing lives (the UNet is there too),
  so its row measures the bookkeeping only;
- the update itself at SD 2.1's size (865.9M float32 parameters), timed on 1/8 of it (a memory-bound lerp:
  the time scales with the bytes) and scaled up: what the CPU spends per update when the EMA lives there.
Nothing asserts a time.
"""

from __future__ import annotations

import statistics
import time

import pytest
import pytorch_lightning as pl
import torch
from training_helpers import TINY_SPEC, ZERO_SNR, FixedBatchData

from zsnr.training import DiffusionModule, ema_update_

OPTIONS = {
    "default": {},
    "every 4 steps": {"ema_every_n_steps": 4},
    "on the CPU": {"ema_on_cpu": True},
    "on the CPU, every 4": {"ema_on_cpu": True, "ema_every_n_steps": 4},
}
SD21_UNET_PARAMS = 865_910_724


class StepClock(pl.Callback):
    """Wall time of the optimizer steps after `warmup` of them (data loading included: it is in memory)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.seconds = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.seconds = time.perf_counter() - self.start


def step_seconds(options: dict, steps: int, warmup: int) -> tuple[float, DiffusionModule]:
    pl.seed_everything(0)
    module = DiffusionModule(TINY_SPEC, ZERO_SNR, ema_decay=0.99, **options)
    clock = StepClock(warmup)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=warmup + steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=[clock],
    )  # fmt: skip
    trainer.fit(module, datamodule=FixedBatchData(batch_size=32, resolution=32))
    return clock.seconds / steps, module


def measure_steps(steps: int, warmup: int, rounds: int) -> dict[str, dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times: dict[str, list[float]] = {name: [] for name in OPTIONS}
        modules = {}
        for _ in range(rounds):
            for name, options in OPTIONS.items():
                seconds, modules[name] = step_seconds(options, steps, warmup)
                times[name].append(seconds)
    finally:
        torch.set_num_threads(threads)
    base = statistics.median(times["default"])
    return {
        name: {"median_s": statistics.median(t), "spread": (min(t), max(t)),
               "ratio": statistics.median(t) / base, "module": modules[name]}
        for name, t in times.items()
    }  # fmt: skip


def sd21_update_seconds(fraction: int = 8, repeats: int = 3) -> float:
    """Seconds of one EMA update of SD 2.1's UNet on this CPU, from the best of `repeats` on 1/fraction of it."""
    numel = SD21_UNET_PARAMS // fraction
    ema, params = [torch.zeros(numel)], [torch.ones(numel)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            ema_update_(ema, params, 0.9999)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return best * fraction


def report(result: dict[str, dict], steps: int, rounds: int, sd21_s: float | None) -> None:
    print(f"\n[bench_ema] tiny model, batch 32 at 32 px, 1 thread, {steps} timed steps x {rounds} rounds:")
    for name, r in result.items():
        lo, hi = r["spread"]
        print(
            f"  {name:20s} {1e3 * r['median_s']:7.1f} ms/step [{1e3 * lo:.1f}-{1e3 * hi:.1f}]  {r['ratio']:.3f}x"
        )
    if sd21_s is not None:
        gib = SD21_UNET_PARAMS * 4 / 2**30
        print(
            f"  SD 2.1 UNet ({gib:.2f} GiB float32): one EMA update on this CPU, 1 thread: {sd21_s:.2f} s; "
            f"every 10 steps {sd21_s / 10:.3f} s/step, every 100 steps {sd21_s / 100:.4f} s/step"
        )


def test_bench_ema_options_tiny():
    """The machinery in seconds: every option trains, and the EMA took in the steps its option says."""
    result = measure_steps(steps=4, warmup=0, rounds=1)
    report(result, steps=4, rounds=1, sd21_s=None)
    assert result["default"]["module"].ema.schedule.updates == 4
    assert result["every 4 steps"]["module"].ema.schedule.updates == 1
    assert "ema_unet" not in result["on the CPU"]["module"]._modules


@pytest.mark.slow
def test_bench_ema_options():
    result = measure_steps(steps=12, warmup=2, rounds=3)
    report(result, steps=12, rounds=3, sd21_s=sd21_update_seconds())
