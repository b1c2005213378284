"""Counters of what a worker read, rejected and skipped, and the bad-data limit.

DataLoader workers are separate processes, so each worker keeps its own DataStats and attaches the counts
accumulated since its previous batch to the next batch under batch["stats"] (a flat {name: int} dict):
  seen                 samples read from the tars (this worker's share)
  accepted             samples that passed the filters
  shards/attempted     shards this worker started reading; shards/failed: those that failed (below)
  rejected/<filter>    dropped by a LAION filter (missing_<filter>: the field was absent, on_missing=reject)
  bad/<kind>           skipped bad data: truncated_tar, shard_open, image_decode, json_missing, json_broken,
                       empty_member, caption_encoding, missing_image, missing_latent, tensor_decode, ...
                       and shard failures over http (zsnr.data.http_shards.HTTP_KINDS: http_404, http_5xx,
                       connection_dropped, stalled, ...), each counted once per failed shard
Shard failures (a shard that does not open or breaks off: shard_open, truncated_tar, HTTP_KINDS) have their own
limit, max_bad_shard_fraction of the shards a worker attempted (see check_shards), besides counting as one bad
event each. The datamodule sums them in the main process (WebDataModule.stats); summing batch["stats"] over ranks gives
the global numbers.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence

from zsnr.data.http_shards import HTTP_KINDS

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
) + HTTP_KINDS
# Judge the failed-shard fraction only once this many shards were attempted (the end of a finite stream is
# always judged): a worker's first shard failing is not "100% of the shards".
MIN_SHARDS_FOR_SHARD_CHECK = 20
MAX_LISTED_SHARDS = 10
SHARD_FAILURE_KINDS = ("shard_open", "truncated_tar") + HTTP_KINDS
SHARD_COUNTERS = ("shards/attempted", "shards/failed")


class BadDataError(RuntimeError):
    """Too much of the data is broken: stop instead of training on what is left."""


class DataStats:
    def __init__(self, where: str = "", filter_names: list[str] = (), max_bad_shard_fraction: float = 0.1):
        self.where = where
        # every key from the start, so each batch's stats have the same keys (summable across ranks)
        names = (
            ["seen", "accepted"] + [f"rejected/{n}" for n in filter_names] + [f"bad/{k}" for k in BAD_KINDS]
        )
        self.counts: Counter[str] = Counter(dict.fromkeys(names, 0))
        self._reported: Counter[str] = Counter()
        self.logged = 0
        self.max_bad_shard_fraction = max_bad_shard_fraction
        self.counts.update(dict.fromkeys(SHARD_COUNTERS, 0))
        self.failed_shards: dict[str, tuple[str, str]] = {}  # url -> (kind, detail) of its last failure
        self.new_failed_shards: list[tuple[str, str]] = []

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

    # ---- shard-level failures: a shard that does not open or breaks off is judged per shard, not per sample
    def shard_started(self) -> None:
        self.counts["shards/attempted"] += 1

    def shard_failed(self, kind: str, url: str, detail: str) -> None:
        """A shard could not be read to its end: counted as bad/<kind>, logged, and judged against the limit."""
        self.counts["shards/failed"] += 1
        self.failed_shards[url] = (kind, detail)
        self.new_failed_shards.append((url, kind))
        self.check_shards()
        self.bad(kind, url, detail)

    def check_shards(self, final: bool = False) -> None:
        """This worker's failed / attempted shards against max_bad_shard_fraction (ShardFailureGuard judges
        them over the whole rank and all epochs); `final` judges a finite pass's end below the minimum too."""
        check_shard_fraction(self.counts, self.max_bad_shard_fraction, self.failed_shards, self.where, final)

    def take_failed_shards(self) -> list[tuple[str, str]]:
        """(url, kind) of the shards that failed since the previous call (attached to each batch)."""
        out, self.new_failed_shards = self.new_failed_shards, []
        return out


