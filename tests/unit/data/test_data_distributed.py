"""Two real processes (gloo): each rank saves every rank's position, and each resumes its own exactly; with
aspect-ratio buckets the ranks draw batches of different shapes in the same step."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from zsnr.data import WebDataModule


def read(kwargs: dict, epochs: int, stop_after: int | None = None, state: dict | None = None):
    dm = WebDataModule(**kwargs)
    if state is not None:
        dm.load_state_dict(state)
    dm.setup()
    loader, keys = dm.train_dataloader(), []
    for _ in range(epochs):
        for batch in loader:
            keys.append((batch["key"], list(batch["image"].shape)))
            if len(keys) == stop_after:
                return keys, dm.state_dict()
    return keys, dm.state_dict()


def worker(rank: int, port: int, urls: str, out: str, buckets: dict | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    kwargs = {
        "urls": urls,
        "resolution": 16 if buckets is None else 32,
        "batch_size": 4,
        "num_workers": 2,
        "epoch_length": 48,
        "shuffle_buffer": 8,
        "buckets": buckets,
    }
    full, _ = read(kwargs, epochs=2)
    head, state = read(kwargs, epochs=2, stop_after=3 + rank)  # ranks stop at different points
    tail, _ = read(kwargs, epochs=2, state=state)
    torch.save({"full": full, "head": head, "tail": tail, "state": state}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.parametrize("buckets", [None, {"step": 4}], ids=["square", "buckets"])
def test_two_ranks_gather_positions_and_resume(buckets, three_shards, aspect_shards, tmp_path):
    port = 29500 + os.getpid() % 1000 + (buckets is not None)
    urls = three_shards.urls if buckets is None else aspect_shards.urls
    mp.start_processes(worker, args=(port, urls, str(tmp_path), buckets), nprocs=2, start_method="fork")
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for result in results:
        assert len(result["state"]["ranks"]) == 2  # every rank holds both positions (rank 0's file is saved)
        assert result["head"] + result["tail"][: len(result["full"]) - len(result["head"])] == result["full"]
        assert len(result["full"]) == 2 * 48 // (2 * 4)  # same batch count on both ranks
    keys = [k for r in results for batch, _ in r["full"][:6] for k in batch]  # epoch 0 of both ranks
    assert len(set(keys)) == 48  # the ranks read disjoint samples
    assert all(len(batch) == 4 for r in results for batch, _ in r["full"])  # full batches, whatever the shape
    if buckets is not None:  # in some steps the ranks train on different shapes (DDP / FSDP take them)
        shapes = [[tuple(shape[-2:]) for _, shape in r["full"]] for r in results]
        assert len(set(shapes[0] + shapes[1])) >= 3
        assert any(a != b for a, b in zip(shapes[0], shapes[1], strict=True))
        positions = [r["position"] for r in results[0]["state"]["ranks"]]
        assert any(w["buffered"] for p in positions for w in p["workers"].values())  # read again on resume
