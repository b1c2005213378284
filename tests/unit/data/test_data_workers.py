"""Data workers start from a forkserver (data.worker_start): they hold none of the training process's pages, and
a process forked from one that already runs a forkserver starts its own (multiprocessing would otherwise fail
with ChildProcessError on the parent's server: forked ranks, e.g. torch.multiprocessing with fork)."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from zsnr.data import WebDataModule


def keys(urls: str, start: str) -> list[list[str]]:
    dm = WebDataModule(urls=urls, resolution=16, batch_size=10, num_workers=2, epoch_length=None,
                       shuffle_buffer=8, worker_start=start)  # fmt: skip
    dm.setup()
    return [list(batch["key"]) for batch in dm.train_dataloader()]


def _child(urls: str, out: str) -> None:
    Path(out).write_text(json.dumps(keys(urls, "forkserver")))


def test_forked_process_starts_its_own_forkserver(three_shards, tmp_path):
    here = keys(three_shards.urls, "forkserver")  # starts this process's forkserver
    child = multiprocessing.get_context("fork").Process(
        target=_child, args=(three_shards.urls, str(tmp_path / "k"))
    )
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0
    assert json.loads((tmp_path / "k").read_text()) == here  # and the same batches


def test_every_start_method_gives_the_same_batches(three_shards):
    first = keys(three_shards.urls, "forkserver")
    assert len(first) >= 5  # 90 samples less those the filters reject, in batches of 10
    assert keys(three_shards.urls, "fork") == first
    with pytest.raises(ValueError, match="worker_start"):
        WebDataModule(urls=three_shards.urls, worker_start="thread")
