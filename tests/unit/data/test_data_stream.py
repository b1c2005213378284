"""The stream: exactly once over 2 simulated ranks x 2 workers, shuffling, endless modes, latents, stats."""

from __future__ import annotations

import itertools
import os
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from zsnr.data import LaionFilter, ShardStream, latents, parse_sources, to_model_range, write_shards
from zsnr.data.position import StreamPosition, WorkerCursor


def stream(urls, **kwargs) -> ShardStream:
    kwargs = {"batch_size": 8, "resolution": 32, "shuffle_buffer": 16, **kwargs}
    return ShardStream(parse_sources(urls), **kwargs)


def read_all(dataset: ShardStream, num_workers: int) -> list[dict]:
    return list(DataLoader(dataset, batch_size=None, num_workers=num_workers))


@pytest.mark.parametrize("fixture", ["six_shards", "three_shards"])
def test_exactly_once_over_two_ranks_and_two_workers(fixture, request):
    data = request.getfixturevalue(fixture)
    keys = []
    for rank in range(2):
        batches = read_all(stream(data.urls, rank=rank, world_size=2), num_workers=2)
        keys += [k for b in batches for k in b["key"]]
    assert len(keys) == len(set(keys)) and set(keys) == data.accepted


def test_single_process_reads_everything_with_correct_stats(six_shards):
    batches = read_all(stream(six_shards.urls), num_workers=0)
    keys = [k for b in batches for k in b["key"]]
    assert sorted(keys) == sorted(six_shards.accepted)
    assert all(len(b["key"]) == 8 for b in batches[:-1])  # only the last batch of a pass may be short
    stats = sum((Counter(b["stats"]) for b in batches), Counter())
    assert stats["seen"] == len(six_shards.meta) and stats["accepted"] == len(keys)
    # each synthetic sample fails at most one filter, so the counts are the generator's
    reasons = Counter()
    for meta in six_shards.meta.values():
        if not meta["caption"]:
            reasons["caption"] += 1
        elif "punsafe" not in meta:
            reasons["missing_punsafe"] += 1
        else:
            for field, name, bad in [("original_width", "width", lambda v: v < 512), ("original_height", "height", lambda v: v < 512),
                                     ("punsafe", "punsafe", lambda v: v >= 0.1), ("pwatermark", "pwatermark", lambda v: v >= 0.5),
                                     ("aesthetic", "aesthetic", lambda v: v < 4.5)]:  # fmt: skip
                if bad(meta[field]):
                    reasons[name] += 1
    assert {k: v for k, v in stats.items() if k.startswith("rejected/") and v} == {
        f"rejected/{k}": v for k, v in reasons.items()
    }
    assert len(reasons) == 7  # every filter rejected something


def test_batches_are_uint8_images_matching_the_stored_brightness(six_shards):
    batch = read_all(stream(six_shards.urls, batch_size=32), num_workers=0)[0]
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (32, 3, 32, 32)
    x = to_model_range(batch["image"])
    assert -1 <= x.min() and x.max() <= 1
    stored = torch.tensor([six_shards.meta[k]["brightness"] for k in batch["key"]])
    assert torch.allclose(x.mean(dim=(1, 2, 3)), stored, atol=1e-4)  # 32 px shards are decoded 1:1
    assert all(
        six_shards.meta[k]["caption"] == c for k, c in zip(batch["key"], batch["caption"], strict=True)
    )


def test_shuffle_is_seeded_and_keeps_the_set(six_shards):
    order = lambda **kw: [k for b in read_all(stream(six_shards.urls, **kw), 0) for k in b["key"]]  # noqa: E731
    plain, a, b, c = order(shuffle_buffer=0), order(seed=1), order(seed=1), order(seed=2)
    assert a == b and a != c and a != plain and sorted(a) == sorted(plain)


def test_epoch_length_runs_exact_passes_back_to_back(three_shards):
    accepted = len(three_shards.accepted)
    dataset = stream(three_shards.urls, batch_size=5, epoch_length=25)
    keys = []
    for _epoch in range(8):  # each iteration is one epoch of 5 batches
        batches = read_all(dataset, 0)
        assert len(batches) == 5
        keys += [k for b in batches for k in b["key"]]
        cursor = WorkerCursor(tuple(batches[-1]["resume"]["token"]), batches=0)
        dataset.position = StreamPosition(dataset.position.epoch + 1, workers={0: cursor})
    counts = Counter(keys[: 2 * accepted])  # the first two passes hold every accepted sample twice
    assert set(counts) == three_shards.accepted and set(counts.values()) == {2}


