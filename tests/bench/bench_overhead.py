"""What zsnr's training step costs over a bare loop, and where the difference goes (CPU, one thread, CPU time).

    python tests/bench/bench_overhead.py [--rounds 9 --steps 40]      (`make bench` runs it, marked slow)

Rows, each timed for `steps` steps after `warmup` in every round, the rows interleaved round by round (so a
change of the machine's load touches every row alike):
  plain        gpu_step_loops.run_plain: a diffusers-style objective (add_noise, UNet, MSE on v) through
               zsnr.training.step.train_step (backward, gradient norm and skip decision, clipping, AdamW) in a
               bare loop: no Lightning, no EMA, no logging
  zsnr         gpu_step_loops.run_ours: DiffusionModule through a Lightning Trainer (configs/trainer/default.yaml)
               with the per-step callbacks launch/train.py adds (TrainMetrics, DataStatsLogger) and the EMA
  zsnr - X     the same with one part X taken out (monkeypatched for the row only), so its cost is
               zsnr / (zsnr - X) - 1: the EMA update, the callbacks, the step's own generator
The update itself (train_step) is the same code in plain and zsnr, so what the ratio measures is Lightning's
loop, the callbacks, the EMA and zsnr's objective (its generator, caption dropout, loss weights).
Steps are timed in CPU seconds of this process on one thread (time.process_time: other jobs on the machine
do not count). The rows run in a shuffled order in each round. The ratio of a row to plain is taken within
each round and reported as the median over rounds with its range. Times are never asserted (the tests check
structure only).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
import statistics
import time
import warnings
from collections.abc import Iterator

import pytest
import torch
from gpu_step_loops import Variant, latent_batch, run_ours, run_plain

TINY = {"kind": "tiny", "resolution": 32, "init_seed": 0}
ZERO_SNR = {"betas": "scaled_linear", "rescale_zero_terminal_snr": True, "prediction_type": "v_prediction"}


def _build():
    from zsnr.training import DiffusionModule

    return DiffusionModule(TINY, ZERO_SNR, ema_decay=0.999)


@contextlib.contextmanager
def _without(part: str, module) -> Iterator[None]:
    """Take one part of zsnr's step out for a row (restored afterwards)."""
    saved: list[tuple[object, str, object]] = []
    missing = object()

    def patch(owner: object, name: str, value: object) -> None:
        saved.append((owner, name, vars(owner).get(name, missing)))
        setattr(owner, name, value)

    if part == "EMA":
        patch(module, "ema", None)  # train_step skips the EMA
    elif part == "step generator":
        shared = torch.Generator().manual_seed(0)
        patch(module, "_step_generator", lambda: shared)
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            if value is missing:
                delattr(owner, name)
            else:
                setattr(owner, name, value)


PARTS = ("EMA", "callbacks", "step generator")


def measure(rounds: int, steps: int, warmup: int, batch: int, latent: int) -> dict[str, list[float]]:
    """Seconds per step of every row in every round: {row: [round 0, round 1, ...]}."""
    torch.set_num_threads(1)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    module = _build()
    text_dim = module.unet.config.cross_attention_dim
    data = latent_batch(batch, latent, text_dim, pin=False)
    cpu = torch.device("cpu")
    v = Variant("zsnr", latent=latent, batch=batch, precision="32-true")
    times: dict[str, list[float]] = {row: [] for row in ("plain", "zsnr", *(f"zsnr - {p}" for p in PARTS))}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(num_workers|eval mode|LeafSpec|does not have many).*")
        for r in range(rounds):
            order = ["plain", None, *PARTS]
            random.Random(r).shuffle(order)  # no row always runs first (or right after another)
            for part in order:
                if part == "plain":
                    t = run_plain(module.unet, v, data, cpu, warmup, 0.0, steps, time.process_time)
                    times["plain"].append(t.step_ms / 1e3)
                    continue
                row = "zsnr" if part is None else f"zsnr - {part}"
                variant = Variant(
                    row, latent=latent, batch=batch, precision="32-true", callbacks=part != "callbacks"
                )
                with _without(part or "", module):
                    t = run_ours(module, variant, data, cpu, warmup, 0.0, steps, time.process_time)
                times[row].append(t.step_ms / 1e3)
    return times


def summary(times: dict[str, list[float]], baseline: str = "plain") -> list[dict[str, float | str]]:
    """Per row (in the order of `times`): median ms per step, and its per-round ratio to `baseline` (median,
    min, max)."""
    rows = []
    for row, seconds in times.items():
        ratios = [s / b for s, b in zip(seconds, times[baseline], strict=True)]
        rows.append({"row": row, "ms": 1e3 * statistics.median(seconds), "ratio": statistics.median(ratios),
                     "lo": min(ratios), "hi": max(ratios)})  # fmt: skip
    return rows


def print_rows(rows: list[dict[str, float | str]], baseline: str = "plain", first: str = "row") -> None:
    print(f"{first:24s} {'ms/step':>8s} {'/ ' + baseline:>8s} {'range':>14s}")
    for r in rows:
        print(f"{r['row']:24s} {r['ms']:8.2f} {r['ratio']:8.3f} {r['lo']:6.3f}-{r['hi']:.3f}")


def report(rounds: int, steps: int, warmup: int = 3, batch: int = 16, latent: int = 16) -> list[dict]:
    began = time.monotonic()
    rows = summary(measure(rounds, steps, warmup, batch, latent))
    print(f"\ntraining step, tiny UNet, latent batch {batch} x 4 x {latent} x {latent}, float32, 1 thread; "
          f"{rounds} interleaved rounds of {steps} steps ({time.monotonic() - began:.0f} s)")  # fmt: skip
    print_rows(rows)
    return rows


def test_bench_overhead_quick():
    rows = summary(measure(rounds=1, steps=2, warmup=2, batch=2, latent=8))
    assert [r["row"] for r in rows] == ["plain", "zsnr", *(f"zsnr - {p}" for p in PARTS)]
    assert all(r["ms"] > 0 for r in rows)


@pytest.mark.slow
def test_bench_overhead():
    report(rounds=9, steps=40)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--latent", type=int, default=16)
    a = p.parse_args()
    report(a.rounds, a.steps, batch=a.batch, latent=a.latent)
