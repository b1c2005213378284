"""Shard lists: expansion, weights, the pipe: guard, the exact split of shards over workers, tar reading."""

from __future__ import annotations

import itertools
import os
from collections import Counter

import pytest
from shard_factory import laion_sample, member_offsets, write_tar

from zsnr.data import parse_sources, write_shards
from zsnr.data.shards import ShardPlan, Source, brace_pattern, missing_local_shards, read_shard


def test_brace_and_list_and_weighted_sources():
    assert parse_sources("d/{000..009}.tar")[0].urls == tuple(f"d/{i:03d}.tar" for i in range(10))
    assert len(parse_sources(["a/{0..2}.tar", "b/x.tar"])[0].urls) == 4
    sources = parse_sources([{"urls": "a/{0..1}.tar", "weight": 3}, {"urls": ["b/0.tar"]}])
    assert [(len(s.urls), s.weight) for s in sources] == [(2, 3.0), (1, 1.0)]


def test_bad_source_lists_are_refused():
    with pytest.raises(ValueError, match="allow_pipe"):
        parse_sources("pipe:curl -s http://example.com/{0..3}.tar")
    assert parse_sources("pipe:cat x.tar", allow_pipe=True)[0].urls == ("pipe:cat x.tar",)
    with pytest.raises(ValueError, match="allow_pipe"):
        parse_sources([{"urls": "a.tar"}, {"urls": "pipe:rm -rf /tmp/x"}])
    with pytest.raises(ValueError, match="weight must be > 0"):
        parse_sources([{"urls": "a.tar", "weight": 0}])
    with pytest.raises(ValueError, match="needs 'urls'"):
        parse_sources([{"url": "a.tar"}])
    with pytest.raises(TypeError):
        parse_sources(3)


def covered(plan_for, num_shards: int, samples_per_shard: int, workers: int, pass_index: int) -> Counter:
    """How often each (shard, sample) is read in one pass by all workers together."""
    seen = Counter()
    for g in range(workers):
        plan = plan_for(g)
        first, last = plan.first_ordinal(pass_index), plan.first_ordinal(pass_index + 1)
        for task in itertools.islice(plan.tasks(first), last - first):
            for i in range(samples_per_shard):
                if i % task.stride == task.offset:
                    seen[(task.url, i)] += 1
    return seen


@pytest.mark.parametrize(
    ("num_shards", "workers"), [(7, 1), (3, 4), (4, 4), (13, 4), (5, 6), (2, 8), (10, 3)]
)
def test_every_sample_once_per_pass(num_shards, workers):
    urls = tuple(f"s{i}.tar" for i in range(num_shards))
    for pass_index in (0, 1, 2):
        seen = covered(
            lambda g: ShardPlan([Source(urls)], 0, False, g, workers), num_shards, 5, workers, pass_index
        )
        assert seen == Counter({(u, i): 1 for u in urls for i in range(5)})


def test_passes_reshuffle_and_seed_matters():
    urls = tuple(f"s{i}.tar" for i in range(20))

    def order(seed, p):
        return [
            t.url for t in itertools.islice(ShardPlan([Source(urls)], seed, False, 0, 1).tasks(20 * p), 20)
        ]

    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0) and order(0, 1) == order(0, 1)


def test_whole_weights_repeat_shards_and_fractional_ones_need_resampling():
    plan = ShardPlan([Source(("a.tar",), 2), Source(("b.tar",), 1)], 0, False, 0, 1)
    assert Counter(t.url for t in itertools.islice(plan.tasks(), 3)) == {"a.tar": 2, "b.tar": 1}
    with pytest.raises(ValueError, match="resampled=true"):
        ShardPlan([Source(("a.tar",), 1.5)], 0, False, 0, 1)


def test_resampled_plan_follows_weights_and_is_deterministic():
    sources = [Source(tuple(f"a{i}" for i in range(5)), 3.0), Source(("b0", "b1"), 1.0)]
    draws = [t.url for t in itertools.islice(ShardPlan(sources, 7, True, 1, 4).tasks(), 4000)]
    assert abs(sum(u.startswith("a") for u in draws) / 4000 - 0.75) < 0.03
    again = [t.url for t in itertools.islice(ShardPlan(sources, 7, True, 1, 4).tasks(100), 50)]
    assert again == draws[100:150]
    other_worker = [t.url for t in itertools.islice(ShardPlan(sources, 7, True, 2, 4).tasks(), 50)]
    assert other_worker != draws[:50]


def test_write_and_read_shards_round_trip(tmp_path):
    samples = [
        {"__key__": f"{i:04d}", "txt": f"caption {i}", "json": {"i": i}, "bin": bytes([i])} for i in range(25)
    ]
    paths = write_shards(iter(samples), str(tmp_path / "s-%04d.tar"), maxcount=10, progress=False)
    assert [os.path.basename(p) for p in paths] == ["s-0000.tar", "s-0001.tar", "s-0002.tar"]
    urls = parse_sources(brace_pattern(paths))[0].urls
    assert list(urls) == paths
    back = [s for u in urls for s in read_shard(u, on_bad=lambda *a: pytest.fail(str(a)))]
    assert [s["__key__"] for s in back] == [s["__key__"] for s in samples]
    assert back[7]["txt"] == b"caption 7" and back[7]["bin"] == bytes([7]) and back[7]["json"] == b'{"i": 7}'


def test_truncated_and_missing_shards_are_reported_not_raised(tmp_path):
    members = [m for i in range(4) for m in laion_sample(f"k{i}", seed=i)]
    path = write_tar(str(tmp_path / "t.tar"), members)
    cut = member_offsets(path)["k2.jpg"] + 10  # in the middle of the third sample's image
    with open(path, "r+b") as f:
        f.truncate(cut)
    events = []
    keys = [s["__key__"] for s in read_shard(path, lambda kind, url, detail: events.append((kind, url)))]
    assert keys == ["k0", "k1"] and events == [("truncated_tar", path)]
    events.clear()
    assert list(read_shard(str(tmp_path / "nope.tar"), lambda kind, url, d: events.append(kind))) == []
    assert events == ["shard_open"]
    assert missing_local_shards(parse_sources([path, str(tmp_path / "nope.tar"), "http://h/x.tar"])) == [
        str(tmp_path / "nope.tar")
    ]


def test_a_tar_cut_between_two_members_is_reported_truncated(tmp_path):
    """tarfile ends quietly at a missing header, as at the end-of-archive blocks; read_shard tells them apart."""
    members = [m for i in range(4) for m in laion_sample(f"k{i}", seed=i)]
    path = write_tar(str(tmp_path / "t.tar"), members)
    with open(path, "r+b") as f:
        f.truncate(member_offsets(path)["k2.json"] - 512)  # just before k2.json's header
    events = []
    keys = [s["__key__"] for s in read_shard(path, lambda kind, url, detail: events.append((kind, url)))]
    assert keys == ["k0", "k1"] and events == [("truncated_tar", path)]  # k2 may be incomplete: dropped
    whole = write_tar(str(tmp_path / "w.tar"), members)
    events.clear()
    assert len(list(read_shard(whole, lambda *a: events.append(a)))) == 4 and not events


def test_a_failing_pipe_command_is_a_failed_shard_not_a_crash(tmp_path):
    """webdataset reports a pipe:'s exit status when the stream is closed; that used to escape read_shard."""
    events = []
    shard = str(tmp_path / "absent.tar")
    assert list(read_shard(f"pipe:cat {shard}", lambda kind, url, d: events.append(kind))) == []
    assert events == ["shard_open"]
