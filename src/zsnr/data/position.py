"""Where the data stream stands, as types: one worker's cursor, one rank's stream position, and the saved state
of every rank (WebDataModule.state_dict), with the format's version, the fingerprint that says whether a saved
position still means the same thing, and the reseed rule for when it does not.

Only zsnr.data.resume.StreamTracker makes new positions (as batches are consumed, as epochs end, on restore);
the stream (zsnr.data.stream) reads them. The dict forms (`to_dict` / `from_dict`) are the checkpoint format,
unchanged since version 1: {"version", "fingerprint", "ranks": [{"position": {"epoch", "last_worker",
"workers": {worker: {"token", "batches", "shards", "buffered"}}, "reseed"?}, "stats"}]}.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

STATE_VERSION = 1
# What a saved position depends on besides the shards: a change in any of them makes it name other samples.
FINGERPRINT_KEYS = ("batch_size", "shuffle_buffer", "resampled", "epoch_length", "seed", "decode")


@dataclass(frozen=True)
class WorkerCursor:
    """Where one worker's stream stands after a batch. token (ordinal, raw_index, j): the shuffle block that
    starts at sample raw_index of the worker's ordinal-th shard, of which j samples were taken (zsnr.data.stream).
    batches: delivered in this epoch. shards: the counts of the shards being read (stats.ShardVerdicts; None in
    positions saved without them). buffered: (ordinal, index) of the samples waiting in bucket buffers, read
    again on resume (empty in positions saved before buckets)."""

    token: tuple[int, ...]
    batches: int
    shards: Mapping[int, Any] | None = None
    buffered: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WorkerCursor:
        buffered = tuple(tuple(c) for c in d.get("buffered") or ())
        return cls(tuple(d["token"]), d["batches"], d.get("shards"), buffered)

    def to_dict(self) -> dict[str, Any]:
        return {"token": list(self.token), "batches": self.batches, "shards": self.shards,
                "buffered": [list(c) for c in self.buffered]}  # fmt: skip


@dataclass(frozen=True)
class StreamPosition:
    """One rank's position: the data epoch, the worker that gave the latest batch (the next request goes to the
    one after it), each worker's cursor, and `reseed`, set when a saved position could not be continued."""

    epoch: int = 0
    last_worker: int = -1
    workers: Mapping[int, WorkerCursor] = field(default_factory=dict)
    reseed: str | None = None

    @property
    def batches(self) -> int:
        """Batches delivered in this epoch, all workers together."""
        return sum(cursor.batches for cursor in self.workers.values())

    def seed(self, seed: int) -> int | str:
        """The stream's seed: the run's, extended for a stream that goes on with fresh randomness."""
        return seed if self.reseed is None else f"{seed}/resumed/{self.reseed}"

    def after_batch(self, report: Mapping[str, Any]) -> StreamPosition:
        """The position once the batch whose report (batch["resume"], see `report`) it is has been consumed."""
        worker = report["worker"]
        workers = {**self.workers, worker: WorkerCursor.from_dict(report)}
        return replace(self, last_worker=worker, workers=workers)

    def next_epoch(self, finite: bool) -> StreamPosition:
        """A single exact pass starts over; an endless stream keeps its cursors (and its reseed, which they
        refer to) with their batch counts at zero."""
        if finite:
            return StreamPosition(self.epoch + 1)
        workers = {w: replace(cursor, batches=0) for w, cursor in self.workers.items()}
        return StreamPosition(self.epoch + 1, workers=workers, reseed=self.reseed)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StreamPosition:
        workers = {int(w): WorkerCursor.from_dict(c) for w, c in d["workers"].items()}
        return cls(d["epoch"], d["last_worker"], workers, d.get("reseed"))

    def to_dict(self) -> dict[str, Any]:
        workers = {w: cursor.to_dict() for w, cursor in self.workers.items()}
        out = {"epoch": self.epoch, "last_worker": self.last_worker, "workers": workers}
        return out if self.reseed is None else {**out, "reseed": self.reseed}


def report(epoch: int, worker: int, cursor: WorkerCursor) -> dict[str, Any]:
    """What a batch carries as batch["resume"]: its worker's cursor after it, with the epoch and the worker."""
    return {"epoch": epoch, "worker": worker, **cursor.to_dict()}


@dataclass(frozen=True)
class RankState:
    position: StreamPosition
    stats: Mapping[str, int]


@dataclass(frozen=True)
class StreamState:
    """Every rank's position and summed stats, as saved, with the version and fingerprint they were saved under
    (version None: a state saved without one)."""

    fingerprint: Mapping[str, Any]
    ranks: tuple[RankState, ...]
    version: int | None = STATE_VERSION

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StreamState:
        ranks = tuple(RankState(StreamPosition.from_dict(r["position"]), r["stats"]) for r in d["ranks"])
        return cls(d.get("fingerprint", {}), ranks, d.get("version"))

    def to_dict(self) -> dict[str, Any]:
        ranks = [{"position": r.position.to_dict(), "stats": dict(r.stats)} for r in self.ranks]
        return {"version": self.version, "fingerprint": dict(self.fingerprint), "ranks": ranks}

    def stats(self, rank: int, world: int) -> Counter[str]:
        """This rank's share of the saved counts: every saved rank's go to one rank, so their sum is kept."""
        total: Counter[str] = Counter()
        for saved in self.ranks[rank::world]:
            total.update(saved.stats)
        return total

    def changes(self, fingerprint: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """(saved, now) of each fingerprint entry that differs; empty when the positions still hold."""
        keys = {**self.fingerprint, **fingerprint}
        return {k: (self.fingerprint.get(k), fingerprint.get(k)) for k in keys
                if self.fingerprint.get(k) != fingerprint.get(k)}  # fmt: skip

    def continues(self, fingerprint: Mapping[str, Any]) -> bool:
        return self.version == STATE_VERSION and dict(self.fingerprint) == dict(fingerprint)

    def reseeded(self) -> StreamPosition:
        """The position to go on from when the saved ones name shards and blocks of another layout: the saved
        epoch from its start, with a fresh shard order and shuffle keyed on where the stream stood (replaying the
        epoch as it was would show the run's first samples again)."""
        position = self.ranks[0].position
        consumed = sum(r.position.batches for r in self.ranks)
        key = f"{position.reseed or ''}/{position.epoch}.{consumed}".lstrip("/")
        return StreamPosition(position.epoch, reseed=key)


def fingerprint(
    stream_kwargs: Mapping[str, Any], num_workers: int, world_size: int, shards: Sequence[int], buckets: Any
) -> dict[str, Any]:
    """What a saved position depends on: the stream's settings, workers, ranks and shard counts per source;
    `buckets` ([step, max_aspect]) only when on, so positions saved before buckets existed still match."""
    return {
        **{k: stream_kwargs[k] for k in FINGERPRINT_KEYS},
        "num_workers": max(1, num_workers),
        "world_size": world_size,
        "shards": list(shards),
        **({} if buckets is None else {"buckets": buckets}),
    }
