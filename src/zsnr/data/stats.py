"""Counters of what a worker read, rejected and skipped, and the bad-data limit.

DataLoader workers are separate processes, so each worker keeps its own DataStats and attaches the counts
accumulated since its previous batch to the next batch under batch["stats"] (a flat {name: int} dict):
  seen                 samples read from the tars (this worker's share)
  accepted             samples that passed the filters
  rejected/<filter>    dropped by a LAION filter (missing_<filter>: the field was absent, on_missing=reject)
  bad/<kind>           skipped bad data: truncated_tar, shard_open, image_decode, json_missing, json_broken,
                       empty_member, caption_encoding, missing_image, missing_latent, tensor_decode, ...
The datamodule sums them in the main process (WebDataModule.stats); summing batch["stats"] over ranks gives
the global numbers.
"""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger("zsnr.data")

MAX_LOGGED_BAD = 20
BAD_KINDS = (
    "shard_open",
    "truncated_tar",
    "duplicate_member",
    "empty_member",
    "json_missing",
    "json_broken",
    "caption_encoding",
    "missing_image",
    "image_decode",
    "missing_latent",
    "tensor_decode",
)


class BadDataError(RuntimeError):
    """Too much of the data is broken: stop instead of training on what is left."""


class DataStats:
    def __init__(self, where: str = "", filter_names: list[str] = ()):
        self.where = where
        # every key from the start, so each batch's stats have the same keys (summable across ranks)
        names = (
            ["seen", "accepted"] + [f"rejected/{n}" for n in filter_names] + [f"bad/{k}" for k in BAD_KINDS]
        )
        self.counts: Counter[str] = Counter(dict.fromkeys(names, 0))
        self._reported: Counter[str] = Counter()
        self.logged = 0

    def seen(self) -> None:
        self.counts["seen"] += 1

    def accepted(self) -> None:
        self.counts["accepted"] += 1

    def rejected(self, name: str) -> None:
        self.counts[f"rejected/{name}"] += 1

    def bad(self, kind: str, url: str, detail: str) -> None:
        self.counts[f"bad/{kind}"] += 1
        if self.logged < MAX_LOGGED_BAD:
            self.logged += 1
            more = (
                " (further bad-data messages of this worker are not logged)"
                if self.logged == MAX_LOGGED_BAD
                else ""
            )
            log.warning("skipping bad data (%s) in shard %s: %s%s", kind, url, detail, more)

    def delta(self) -> dict[str, int]:
        """Counts since the previous call (attached to each batch)."""
        out = {name: n - self._reported[name] for name, n in self.counts.items()}
        self._reported = Counter(self.counts)
        return out


# Events that describe a whole shard, not one of its samples: not part of a shard's bad-sample fraction.
SHARD_LEVEL_KINDS = ("shard_open", "truncated_tar")


class ShardVerdicts:
    """data.max_bad_fraction, judged per shard: once a shard has been read to its end and every sample of it
    that passed the filters was decoded, BadDataError is raised if its bad samples (bad/* events other than
    SHARD_LEVEL_KINDS) are more than max_bad_fraction of the samples read from it.

    Each shard is judged on its own counts, so the outcome depends only on what the shards hold: not on their
    order, the seed, the shuffle buffer or the number of workers (with fewer shards than workers, workers
    share a shard by sample index and each share is judged by itself). Every sum over whole shards that pass
    (an epoch, a run) then has a bad fraction of at most max_bad_fraction too. The state of the shards being
    read travels with each batch (batch["resume"]["shards"]), so a shard cut by a resume is judged whole.
    """

    def __init__(self, max_bad_fraction: float, where: str = "", muted: bool = False):
        self.max_bad_fraction, self.where, self.muted = max_bad_fraction, where, muted
        self.open: dict[int, dict] = {}  # ordinal -> {"url", "seen", "bad": {kind: n}, "waiting", "read"}

    def opened(self, ordinal: int, url: str) -> None:
        self.open[ordinal] = {"url": url, "seen": 0, "bad": {}, "waiting": 0, "read": False}

    def seen(self, ordinal: int, accepted: bool) -> None:
        self.open[ordinal]["seen"] += 1
        self.open[ordinal]["waiting"] += accepted

    def bad(self, ordinal: int, kind: str) -> None:
        if kind not in SHARD_LEVEL_KINDS and ordinal in self.open:
            bad = self.open[ordinal]["bad"]
            bad[kind] = bad.get(kind, 0) + 1

    def decoded(self, ordinal: int) -> None:
        if ordinal in self.open:  # not when cut by a resume from a state without shard counts
            self.open[ordinal]["waiting"] -= 1
            self._settle(ordinal)

    def read(self, ordinal: int) -> None:
        if ordinal in self.open:
            self.open[ordinal]["read"] = True
            self._settle(ordinal)

    def state(self) -> dict[int, dict]:
        return {o: {**s, "bad": dict(s["bad"])} for o, s in self.open.items()}

    def restore(self, state: dict[int, dict] | None) -> None:
        """Continue from a saved batch's state (see zsnr.data.stream: the re-read part is replaced by it).
        None (a position saved without it): the shards being read were cut, and are not judged this time."""
        if state is None:
            for shard in self.open.values():
                shard["cut"] = True
        else:
            self.open = {int(o): {**s, "bad": dict(s["bad"])} for o, s in state.items()}
        self.muted = False

    def _settle(self, ordinal: int) -> None:
        shard = self.open[ordinal]
        if not shard["read"] or shard["waiting"] > 0:
            return
        del self.open[ordinal]
        bad, seen = sum(shard["bad"].values()), shard["seen"]
        if self.muted or shard.get("cut") or bad <= self.max_bad_fraction * seen:
            return
        raise BadDataError(
            f"shard {shard['url']}{self.where}: {bad} bad samples of {seen} read ({bad / seen:.1%}): "
            f"{shard['bad']}, above data.max_bad_fraction={self.max_bad_fraction} (judged per shard). "
            "Fix or remove this shard, or raise data.max_bad_fraction."
        )
