"""Exact resume: the main process records, per worker, where the stream stands after each consumed batch.

Workers cannot report to the main process except through the batches they yield, so every batch carries its
worker's position (batch["resume"], see zsnr.data.stream). The tracker keeps the latest one per worker as
the training loop consumes batches; at the next iteration the dataset is handed the tracker's position, and
each worker re-opens its shard at the saved token, skips what was delivered, and goes on. Only raw bytes are
read while skipping (no json parsing or image decoding before the token's shard offset).
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from zsnr.data.stream import ShardStream, fresh_position

log = logging.getLogger("zsnr.data")


class StreamTracker:
    """Position of one rank's stream in what the training loop has consumed, and summed data stats."""

    def __init__(self, finite: bool, batches_per_rank: int | None):
        self.finite, self.batches_per_rank = finite, batches_per_rank
        self.position = fresh_position()
        self.stats: Counter[str] = Counter()

    def consumed(self, batch: dict[str, Any]) -> None:
        """Record a batch as used. A batch of an epoch that already ended (prefetched) only adds stats."""
        self.stats.update(batch.get("stats", {}))
        resume = batch.get("resume")
        if resume is None or resume["epoch"] != self.position["epoch"]:
            return
        self.position["workers"][resume["worker"]] = {
            "token": list(resume["token"]),
            "batches": resume["batches"],
        }
        self.position["last_worker"] = resume["worker"]
        total = sum(w["batches"] for w in self.position["workers"].values())
        if self.batches_per_rank is not None and not self.finite and total >= self.batches_per_rank:
            self.finish_epoch(resume["epoch"])

    def finish_epoch(self, epoch: int) -> None:
        """Move to epoch+1 (idempotent). Finite mode starts the next pass; endless streams keep their tokens."""
        if self.position["epoch"] != epoch:
            return
        log.info("data epoch %d done: %s", epoch, dict(self.stats))
        workers = (
            {}
            if self.finite
            else {w: {"token": s["token"], "batches": 0} for w, s in self.position["workers"].items()}
        )
        self.position = {**fresh_position(epoch + 1), "workers": workers}


class ResumableLoader:
    """Iterates a DataLoader over a ShardStream from the tracker's position; marks the epoch done at its end.

    With track_on_yield=True every batch handed out counts as consumed (plain loops, notebooks). Under
    Lightning it is False and WebDataModule.on_before_batch_transfer records batches as the training loop
    takes them, because Lightning fetches one batch ahead.
    """

    def __init__(
        self, dataset: ShardStream, tracker: StreamTracker, track_on_yield: bool, **loader_kwargs: Any
    ):
        self.dataset, self.tracker, self.track_on_yield = dataset, tracker, track_on_yield
        loader_kwargs["persistent_workers"] = False  # workers must be re-created to receive the position
        if loader_kwargs.get("num_workers", 0) == 0:
            loader_kwargs.pop("prefetch_factor", None)
        self.loader = DataLoader(dataset, batch_size=None, **loader_kwargs)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.dataset.position = copy.deepcopy(self.tracker.position)
        epoch = self.dataset.position["epoch"]
        for batch in self.loader:
            if self.track_on_yield:
                self.tracker.consumed(batch)
            yield batch
        self.tracker.finish_epoch(epoch)

    def __len__(self) -> int:
        """Batches per epoch on this rank, known only when epoch_length fixes it (endless streams)."""
        if self.dataset.finite or self.dataset.epoch_length is None:
            raise TypeError("the number of batches of a single exact pass is not known before reading it")
        return self.dataset.batches_per_rank()
