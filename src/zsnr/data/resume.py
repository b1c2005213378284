"""Exact resume: the main process records, per worker, where the stream stands after each consumed batch.

Workers cannot report to the main process except through the batches they yield, so every batch carries its
worker's position (batch["resume"], see zsnr.data.stream). The tracker keeps the latest one per worker as
the training loop consumes batches; at the next iteration the dataset is handed the tracker's position, and
each worker re-opens its shard at the saved token, skips what was delivered, and goes on. Only raw bytes are
read while skipping (no json parsing or image decoding before the token's shard offset).

Stopping. A single exact pass that gives this rank no batch at all (an empty shard list, every sample
filtered out) is an error at the end of that pass: otherwise the training loop would run empty epochs forever.
SIGTERM always ends the process: while the loop waits for the next batch (possibly a long time, when the
workers read and reject a lot), it raises SystemExit(143) at once; the workers take SIGTERM's default action
(they are killed), so stopping never waits for a busy worker. A handler that ignores SIGTERM is respected.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader

from zsnr.data.position import STATE_VERSION, RankState, StreamPosition, StreamState
from zsnr.data.stats import ShardFailureGuard
from zsnr.data.stream import END_OF_STREAM, ShardStream

log = logging.getLogger("zsnr.data")


class StreamTracker:
    """Position of one rank's stream in what the training loop has consumed, its summed data stats, and the
    failed-shard limit judged on those sums (stats.ShardFailureGuard: every worker, epoch and resume). The only
    code that moves a StreamPosition (zsnr.data.position)."""

    def __init__(self, finite: bool, batches_per_rank: int | None, max_bad_shard_fraction: float = 0.1):
        self.finite, self.batches_per_rank = finite, batches_per_rank
        self.position = StreamPosition()
        self.stats: Counter[str] = Counter()
        self.shard_guard = ShardFailureGuard(max_bad_shard_fraction)

    def consumed(self, batch: dict[str, Any]) -> None:
        """Record a batch as used. A batch of an epoch that already ended (prefetched) only adds stats."""
        self.stats.update(batch.get("stats", {}))
        self.shard_guard.consumed(self.stats, batch.get("failed_shards", ()))
        report = batch.get("resume")
        if report is None or report["epoch"] != self.position.epoch:
            return
        self.position = self.position.after_batch(report)
        if (
            self.batches_per_rank is not None
            and not self.finite
            and self.position.batches >= self.batches_per_rank
        ):
            self.finish_epoch(report["epoch"])

    def state(self) -> RankState:
        return RankState(self.position, dict(self.stats))

    def restore(
        self, state: StreamState, fingerprint: dict[str, Any], rank: int, world: int, seed: int
    ) -> None:
        """Take this rank's position and counts from a saved state (WebDataModule.state_dict). `fingerprint`:
        that of this run's stream (batch size, workers, world size, buckets, ...)."""
        self.stats.update(state.stats(rank, world))
        if state.continues(fingerprint):
            self.position = state.ranks[rank].position
            return
        self.position = state.reseeded()
        log.warning(
            "cannot continue the data stream exactly: %s changed (saved, now) since it was saved; data epoch %d goes "
            "on with a fresh shard order and shuffle (seed %s extended with %r: %d batches were consumed). The run's "
            "first batches are not replayed, but in exact mode samples already shown in this epoch can come again "
            "(the rest of the epoch is a fresh pass).",
            state.changes(fingerprint) or f"the state format (version {state.version}, now {STATE_VERSION})",
            self.position.epoch,
            seed,
            self.position.reseed,
            sum(r.position.batches for r in state.ranks),
        )

    def finish_epoch(self, epoch: int) -> None:
        """Move to epoch+1 (idempotent). Finite mode starts the next pass; endless streams keep their tokens (and
        the fresh randomness of a stream that could not continue exactly, which the tokens refer to)."""
        if self.position.epoch != epoch:
            return
        log.info("data epoch %d done: %s", epoch, dict(self.stats))
        self.position = self.position.next_epoch(self.finite)


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
        dataset.report_end = True  # each worker's last counts come as a stats-only item (not handed out)
        loader_kwargs["persistent_workers"] = False  # workers must be re-created to receive the position
        if loader_kwargs.get("num_workers", 0) == 0:
            loader_kwargs.pop("prefetch_factor", None)
        loader_kwargs["worker_init_fn"] = _WorkerInit(loader_kwargs.get("worker_init_fn"))
        self.loader = DataLoader(dataset, batch_size=None, **loader_kwargs)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.dataset.position = self.tracker.position  # immutable: the tracker replaces it, never changes it
        epoch, delivered = self.tracker.position.epoch, self.tracker.position.batches
        counts_before = Counter(self.tracker.stats)
        batches = iter(self.loader)
        while True:
            with _stop_on_sigterm():
                batch = next(batches, None)
            if batch is None:
                break
            if batch.get(END_OF_STREAM):
                self.tracker.stats.update(batch["stats"])
                continue
            delivered += 1
            if self.track_on_yield:
                self.tracker.consumed(batch)
            yield batch
        if self.dataset.finite and delivered == 0:
            raise RuntimeError(self._empty_pass_message(epoch, self.tracker.stats - counts_before))
        self.tracker.finish_epoch(epoch)

    def _empty_pass_message(self, epoch: int, counts: Counter) -> str:
        urls = [u for s in self.dataset.sources for u in s.urls]
        shown = ", ".join(urls[:5]) + (f" and {len(urls) - 5} more" if len(urls) > 5 else "")
        nonzero = {k: v for k, v in sorted(counts.items()) if v and not k.startswith("shards/")}
        return (
            f"data epoch {epoch}: a whole exact pass over {len(urls)} shard(s) ({shown}) gave rank "
            f"{self.dataset.rank} no batch: {counts['seen']} samples read, {counts['accepted']} accepted, "
            f"counts {nonzero or 'all zero (the shards hold no samples)'}. Training would loop over empty "
            "epochs: check data.urls, and data.filters against the rejected/<filter> counts."
        )

    def __len__(self) -> int:
        """Batches per epoch on this rank, known only when epoch_length fixes it (endless streams)."""
        if self.dataset.finite or self.dataset.epoch_length is None:
            raise TypeError("the number of batches of a single exact pass is not known before reading it")
        return self.dataset.batches_per_rank()


class _WorkerInit:
    """worker_init_fn: SIGTERM's default action in the worker, then the caller's own worker_init_fn, if any.
    A worker inherits the parent's handlers (Lightning's only sets a flag), and a worker that ignores SIGTERM
    keeps the parent waiting for it at exit."""

    def __init__(self, user_fn: Callable[[int], None] | None):
        self.user_fn = user_fn

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if self.user_fn is not None:
            self.user_fn(worker_id)


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """While waiting for a batch, SIGTERM raises SystemExit(143) after running the previous handler (which
    for Lightning records the signal); between batches the previous handler alone decides."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)

    def stop(signum: int, frame: Any) -> None:
        if previous is signal.SIG_IGN:
            return
        if callable(previous):
            previous(signum, frame)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
