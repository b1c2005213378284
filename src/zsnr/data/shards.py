"""Shard lists: URL expansion, weighted sources, which shards a worker reads, tar reading, shard writing.

Shard order is a pure function of (seed, pass, rank, worker), so any position in the stream can be named by
an ordinal into the worker's shard sequence: that is what makes exact resume possible.
"""

from __future__ import annotations

import itertools
import os
import random
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import webdataset as wds
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from zsnr.data.http_shards import HttpOptions, HttpShard, ShardFailure, is_http

UrlSpec = str | Sequence[str] | Sequence[Mapping[str, Any]]


@dataclass(frozen=True)
class Source:
    urls: tuple[str, ...]
    weight: float = 1.0


@dataclass(frozen=True)
class ShardTask:
    """One shard to read: keep the samples whose index i in the shard has i % stride == offset."""

    ordinal: int
    url: str
    stride: int = 1
    offset: int = 0


def _expand(urls: str | Sequence[str]) -> list[str]:
    if isinstance(urls, str):
        return list(expand_urls(urls))
    return [u for item in urls for u in expand_urls(str(item))]


def parse_sources(urls: UrlSpec, allow_pipe: bool = False) -> list[Source]:
    """Turn a brace pattern, a list of patterns, or a list of {urls, weight} into weighted sources."""
    if isinstance(urls, str) or (isinstance(urls, Sequence) and all(isinstance(u, str) for u in urls)):
        sources = [Source(tuple(_expand(urls)))]
    elif isinstance(urls, Sequence) and all(isinstance(u, Mapping) for u in urls):
        sources = []
        for item in urls:
            if "urls" not in item:
                raise ValueError(
                    f"a data source needs 'urls' (and optionally 'weight'); got keys {list(item)}"
                )
            weight = float(item.get("weight", 1.0))
            if not weight > 0:
                raise ValueError(f"source weight must be > 0, got {weight} for {item['urls']!r}")
            sources.append(Source(tuple(_expand(item["urls"])), weight))
    else:
        raise TypeError(
            f"urls must be a string, a list of strings or a list of {{urls, weight}} dicts; got {urls!r}"
        )
    for source in sources:
        if not source.urls:
            raise ValueError(f"a data source expanded to no shards: {urls!r}")
        for url in source.urls:
            check_url(url, allow_pipe)
    return sources


def check_url(url: str, allow_pipe: bool) -> None:
    if url.startswith("pipe:") and not allow_pipe:
        raise ValueError(
            f"shard URL {url!r} runs a shell command; a shard list is data and must not run commands "
            "unless you opt in: set data.allow_pipe=true if you trust this list."
        )


def missing_local_shards(sources: Iterable[Source]) -> list[str]:
    """Local paths (no scheme) that do not exist; checked before training starts."""
    missing = []
    for source in sources:
        for url in source.urls:
            path = url[len("file:") :] if url.startswith("file:") else url
            if "://" not in path and ":" not in path.split("/")[0] and not os.path.exists(path):
                missing.append(url)
    return missing


