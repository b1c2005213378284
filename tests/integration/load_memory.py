"""A callback that measures the anonymous memory a resume's checkpoint load adds (importable by a launched run).

From the `setup` hook (the model built, nothing restored yet) to `on_train_start` (weights, EMA, AdamW state and
loops restored, the loaded checkpoint dropped; under FSDP2 the model sharded too) a thread samples this process's RssAnon every millisecond.
Written to `path`/rank<R>.json: RssAnon at setup, the peak in the window, RssAnon at its end, and the bytes of
one UNet (per rank: FSDP2 shards it). A transient copy of a weight part lasts as long as copying it takes (tens
of milliseconds for the test's 270 MB parts), so a millisecond sampler sees it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytorch_lightning as pl


def rss_anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


class LoadMemory(pl.Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.peak = self.start = 0
        self.running = False
        self.thread: threading.Thread | None = None

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_anon())
            time.sleep(0.001)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.start = self.peak = rss_anon()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.running = False
        self.thread.join()
        end = rss_anon()
        unet = sum(
            p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in pl_module.unet.parameters()
        )
        self.path.mkdir(parents=True, exist_ok=True)
        record = {"start": self.start, "peak": max(self.peak, end), "end": end, "unet_bytes": unet * 4,
                  "step": trainer.global_step}  # fmt: skip
        (self.path / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
