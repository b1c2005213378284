"""What torch.compile gives the training step on the CPU: module.compile false / blocks / loss (`make bench`).

    python tests/bench/bench_compile.py [--rounds 5 --steps 20]

Three DiffusionModules with the same weights, one per setting, each trained by zsnr.training.step.train_step on
the same latent batch (tiny UNet, 16 x 4 x 16 x 16, float32, one thread). Each compiled module is compiled first
by warmup steps (inductor; the compile time is printed, not timed in the rows), then the rows run `steps` steps
each, interleaved round by round in a shuffled order, timed in CPU seconds of this process. Printed: median ms
per step and the median over rounds of each row's ratio to eager, with its range. Never asserted: a CPU's
numbers say little about a GPU's (the GPU benchmark has the compile rows for that).
"""

from __future__ import annotations

import argparse
import random
import time

import pytest
import torch
from bench_overhead import print_rows, summary
from gpu_step_loops import latent_batch

from zsnr.training import DiffusionModule
from zsnr.training.step import Update, train_step

TINY = {"kind": "tiny", "resolution": 32, "init_seed": 0}
ZERO_SNR = {"betas": "scaled_linear", "rescale_zero_terminal_snr": True, "prediction_type": "v_prediction"}
ROWS = ("eager", "blocks", "loss")


def _update(module: DiffusionModule) -> Update:
    optimizer = torch.optim.AdamW(module.unet.parameters(), lr=1e-4)
    return Update(list(module.unet.parameters()), optimizer, ema=module.ema)


def measure(rounds: int, steps: int, warmup: int = 3) -> tuple[dict[str, list[float]], dict[str, float]]:
    """(seconds per step of every row in every round, compile seconds per compiled row)."""
    torch.set_num_threads(1)
    torch._dynamo.reset()
    modules, updates, compile_s = {}, {}, {}
    for row in ROWS:
        module = DiffusionModule(TINY, ZERO_SNR, compile=False if row == "eager" else row)
        module.configure_model()  # what Lightning calls: compiles the blocks, or the loss
        modules[row], updates[row] = module, _update(module)
    batch = latent_batch(16, 16, modules["eager"].unet.config.cross_attention_dim, pin=False)
    for row in ROWS:
        began = time.process_time()
        for _ in range(warmup):
            train_step(updates[row], [batch], modules[row].micro_batch_loss)
        compile_s[row] = time.process_time() - began
    times: dict[str, list[float]] = {row: [] for row in ROWS}
    for r in range(rounds):
        order = list(ROWS)
        random.Random(r).shuffle(order)
        for row in order:
            began = time.process_time()
            for _ in range(steps):
                train_step(updates[row], [batch], modules[row].micro_batch_loss)
            times[row].append((time.process_time() - began) / steps)
    return times, compile_s


def report(rounds: int, steps: int) -> list[dict[str, float | str]]:
    times, compile_s = measure(rounds, steps)
    print(f"\ntraining step, tiny UNet, latent batch 16 x 4 x 16 x 16, float32, 1 thread; {rounds} interleaved "
          f"rounds of {steps} steps; warmup (compile included) CPU s: "
          + ", ".join(f"{row} {s:.1f}" for row, s in compile_s.items()))  # fmt: skip
    rows = summary(times, baseline="eager")
    print_rows(rows, baseline="eager", first="module.compile")
    return rows


@pytest.mark.slow
def test_bench_compile():
    report(rounds=5, steps=20)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    a = p.parse_args()
    report(a.rounds, a.steps)