class ShardPlan:
    """Which shards global worker g (of G = world_size * num_workers) reads, as an ordinal-indexed sequence.

    Exact mode (resampled=False): each pass p is a permutation of all shards seeded by (seed, p). With at
    least G shards, worker g takes every G-th shard of it; with fewer, the workers sharing a shard split it by
    sample index, so no sample is dropped or read twice. A source weight must then be a whole number: the
    shards of a weight-2 source appear twice per pass. Resampled mode draws shards with replacement (source by
    weight, then a shard uniformly), from a stream seeded per worker.
    """

    def __init__(self, sources: Sequence[Source], seed: int, resampled: bool, worker: int, num_workers: int):
        self.sources, self.seed, self.resampled = list(sources), seed, resampled
        self.worker, self.num_workers = worker, num_workers
        if not 0 <= worker < num_workers:
            raise ValueError(f"worker index {worker} out of range for {num_workers} workers")
        if not resampled:
            self.urls = []
            for source in self.sources:
                if source.weight != int(source.weight):
                    raise ValueError(
                        f"source weight {source.weight} is not a whole number; in exact (non-resampled) mode "
                        "a weight says how many times each shard is read per pass. Use resampled=true for "
                        "fractional mixing weights."
                    )
                self.urls += list(source.urls) * int(source.weight)
            n, g = len(self.urls), worker
            self.per_pass = len(range(g, n, num_workers)) if n >= num_workers else 1

    def pass_of(self, ordinal: int) -> int:
        return 0 if self.resampled else ordinal // self.per_pass

    def first_ordinal(self, pass_index: int) -> int:
        return 0 if self.resampled else pass_index * self.per_pass

    def tasks(self, start: int = 0) -> Iterator[ShardTask]:
        """Shard tasks from ordinal `start` on (an endless sequence; the caller decides where to stop)."""
        if self.resampled:
            yield from itertools.islice(self._resampled(), start, None)
            return
        n, g, G = len(self.urls), self.worker, self.num_workers
        order, order_pass = [], None
        for ordinal in itertools.count(start):
            p, i = divmod(ordinal, self.per_pass)
            if p != order_pass:  # one shuffle per pass, not per shard (LAION has ~10^5 shards)
                order, order_pass = list(range(n)), p
                random.Random(f"zsnr-shards/{self.seed}/{p}").shuffle(order)
            if n >= G:
                yield ShardTask(ordinal, self.urls[order[g + i * G]])
            else:  # fewer shards than workers: workers g, g+n, g+2n... share shard g % n
                s = g % n
                yield ShardTask(ordinal, self.urls[order[s]], stride=len(range(s, G, n)), offset=g // n)

    def _resampled(self) -> Iterator[ShardTask]:
        rng = random.Random(f"zsnr-resampled/{self.seed}/{self.worker}")
        weights = [s.weight for s in self.sources]
        for ordinal in itertools.count():
            source = rng.choices(self.sources, weights=weights)[0]
            yield ShardTask(ordinal, source.urls[rng.randrange(len(source.urls))])


class BadData(Exception):
    """A problem with one sample or shard; `kind` is its counter name."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class EndAwareTarInfo(tarfile.TarInfo):
    """Notes on the TarFile how its members ended: "marker" at the end-of-archive blocks, else the header error.

    tarfile treats a header missing at end of file (a tar cut between two members) like the end marker;
    read_shard tells them apart with this.
    """

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            tar.zsnr_end = "marker"
            raise
        except tarfile.HeaderError as exn:
            tar.zsnr_end = type(exn).__name__
            raise


def open_shard(url: str, http: HttpOptions | None = None) -> Any:
    """A binary stream of the shard: http(s) through HttpShard (timeouts, retries), the rest by webdataset."""
    if is_http(url):
        return HttpShard(url, http or HttpOptions())
    return wds.gopen(url, "rb")


def read_shard(
    url: str,
    on_bad: Callable[[str, str, str], None],
    on_failed: Callable[[str, str, str], None] | None = None,
    http: HttpOptions | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the samples of one tar shard as {"__key__", "__url__", ext: bytes}, in file order.

    Members are grouped by key (the name up to the first dot), as webdataset does. A shard that cannot be
    opened or read to its end is reported once through on_failed(kind, url, detail) (on_bad when not given),
    kind being shard_open, truncated_tar or one of http_shards.HTTP_KINDS; the samples read before are kept.
    A problem inside one sample (a duplicate member) goes to on_bad.
    """
    on_failed = on_failed or on_bad
    try:
        stream = open_shard(url, http)
    except ShardFailure as exn:
        on_failed(exn.kind, url, str(exn))
        return
    except Exception as exn:  # missing file, failed command
        on_failed("shard_open", url, repr(exn))
        return
    current: dict[str, Any] | None = None
    failure: tuple[str, str] | None = None
    try:
        with tarfile.open(fileobj=stream, mode="r|*", tarinfo=EndAwareTarInfo) as tar:
            for info in tar:
                if not info.isreg():
                    continue
                key, ext = base_plus_ext(info.name)
                if key is None or os.path.basename(info.name).startswith("__"):
                    continue
                if current is None or current["__key__"] != key:
                    if current is not None:
                        yield current  # complete: hand it out before reading on (the rest may be cut off)
                    current = {"__key__": key, "__url__": url}
                data = tar.extractfile(info).read()
                tar.members = []  # streaming: do not keep every header in memory
                ext = ext.lower()
                if ext in current:
                    on_bad("duplicate_member", url, info.name)
                    continue
                current[ext] = data
            if getattr(tar, "zsnr_end", None) != "marker":  # tarfile ends quietly at a cut between members
                raise tarfile.ReadError(
                    f"the tar ends without its end-of-archive blocks after byte {tar.offset}: it is cut short"
                )
        if current is not None:
            yield current
    except ShardFailure as exn:  # the server stalled or dropped the connection past the retries
        failure = (exn.kind, str(exn))
    except (tarfile.TarError, OSError, EOFError) as exn:
        # the sample being read when the shard broke is incomplete: drop it, keep the ones before
        failure = ("truncated_tar", repr(exn))
    finally:
        try:
            stream.close()
        except (
            Exception
        ) as exn:  # a failed pipe: command reports its exit status here: the cause, not the tar
            failure = ("shard_open", repr(exn))
        if failure is not None:  # once per shard
            on_failed(failure[0], url, failure[1])


def write_shards(
    samples: Iterable[Mapping[str, Any]],
    out_pattern: str,
    maxcount: int = 10000,
    total: int | None = None,
    progress: bool = True,
    desc: str = "writing shards",
    **writer_kwargs: Any,
) -> list[str]:
    """Write webdataset samples ({"__key__", ext: value}) to tar shards named out_pattern % index.

    Values are encoded by extension as webdataset does (bytes as they are, str as UTF-8, dict as json,
    tensors as .pth, arrays as .npy). Returns the shard paths written, with a tqdm progress bar meanwhile.
    writer_kwargs go to webdataset's TarWriter (e.g. mtime=0.0 for byte-identical shards).
    """
    from tqdm import tqdm

    if "%" not in out_pattern:
        raise ValueError(
            f"out_pattern needs a %-format for the shard index, e.g. 'shard-%06d.tar'; got {out_pattern!r}"
        )
    os.makedirs(os.path.dirname(os.path.abspath(out_pattern)), exist_ok=True)
    paths = []
    with (
        wds.ShardWriter(out_pattern, maxcount=maxcount, verbose=0, **writer_kwargs) as sink,
        tqdm(total=total, desc=desc, unit="sample", disable=not progress) as bar,
    ):
        for sample in samples:
            sink.write(dict(sample))
            if not paths or paths[-1] != sink.fname:
                paths.append(sink.fname)
            bar.update(1)
    return paths


def brace_pattern(paths: Sequence[str]) -> str:
    """The brace-expansion pattern for shard paths that differ only in a zero-padded counter."""
    if len(paths) == 1:
        return paths[0]
    first, last = paths[0], paths[-1]
    head = os.path.commonprefix([first, last])
    head = head.rstrip("0123456789")
    tail = first[len(head) :].lstrip("0123456789")
    lo, hi = first[len(head) : len(first) - len(tail)], last[len(head) : len(last) - len(tail)]
    return f"{head}{{{lo}..{hi}}}{tail}"
