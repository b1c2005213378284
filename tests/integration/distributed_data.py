"""Test-only pieces for the multi-process runs (importable by launch/train.py through PYTHONPATH).

IndexedBatches (with fixed held-out batches for the validation loss): rank r of W processes gets, as its k-th micro-batch, batch number k * W + r, a function of that
number only. So W processes with A accumulation steps see exactly the micro-batches of 1 process with W * A
steps, in the same grouping: step s averages batches s*W*A ... s*W*A + W*A - 1 either way. Resumable: the number
of micro-batches consumed is part of the checkpoint.

LossRecorder: every rank writes (global micro-batch index, optimizer step, loss) for each micro-batch it ran.
Both are what launch/train.py gives a datamodule: micro_batches_per_step groups the micro-batches into windows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from training_helpers import brightness_batch

from zsnr.data.datamodule import Windows


class _Stream(torch.utils.data.IterableDataset):
    def __init__(self, owner: IndexedBatches, rank: int, world: int) -> None:
        self.owner, self.rank, self.world = owner, rank, world

    def __iter__(self):
        k = self.owner.consumed  # where a resumed run continues
        while True:
            yield brightness_batch(
                self.owner.batch_size, self.owner.resolution, seed=k * self.world + self.rank
            )
            k += 1


class IndexedBatches(pl.LightningDataModule):
    def __init__(
        self, batch_size: int = 4, resolution: int = 32, micro_batches_per_step: int = 1, **_: Any
    ) -> None:
        super().__init__()
        self.batch_size, self.resolution = batch_size, resolution
        self.micro_batches_per_step = micro_batches_per_step
        self.consumed = 0

    has_val_data = True

    def val_batches(self, num_batches: int) -> list[dict[str, Any]]:
        """Held-out: seeds no training batch of these runs uses."""
        return [
            brightness_batch(self.batch_size, self.resolution, seed=10**6 + i) for i in range(num_batches)
        ]

    def train_dataloader(self):
        stream = _Stream(self, self.trainer.global_rank, self.trainer.world_size)
        loader = torch.utils.data.DataLoader(stream, batch_size=None)
        return Windows(loader, self.micro_batches_per_step)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        self.consumed += len(batch)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consumed = int(state["consumed"])


class LossRecorder(pl.Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        losses = pl_module.last_step.micro_losses.tolist()
        first = pl_module.micro_step - len(losses)
        for i, loss in enumerate(losses):
            index = (first + i) * trainer.world_size + trainer.global_rank
            self.rows.append({"index": index, "step": trainer.global_step, "loss": loss})

    def on_train_end(self, trainer, pl_module) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        out = self.path / f"rank{trainer.global_rank}-to{trainer.global_step}.jsonl"
        out.write_text("".join(json.dumps(r) + "\n" for r in self.rows))


def read_losses(path: Path) -> dict[int, float]:
    """{global micro-batch index: loss} over every rank's and every run's files under `path`."""
    losses: dict[int, float] = {}
    for file in sorted(Path(path).glob("*.jsonl")):
        for line in file.read_text().splitlines():
            row = json.loads(line)
            losses[row["index"]] = row["loss"]
    return losses
