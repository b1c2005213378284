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
from collections.abc import Mapping

log = logging.getLogger("zsnr.data")

# Judge the bad fraction only once this many samples were seen, so one early bad file is not "100% bad";
# the end of a finite stream is always judged.
MIN_SEEN_FOR_BAD_CHECK = 200
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
    def __init__(self, max_bad_fraction: float, where: str = "", filter_names: list[str] = ()):
        self.max_bad_fraction, self.where = max_bad_fraction, where
        # every key from the start, so each batch's stats have the same keys (summable across ranks)
        names = (
            ["seen", "accepted"] + [f"rejected/{n}" for n in filter_names] + [f"bad/{k}" for k in BAD_KINDS]
        )
        self.counts: Counter[str] = Counter(dict.fromkeys(names, 0))
        self.bad_by_shard: dict[str, Counter[str]] = {}
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
        self.bad_by_shard.setdefault(url, Counter())[kind] += 1
        if self.logged < MAX_LOGGED_BAD:
            self.logged += 1
            more = (
                " (further bad-data messages of this worker are not logged)"
                if self.logged == MAX_LOGGED_BAD
                else ""
            )
            log.warning("skipping bad data (%s) in shard %s: %s%s", kind, url, detail, more)
        if self.total_seen >= MIN_SEEN_FOR_BAD_CHECK:
            self.check()

    @property
    def total_seen(self) -> int:
        return self.counts["seen"]

    @property
    def total_bad(self) -> int:
        return sum(n for name, n in self.counts.items() if name.startswith("bad/"))

    def check(self) -> None:
        """Raise BadDataError naming the worst shards when bad / seen exceeds max_bad_fraction."""
        bad, seen = self.total_bad, self.total_seen
        if bad == 0 or bad <= self.max_bad_fraction * seen:
            return
        worst = sorted(self.bad_by_shard.items(), key=lambda kv: -sum(kv[1].values()))[:5]
        lines = "\n".join(f"  {url}: {sum(c.values())} bad ({dict(c)})" for url, c in worst)
        raise BadDataError(
            f"{bad} bad data events for {seen} samples read{self.where} "
            f"({bad / max(seen, 1):.1%}), above data.max_bad_fraction={self.max_bad_fraction}. "
            f"Worst shards:\n{lines}\nFix or remove these shards, or raise data.max_bad_fraction."
        )

    def delta(self) -> dict[str, int]:
        """Counts since the previous call (attached to each batch)."""
        out = {name: n - self._reported[name] for name, n in self.counts.items()}
        self._reported = Counter(self.counts)
        return out


def summary_line(counts: Mapping[str, int]) -> str:
    """One line for a log: "seen N, accepted M (p%), rejected: <filter> n ..., bad: <kind> n ..." (zeros left out)."""
    seen, accepted = counts.get("seen", 0), counts.get("accepted", 0)
    parts = [f"seen {seen}", f"accepted {accepted} ({accepted / max(seen, 1):.1%})"]
    for prefix in ("rejected", "bad"):
        nonzero = [f"{name[len(prefix) + 1 :]} {n}" for name, n in sorted(counts.items())
                   if name.startswith(f"{prefix}/") and n]  # fmt: skip
        parts.append(f"{prefix}: {', '.join(nonzero) if nonzero else 'none'}")
    return ", ".join(parts)
