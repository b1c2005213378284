"""The per-worker sample stream: shards -> filter on json -> block shuffle -> decode -> batches.

Order of work is the point: metadata filters run before any image is decoded, the shuffle holds compressed
bytes, and only accepted, shuffled samples are decoded. Each batch carries
  batch["stats"]   counts since this worker's previous batch (see zsnr.data.stats)
  batch["resume"]  {"epoch", "worker", "token", "batches", "shards", "buffered"}: where this worker's stream
                   stands after the batch ("shards": the counts of the shards being read, for ShardVerdicts;
                   "buffered": the [ordinal, index] of the samples waiting in bucket buffers)
A token [ordinal, raw_index, j] means: the shuffle block that starts at sample `raw_index` of the worker's
`ordinal`-th shard, of which j samples were taken. Blocks are permuted by a seed that depends only on
where they start, so re-reading from a token, with the buffered samples read again into their buffers,
reproduces the stream exactly (zsnr.data.resume). Items go to the buffer of their shape (zsnr.data.buckets:
one shape without data.buckets) and a batch is one full buffer; a single pass ends with the partial ones.
With report_end set (zsnr.data.resume sets it), a worker's stream ends with {END_OF_STREAM: True, "stats"}: the
counts read after its last batch, so that a pass that yields no batch still reports what it read.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from zsnr.data.buckets import BucketBuffers, BucketSpec, bucket_sizes
from zsnr.data.filters import LaionFilter
from zsnr.data.http_shards import HttpOptions
from zsnr.data.position import StreamPosition, WorkerCursor, report
from zsnr.data.samples import SampleReader, Tokenizer, collate
from zsnr.data.shards import BadData, ShardPlan, Source, read_shard
from zsnr.data.stats import DataStats, ShardVerdicts

DECODE_MODES = ("images", "latents")
END_OF_STREAM = "end_of_stream"


class ShardStream(IterableDataset):
    """An IterableDataset of collated batches (batch it no further: DataLoader(batch_size=None))."""

    def __init__(
        self,
        sources: Sequence[Source],
        *,
        batch_size: int,
        resolution: int = 512,
        shuffle_buffer: int = 1000,
        resampled: bool = False,
        epoch_length: int | None = None,
        seed: int = 0,
        filters: LaionFilter | None = None,
        random_crop: bool = False,
        random_flip: bool = False,
        max_bad_fraction: float = 0.05,
        tokenizer: Tokenizer | None = None,
        decode: str = "images",
        rank: int = 0,
        world_size: int = 1,
        max_bad_shard_fraction: float = 0.1,
        http: HttpOptions | None = None,
        buckets: BucketSpec | None = None,
    ):
        if decode not in DECODE_MODES:
            raise ValueError(f"decode={decode!r} is not one of {DECODE_MODES}")
        if batch_size < 1 or resolution < 1:
            raise ValueError(f"batch_size and resolution must be >= 1, got {batch_size} and {resolution}")
        if epoch_length is not None and epoch_length < world_size * batch_size:
            raise ValueError(
                f"epoch_length={epoch_length} samples is less than one batch per rank "
                f"(world_size {world_size} x batch_size {batch_size}); raise it or set it to null."
            )
        self.sources, self.batch_size, self.resolution = list(sources), batch_size, resolution
        self.shuffle_buffer, self.resampled, self.epoch_length = shuffle_buffer, resampled, epoch_length
        self.seed, self.random_crop, self.random_flip = seed, random_crop, random_flip
        self.filters = LaionFilter.off() if decode == "latents" else (filters or LaionFilter())
        self.max_bad_fraction, self.tokenizer, self.decode = max_bad_fraction, tokenizer, decode
        self.buckets, self.sizes = buckets, bucket_sizes(resolution, buckets)
        self.reader = SampleReader(decode, self.filters, self.sizes, random_crop, random_flip)
        self.rank, self.world_size = rank, world_size
        self.max_bad_shard_fraction, self.http = max_bad_shard_fraction, http or HttpOptions()
        self.position = StreamPosition()  # set by zsnr.data.resume before each epoch
        self.report_end = False
        self._seed: int | str = seed

    @property
    def finite(self) -> bool:
        """One exact pass per epoch; otherwise the stream is endless and epochs are epoch_length long."""
        return not self.resampled and self.epoch_length is None

    def batches_per_rank(self) -> int | None:
        return None if self.epoch_length is None else self.epoch_length // (self.world_size * self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        physical, num_workers = (info.id, info.num_workers) if info else (0, 1)
        # Rotate roles so that the DataLoader's first request goes to the worker that was next when the
        # position was saved: the resumed batch order then equals the uninterrupted one.
        worker = (physical + self.position.last_worker + 1) % num_workers
        g = self.rank * num_workers + worker
        # a stream that could not continue exactly goes on with fresh randomness (zsnr.data.position)
        self._seed = self.position.seed(self.seed)
        plan = ShardPlan(self.sources, self._seed, self.resampled, g, self.world_size * num_workers)
        token, stop, quota, done = self._start(plan, worker, num_workers)
        if quota is not None and done >= quota:
            return
        where = f" by rank {self.rank} worker {worker}"
        stats = DataStats(where, self.filters.counter_names(), self.max_bad_shard_fraction)
        # Re-reading from a saved token counts again what the saved batch's counts already held (its shuffle
        # block, and what was read ahead): until the first sample decodes, exactly that is read, then dropped.
        saved = self.position.workers.get(worker)
        self._recounting = saved is not None
        self._shards = ShardVerdicts(self.max_bad_fraction, where, muted=self._recounting)
        self._saved_shards = saved.shards if saved else None
        samples = self._shuffled(self._records(plan, token[0], token[1], stop, stats), plan, g, token)
        tag = (self.position.epoch, worker)
        buffers = BucketBuffers(self.batch_size)
        for item in self.reader.reread(
            saved.buffered if saved else (), lambda o: next(plan.tasks(o)).url, self.http, f"{self._seed}/{g}"
        ):
            buffers.add(item)  # fewer than a batch per bucket: nothing comes out
        yield from self._batches(samples, stats, g, tag, token, done, quota, buffers)
        stats.check_shards(final=self.finite)
        if self.report_end:
            yield {END_OF_STREAM: True, "stats": {} if self._recounting else stats.delta()}

    def _start(
        self, plan: ShardPlan, worker: int, num_workers: int
    ) -> tuple[tuple[int, ...], int | None, int | None, int]:
        """(token to start from, ordinal to stop at, batch quota for this epoch, batches already delivered)."""
        saved = self.position.workers.get(worker)
        done = saved.batches if saved else 0
        if self.finite:
            epoch = self.position.epoch
            token = saved.token if saved else (plan.first_ordinal(epoch), 0, 0)
            return token, plan.first_ordinal(epoch + 1), None, done
        token = saved.token if saved else (0, 0, 0)
        quota = (
            None if self.epoch_length is None else len(range(worker, self.batches_per_rank(), num_workers))
        )
        return token, None, quota, done

    def _batches(
        self,
        samples: Iterator,
        stats: DataStats,
        g: int,
        tag: tuple[int, int],
        token: Sequence[int],
        done: int,
        quota: int | None,
        buffers: BucketBuffers,
    ) -> Iterator[dict[str, Any]]:
        """Decode, buffer by bucket and collate. A full batch waits until the next sample decodes (or the
        stream ends), so the counts of everything read before it, bad images included, travel with a batch;
        the last batch of a quota too, so that where the counts stand after a batch does not depend on
        whether the stream goes on. Its position is the token after the sample that filled it, and the
        samples then waiting in the other buckets."""
        last, pending = token, None

        def batch(content: list, at: Sequence[int], buffered: list) -> dict[str, Any]:
            nonlocal done
            done += 1
            cursor = WorkerCursor(tuple(at), done, self._shards.state(), tuple(map(tuple, buffered)))
            return self._collate(content, stats, report(*tag, cursor))

        for record, position in samples:
            try:
                item = self.reader.decode(record, f"{self._seed}/{g}")
            except BadData as exn:
                stats.bad(exn.kind, record["url"], f"{record['key']}: {exn}")
                self._shards.bad(record["cursor"][0], exn.kind)
                self._shards.decoded(record["cursor"][0])
                continue
            self._shards.decoded(record["cursor"][0])
            self._end_recount(stats)
            if pending is not None:
                yield batch(*pending)
                pending = None
                if quota is not None and done >= quota:
                    return
            last = position
            full = buffers.add(item)
            if full is not None:
                pending = (full, last, buffers.cursors())
        if pending is not None:
            yield batch(*pending)
        if buffers.buffers:  # resumed among these: the saved batch counted all that was read
            self._end_recount(stats)
        for items in buffers.drain():  # the end of a single pass: what is left, one batch per bucket
            yield batch(items, last, buffers.cursors())

    def _end_recount(self, stats: DataStats) -> None:
        """After a resume, what was read again up to here is what the saved batch's counts already hold."""
        if self._recounting:
            stats.delta()  # where the saved batch's counts stood: from here on, counts are new
            self._shards.restore(self._saved_shards)
            self._recounting = False

    def _records(
        self, plan: ShardPlan, start: int, skip: int, stop: int | None, stats: DataStats
    ) -> Iterator:
        """Accepted samples of this worker's shards from ordinal `start` (skipping `skip` raw samples)."""
        empty_run, limit = 0, 2 * sum(len(s.urls) for s in self.sources) + 20
        for task in plan.tasks(start):
            if stop is not None and task.ordinal >= stop:
                return
            found, shard = False, task.ordinal
            self._shards.opened(shard, task.url)

            def on_bad(kind: str, url: str, detail: str, shard: int = shard) -> None:
                stats.bad(kind, url, detail)
                self._shards.bad(shard, kind)

            for index, sample in enumerate(self._read(task.url, stats, on_bad)):
                if (task.ordinal == start and index < skip) or index % task.stride != task.offset:
                    continue
                record = self.reader.scan(sample, stats, on_bad)
                self._shards.seen(shard, accepted=record is not None)
                if record is not None:
                    found = True
                    yield record, (task.ordinal, index)
            self._shards.read(shard)
            empty_run = 0 if found else empty_run + 1
            if empty_run >= limit:
                raise RuntimeError(
                    f"{empty_run} shards in a row gave no usable sample{stats.where} (counts so far: "
                    f"{dict(stats.counts)}). Check the shard URLs and the filter thresholds (data.filters)."
                )

    def _read(self, url: str, stats: DataStats, on_bad: Callable) -> Iterator[dict[str, Any]]:
        """One shard's samples; a shard that fails counts against data.max_bad_shard_fraction."""
        stats.shard_started()
        yield from read_shard(url, on_bad, stats.shard_failed, self.http)
        stats.check_shards()

    def _shuffled(self, records: Iterator, plan: ShardPlan, g: int, token: Sequence[int]) -> Iterator:
        """Block shuffle: permute each run of shuffle_buffer accepted samples; yields (record, token)."""
        size = max(1, self.shuffle_buffer)
        block, start, skip, cursor = [], (token[0], token[1]), token[2], None
        for record, cursor in records:
            if block and plan.pass_of(cursor[0]) != plan.pass_of(block[0]["cursor"][0]):
                # a pass boundary closes the block: passes stay exact even when they run back to back
                end = (block[-1]["cursor"][0], block[-1]["cursor"][1] + 1)
                yield from self._emit(block, start, end, skip, g)
                block, start, skip = [], end, 0
            record["cursor"] = cursor
            block.append(record)
            if len(block) == size:
                end = (cursor[0], cursor[1] + 1)
                yield from self._emit(block, start, end, skip, g)
                block, start, skip = [], end, 0
        if block:
            yield from self._emit(block, start, (cursor[0], cursor[1] + 1), skip, g)

    def _emit(self, block: list, start: tuple, end: tuple, skip: int, g: int) -> Iterator:
        order = list(range(len(block)))
        if len(block) > 1:
            random.Random(f"zsnr-shuffle/{self._seed}/{g}/{start[0]}/{start[1]}").shuffle(order)
        for j in range(skip, len(block)):
            yield block[order[j]], ((*start, j + 1) if j + 1 < len(block) else (*end, 0))

    def _collate(
        self, items: list[dict[str, Any]], stats: DataStats, resume: dict[str, Any]
    ) -> dict[str, Any]:
        batch = collate(items, self.tokenizer)
        batch["stats"] = stats.delta()
        batch["failed_shards"] = stats.take_failed_shards()  # [(url, kind)]: the rank-wide limit names them
        batch["resume"] = resume
        return batch
