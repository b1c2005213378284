"""Bad data never stops training: each kind is skipped, counted and logged with its shard; too much stops it."""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest
from shard_factory import image_bytes, laion_sample, member_offsets, write_tar

from zsnr.data import BadDataError, ShardStream, WebDataModule, parse_sources

GOOD_META = json.dumps(
    {"original_width": 800, "original_height": 600, "punsafe": 0.0, "pwatermark": 0.0, "aesthetic": 6.0}
).encode()


def broken_shards(tmp_path) -> tuple[str, str, set[str]]:
    """Shard a: 10 good samples and one of each broken kind; shard b: 4 good samples cut in the third."""
    jpg = image_bytes(40, 30)
    members = [m for i in range(10) for m in laion_sample(f"good{i}", seed=i)]
    members += [("bdecode.jpg", b"\xff\xd8 garbage"), ("bdecode.json", GOOD_META), ("bdecode.txt", b"x")]
    members += [("bnojson.jpg", jpg), ("bnojson.txt", b"x")]
    members += [("bjson.jpg", jpg), ("bjson.json", b"{broken"), ("bjson.txt", b"x")]
    members += [("bzero.jpg", b""), ("bzero.json", GOOD_META), ("bzero.txt", b"x")]
    members += [("benc.jpg", jpg), ("benc.json", GOOD_META), ("benc.txt", "café".encode("latin-1"))]
    members += [("bnoimg.json", GOOD_META), ("bnoimg.txt", b"x")]
    a = write_tar(str(tmp_path / "a.tar"), members)
    b = write_tar(str(tmp_path / "b.tar"), [m for i in range(4) for m in laion_sample(f"cut{i}", seed=i)])
    with open(b, "r+b") as f:
        f.truncate(member_offsets(b)["cut2.jpg"] + 100)
    return a, b, {f"good{i}" for i in range(10)} | {"cut0", "cut1"}


def test_every_kind_is_skipped_counted_and_logged(tmp_path, caplog):
    a, b, good = broken_shards(tmp_path)
    dataset = ShardStream(
        parse_sources([a, b]), batch_size=4, resolution=16, max_bad_fraction=1.0, max_bad_shard_fraction=1.0
    )
    with caplog.at_level(logging.WARNING, logger="zsnr.data"):
        batches = list(dataset)
    assert {k for batch in batches for k in batch["key"]} == good
    stats = sum((Counter(batch["stats"]) for batch in batches), Counter())
    kinds = [
        "image_decode",
        "json_missing",
        "json_broken",
        "empty_member",
        "caption_encoding",
        "missing_image",
        "truncated_tar",
    ]
    assert {k: v for k, v in stats.items() if k.startswith("bad/") and v} == {f"bad/{k}": 1 for k in kinds}
    assert stats["seen"] == 18 and stats["accepted"] == 13  # bdecode passes the json filters, fails to decode
    for kind, shard in [(k, a) for k in kinds[:-1]] + [("truncated_tar", b)]:
        assert any(kind in r.getMessage() and shard in r.getMessage() for r in caplog.records), kind


def test_too_much_bad_data_stops_naming_the_shard(tmp_path):
    a, b, _ = broken_shards(tmp_path)
    dataset = ShardStream(parse_sources([a, b]), batch_size=4, resolution=16, max_bad_fraction=0.2)
    with pytest.raises(BadDataError, match="max_bad_fraction=0.2") as info:
        list(dataset)
    assert f"shard {a}" in str(info.value) and "6 bad samples of 16 read (37.5%)" in str(info.value)
    # b is cut after 2 good samples: a truncated tar is a shard-level event, not a bad sample
    cut = ShardStream(
        parse_sources(b), batch_size=4, resolution=16, max_bad_fraction=0.0, max_bad_shard_fraction=1.0
    )
    assert len(list(cut)) == 1