class ShardVerdicts:
    """data.max_bad_fraction, judged per shard: once a shard has been read to its end and every sample of it
    that passed the filters was decoded, BadDataError is raised if its bad samples (bad/* events other than
    SHARD_FAILURE_KINDS) are more than max_bad_fraction of the samples read from it.

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
        if kind not in SHARD_FAILURE_KINDS and ordinal in self.open:
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


def check_shard_fraction(
    counts: Mapping[str, int],
    max_fraction: float,
    failed_shards: Mapping[str, tuple[str, str]],
    where: str,
    final: bool = False,
) -> None:
    """Raise BadDataError naming the failed shards when shards/failed exceeds max_fraction of shards/attempted.

    Judged from MIN_SHARDS_FOR_SHARD_CHECK attempted shards on, or whenever `final`. A shard read several times
    (several passes, or shared by workers) counts each time. failed_shards: url -> (kind, detail) to list.
    """
    failed, attempted = counts.get("shards/failed", 0), counts.get("shards/attempted", 0)
    if failed == 0 or failed <= max_fraction * attempted:
        return
    if attempted < MIN_SHARDS_FOR_SHARD_CHECK and not final:
        return
    kinds = ", ".join(f"{k}: {counts[f'bad/{k}']}" for k in SHARD_FAILURE_KINDS if counts.get(f"bad/{k}"))
    listed = list(failed_shards.items())[-MAX_LISTED_SHARDS:]
    lines = "\n".join(
        f"  {url}: {kind}" + (f" ({detail})" if detail else "") for url, (kind, detail) in listed
    )
    raise BadDataError(
        f"{failed} of {attempted} shards failed{where} ({failed / max(attempted, 1):.0%}; {kinds}), above "
        f"data.max_bad_shard_fraction={max_fraction}. Failed shards (the last {len(listed)}):\n{lines}\n"
        "Check that these URLs exist and the server answers (data.http_timeout_s, data.http_retries), "
        "fix data.urls, or raise data.max_bad_shard_fraction."
    )


class ShardFailureGuard:
    """The shard limit over all a rank consumed: every worker, every epoch, and the counts of a resumed run.

    Workers are re-created each epoch, and a LAION worker reads only a few shards per epoch, so the per-worker
    rule alone would rarely reach its minimum; the summed stats of the consumed batches do.
    """

    def __init__(self, max_bad_shard_fraction: float):
        self.max_bad_shard_fraction = max_bad_shard_fraction
        self.recent: dict[str, tuple[str, str]] = {}

    def consumed(self, totals: Mapping[str, int], failed_shards: Sequence[tuple[str, str]] = ()) -> None:
        """totals: the rank's summed stats so far; failed_shards: (url, kind) that came with this batch."""
        for url, kind in failed_shards:
            self.recent.pop(url, None)
            self.recent[url] = (kind, "")
        while len(self.recent) > MAX_LISTED_SHARDS:
            self.recent.pop(next(iter(self.recent)))
        check_shard_fraction(
            totals, self.max_bad_shard_fraction, self.recent, " on this rank (all workers and epochs)"
        )


def summary_line(counts: Mapping[str, int]) -> str:
    """One line for a log: "seen N, accepted M (p%), rejected: <filter> n ..., bad: <kind> n ..." (zeros left out)."""
    seen, accepted = counts.get("seen", 0), counts.get("accepted", 0)
    parts = [f"seen {seen}", f"accepted {accepted} ({accepted / max(seen, 1):.1%})"]
    for prefix in ("rejected", "bad"):
        nonzero = [f"{name[len(prefix) + 1 :]} {n}" for name, n in sorted(counts.items())
                   if name.startswith(f"{prefix}/") and n]  # fmt: skip
        parts.append(f"{prefix}: {', '.join(nonzero) if nonzero else 'none'}")
    if "shards/attempted" in counts:
        parts.append(f"shards failed {counts.get('shards/failed', 0)} of {counts['shards/attempted']}")
    return ", ".join(parts)
