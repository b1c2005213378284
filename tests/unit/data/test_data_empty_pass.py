"""A single exact pass that gives no batch is an error naming the shards and the filter counts."""

from __future__ import annotations

import pytest
from shard_factory import laion_sample, write_tar

from zsnr.data import WebDataModule


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_pass_whose_samples_are_all_filtered_out_is_an_error(tmp_path, num_workers):
    unsafe = [m for i in range(12) for m in laion_sample(f"s{i}", seed=i, punsafe=0.9)]
    a = write_tar(str(tmp_path / "a.tar"), unsafe[:18])  # 6 samples each
    b = write_tar(str(tmp_path / "b.tar"), unsafe[18:])
    dm = WebDataModule(urls=[a, b], resolution=16, batch_size=4, num_workers=num_workers)
    dm.setup()
    with pytest.raises(RuntimeError, match="no batch") as info:
        for _ in range(3):  # before: three empty epochs went by without a word
            list(dm.train_dataloader())
    message = str(info.value)
    assert a in message and b in message and "2 shard(s)" in message
    assert "12 samples read, 0 accepted" in message and "'rejected/punsafe': 12" in message
    assert dm.stats["seen"] == 12 and dm.stats["rejected/punsafe"] == 12  # the counts reach the datamodule


def test_an_empty_shard_is_an_error_but_a_pass_with_one_batch_is_not(tmp_path):
    empty = write_tar(str(tmp_path / "empty.tar"), [])
    dm = WebDataModule(urls=empty, resolution=16, batch_size=4, num_workers=0)
    dm.setup()
    with pytest.raises(RuntimeError, match="0 samples read, 0 accepted.*the shards hold no samples"):
        list(dm.train_dataloader())
    one = write_tar(str(tmp_path / "one.tar"), laion_sample("ok"))
    dm = WebDataModule(urls=[empty, one], resolution=16, batch_size=4, num_workers=2)
    dm.setup()
    assert [b["key"] for b in dm.train_dataloader()] == [["ok"]]
