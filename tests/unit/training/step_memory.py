"""Run as a script (its own process, so the allocator state is its own): prints JSON with, for the tiny model's
training under a Lightning Trainer on the CPU (float32, batch 32 at 32 px, one thread), the largest rise of the
RSS above its level at the start of a step (the peak reset there: Linux >= 4.0), over steps 3-6, in bytes.

    python step_memory.py

glibc is told to serve every allocation of 64 KiB or more from its own mapping (MALLOC_MMAP_THRESHOLD_, set
by the caller in the environment), so a freed tensor leaves the RSS at once and the rise is the step's own
memory: gradients, activations and temporaries. What exists between steps (weights, EMA, frozen parts, AdamW
moments) is in the RSS at the start of the step already.
"""

import json
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from checkpoint_memory import status_mib
from training_helpers import TINY_SPEC, ZERO_SNR, FixedBatchData

from zsnr.training import DiffusionModule

BATCH = 32


class StepRise(pl.Callback):
    def __init__(self, first: int = 3) -> None:
        self.first, self.rises, self.start = first, [], 0.0

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        if trainer.global_step >= self.first:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.start = status_mib("VmRSS")

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step > self.first:
            self.rises.append((status_mib("VmHWM") - self.start) * 2**20)


def main() -> None:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        raise SystemExit("set MALLOC_MMAP_THRESHOLD_=65536 in the environment (see the docstring)")
    torch.set_num_threads(1)
    pl.seed_everything(0)
    module = DiffusionModule(TINY_SPEC, ZERO_SNR)
    rise = StepRise()
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=7, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[rise],
    )  # fmt: skip
    trainer.fit(module, datamodule=FixedBatchData(batch_size=BATCH, resolution=32))
    print(json.dumps({"batch": BATCH, "rises": rise.rises, "rise": max(rise.rises)}))


if __name__ == "__main__":
    main()