def test_resampled_stream_is_endless_and_epoch_length_splits_it(three_shards):
    dataset = stream(three_shards.urls, resampled=True)
    keys = [k for b in itertools.islice(iter(dataset), 40) for k in b["key"]]
    assert len(keys) == 320 and set(keys) <= three_shards.accepted  # 320 > 3.5 x the data
    for rank in range(2):
        batches = read_all(
            stream(three_shards.urls, resampled=True, epoch_length=96, rank=rank, world_size=2), 2
        )
        assert len(batches) == 96 // (2 * 8)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_latent_shards(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(10):
        mean, std, text = (
            torch.randn(4, 8, 8, generator=g),
            torch.rand(4, 8, 8, generator=g),
            torch.randn(7, 16),
        )
        member = latents.encode_sample(mean, std, text, dtype)
        samples.append({"__key__": f"{i:03d}", latents.MEMBER: member, "txt": "" if i == 3 else f"caption {i}",
                        "_posterior": (mean, std, text)})  # fmt: skip
    write_shards(
        ({k: v for k, v in s.items() if k != "_posterior"} for s in samples),
        str(tmp_path / "l-%03d.tar"),
        4,
        progress=False,
    )
    urls = str(tmp_path / "l-{000..002}.tar")
    batches = read_all(stream(urls, decode="latents", batch_size=3, shuffle_buffer=0), 0)
    keys = [k for b in batches for k in b["key"]]
    assert sorted(keys) == [f"{i:03d}" for i in range(10) if i != 3]  # no caption: rejected, no json needed
    assert batches[0]["latent_mean"].shape == batches[0]["latent_std"].shape == (3, 4, 8, 8)
    assert batches[0]["text_states"].shape == (3, 7, 16) and "image" not in batches[0]
    rounded = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    names = ("latent_mean", "latent_std", "text_states")
    for name, stored in zip(names, (torch.cat([b[n] for b in batches]) for n in names), strict=True):
        for key, value in zip(keys, stored, strict=True):
            original = samples[int(key)]["_posterior"][names.index(name)]
            assert value.dtype == torch.float32 and torch.equal(value, original.to(rounded).float())


def test_a_sample_without_a_posterior_is_bad_data(tmp_path):
    good = latents.encode_sample(torch.zeros(4, 2, 2), torch.ones(4, 2, 2), torch.zeros(3, 8), "float32")
    old = {"__key__": "old", "latent.npy": np.zeros((4, 2, 2), np.float32), "txt": "x"}  # a mean-only cache
    write_shards([old, {"__key__": "new", latents.MEMBER: good, "txt": "y"}], str(tmp_path / "c-%03d.tar"),
                 progress=False)  # fmt: skip
    batches = read_all(
        stream(str(tmp_path / "c-000.tar"), decode="latents", batch_size=1, max_bad_fraction=1), 0
    )
    assert [b["key"] for b in batches] == [["new"]]
    assert sum((Counter(b["stats"]) for b in batches), Counter())["bad/missing_latent"] == 1


def test_tokenizer_runs_in_the_worker(six_shards):
    tokenizer = Tokenize()
    batch = read_all(stream(six_shards.urls, tokenizer=tokenizer), 1)[0]
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == (8, 6)
    assert batch["input_ids"][:, 0].tolist() == [len(c) for c in batch["caption"]]


class Tokenize:
    """A picklable stand-in for the text encoder's tokenizer: [len(caption), 0, ...]."""

    def __call__(self, captions: list[str]) -> torch.Tensor:
        ids = torch.zeros(len(captions), 6, dtype=torch.long)
        ids[:, 0] = torch.tensor([len(c) for c in captions])
        return ids


def test_filters_are_configurable(six_shards):
    loose = LaionFilter(
        min_width=None, min_height=None, max_punsafe=None, max_pwatermark=None, min_aesthetic=None
    )
    keys = [k for b in read_all(stream(six_shards.urls, filters=loose), 0) for k in b["key"]]
    assert set(keys) == {k for k, m in six_shards.meta.items() if m["caption"]}
    assert os.path.exists(six_shards.paths[0])
