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
import copy
import logging
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader

from zsnr.data.stats import ShardFailureGuard
from zsnr.data.stream import END_OF_STREAM, ShardStream, fresh_position

log = logging.getLogger("zsnr.data")


class StreamTracker:
    """Position of one rank's stream in what the training loop has consumed, its summed data stats, and the
    failed-shard limit judged on those sums (stats.ShardFailureGuard: every worker, epoch and resume)."""

    def __init__(self, finite: bool, batches_per_rank: int | None, max_bad_shard_fraction: float = 0.1):
        self.finite, self.batches_per_rank = finite, batches_per_rank
        self.position = fresh_position()
        self.stats: Counter[str] = Counter()
        self.shard_guard = ShardFailureGuard(max_bad_shard_fraction)

    def consumed(self, batch: dict[str, Any]) -> None:
        """Record a batch as used. A batch of an epoch that already ended (prefetched) only adds stats."""
        self.stats.update(batch.get("stats", {}))
        self.shard_guard.consumed(self.stats, batch.get("failed_shards", ()))
        resume = batch.get("resume")
        if resume is None or resume["epoch"] != self.position["epoch"]:
            return
        self.position["workers"][resume["worker"]] = {
            "token": list(resume["token"]),
            "batches": resume["batches"],
            "shards": resume.get("shards"),
            "buffered": resume.get("buffered", []),  # samples waiting in bucket buffers: read again on resume
        }
        self.position["last_worker"] = resume["worker"]
        total = sum(w["batches"] for w in self.position["workers"].values())
        if self.batches_per_rank is not None and not self.finite and total >= self.batches_per_rank:
            self.finish_epoch(resume["epoch"])

    def restore(
        self, state: dict[str, Any], expected: dict[str, Any], rank: int, world: int, seed: int
    ) -> None:
        """Take this rank's position and counts from a saved state (WebDataModule.state_dict). `expected`:
        the version and fingerprint (batch size, workers, world size, buckets, ...) of this run's stream."""
        ranks = state["ranks"]
        for saved in ranks[rank::world]:  # every saved rank's counts go to one rank: their sum is kept
            self.stats.update(saved["stats"])
        fingerprint = state.get("fingerprint", {})
        if state.get("version") == expected["version"] and fingerprint == expected["fingerprint"]:
            self.position = ranks[rank]["position"]
            return
        # The saved positions name shards and blocks of another layout: replaying the epoch from its start would
        # show the run's first samples again. Go on with a fresh shard order and shuffle, keyed on the position.
        position = ranks[0]["position"]
        epoch = position["epoch"]
        consumed = sum(w["batches"] for r in ranks for w in r["position"]["workers"].values())
        key = f"{position.get('reseed', '')}/{epoch}.{consumed}".lstrip("/")
        now = expected["fingerprint"]
        changed = {k: (fingerprint.get(k), now.get(k)) for k in {**fingerprint, **now}
                   if fingerprint.get(k) != now.get(k)}  # fmt: skip
        log.warning(
            "cannot continue the data stream exactly: %s changed (saved, now) since it was saved; data epoch %d goes "
            "on with a fresh shard order and shuffle (seed %s extended with %r: %d batches were consumed). The run's "
            "first batches are not replayed, but in exact mode samples already shown in this epoch can come again "
            "(the rest of the epoch is a fresh pass).",
            changed or f"the state format (version {state.get('version')}, now {expected['version']})",
            epoch,
            seed,
            key,
            consumed,
        )
        self.position = {**fresh_position(epoch), "reseed": key}

    def finish_epoch(self, epoch: int) -> None:
        """Move to epoch+1 (idempotent). Finite mode starts the next pass; endless streams keep their tokens (and
        the fresh randomness of a stream that could not continue exactly, which the tokens refer to)."""
        if self.position["epoch"] != epoch:
            return
        log.info("data epoch %d done: %s", epoch, dict(self.stats))
        workers = {} if self.finite else {w: {**s, "batches": 0} for w, s in self.position["workers"].items()}
        reseed = {} if self.finite or "reseed" not in self.position else {"reseed": self.position["reseed"]}
        self.position = {**fresh_position(epoch + 1), "workers": workers, **reseed}


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
        self.dataset.position = copy.deepcopy(self.tracker.position)
        epoch = self.dataset.position["epoch"]
        delivered = sum(w["batches"] for w in self.dataset.position["workers"].values())
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