def bad_fraction_shards(folder, bad_in_one: int) -> tuple[list[str], str]:
    """6 shards of 50 good samples, but one shard has `bad_in_one` broken images (found only on decode)."""
    urls = []
    for s in range(6):
        members = []
        for i in range(50):
            key = f"s{s}_{i:02d}"
            broken = s == 2 and i % (50 // bad_in_one) == 0 and i // (50 // bad_in_one) < bad_in_one
            sample = laion_sample(key, seed=s * 50 + i)
            members += [(f"{key}.jpg", b"junk"), *sample[1:]] if broken else sample
        urls.append(write_tar(str(folder / f"part-{s}.tar"), members))
    return urls, urls[2]


@pytest.mark.parametrize("shuffle_buffer", [16, 64])
def test_the_bad_fraction_verdict_does_not_depend_on_shard_order(tmp_path, shuffle_buffer):
    """One shard 40% bad among good ones (6.7% overall) trips 10% whatever the order; one 8% bad never does.
    Before, a running fraction judged from 200 samples on tripped only when the bad shard came late."""
    urls, bad_shard = bad_fraction_shards(tmp_path, bad_in_one=20)
    for seed in range(6):  # the bad shard comes first, last and in between
        dataset = ShardStream(parse_sources(urls), batch_size=8, resolution=16, shuffle_buffer=shuffle_buffer,
                              seed=seed, max_bad_fraction=0.1)  # fmt: skip
        with pytest.raises(BadDataError, match="20 bad samples of 50 read") as info:
            list(dataset)
        assert bad_shard in str(info.value), seed
    urls, _ = bad_fraction_shards(tmp_path, bad_in_one=4)
    for seed in range(6):
        dataset = ShardStream(parse_sources(urls), batch_size=8, resolution=16, shuffle_buffer=shuffle_buffer,
                              seed=seed, max_bad_fraction=0.1)  # fmt: skip
        assert sum(len(b["key"]) for b in dataset) == 300 - 4, seed


def test_an_endless_stream_of_bad_data_stops_too(tmp_path):
    members = []
    for i in range(20):
        members += (
            laion_sample(f"ok{i}", seed=i)
            if i % 2
            else [(f"bad{i}.jpg", b"junk"), (f"bad{i}.json", GOOD_META), (f"bad{i}.txt", b"x")]
        )
    shard = write_tar(str(tmp_path / "half.tar"), members)
    dataset = ShardStream(
        parse_sources(shard), batch_size=4, resolution=16, resampled=True, max_bad_fraction=0.1
    )
    with pytest.raises(BadDataError, match="half.tar"):
        for _ in dataset:
            pass


def test_datamodule_checks_shards_and_pipe_before_reading(tmp_path):
    a, _, _ = broken_shards(tmp_path)
    with pytest.raises(ValueError, match="allow_pipe"):
        WebDataModule(urls=f"pipe:cat {a}", resolution=16)
    dm = WebDataModule(
        urls=f"pipe:cat {a}", resolution=16, batch_size=4, num_workers=0, allow_pipe=True, max_bad_fraction=1
    )
    dm.setup()
    assert {k for batch in dm.train_dataloader() for k in batch["key"]} == {f"good{i}" for i in range(10)}
    with pytest.raises(FileNotFoundError, match="3 of 3 shard"):  # when it is made, before any model loads
        WebDataModule(urls=str(tmp_path / "x-{0..2}.tar"), resolution=16)


def test_a_shard_cut_by_a_resume_is_judged_whole(tmp_path):
    urls, bad_shard = bad_fraction_shards(tmp_path, bad_in_one=20)
    kwargs = {"urls": urls, "resolution": 16, "batch_size": 4, "num_workers": 0, "shuffle_buffer": 8,
              "seed": 1, "max_bad_fraction": 0.1}  # fmt: skip
    cuts = 0
    for cut in range(1, 70, 3):
        dm = WebDataModule(**kwargs)
        dm.setup()
        try:
            for n, _ in enumerate(dm.train_dataloader(), 1):
                if n == cut:
                    break
        except BadDataError:
            break  # the straight run has judged the shard by now: later cuts show nothing new
        resumed = WebDataModule(**kwargs)
        resumed.load_state_dict(dm.state_dict())
        resumed.setup()
        with pytest.raises(BadDataError, match="20 bad samples of 50 read") as info:
            list(resumed.train_dataloader())
        assert bad_shard in str(info.value)
        cuts += 1
    assert cuts >= 4
