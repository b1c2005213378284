"""Exact resume: read K batches, save, restore in a new datamodule: the rest equals an uninterrupted read."""

from __future__ import annotations

import glob
import logging
import os
from collections import Counter

import pytest
import pytorch_lightning as pl
import torch
from shard_factory import laion_sample, write_tar

from zsnr.data import WebDataModule


def run(kwargs: dict, epochs: int, stop_after: int | None = None, state: dict | None = None):
    """Iterate `epochs` epochs (the first one continues a saved state); returns batches and final state."""
    dm = WebDataModule(**kwargs)
    if state is not None:
        dm.load_state_dict(state)
    dm.setup()
    loader, batches = dm.train_dataloader(), []
    for _ in range(epochs):
        for batch in loader:
            batches.append(batch)
            if stop_after is not None and len(batches) == stop_after:
                return batches, dm.state_dict()
    return batches, dm.state_dict()


def same(a: list[dict], b: list[dict]) -> bool:
    names = ("image", "original_size", "crop_top_left")
    return len(a) == len(b) and all(
        x["key"] == y["key"] and x["caption"] == y["caption"] and all(torch.equal(x[n], y[n]) for n in names)
        for x, y in zip(a, b, strict=True)
    )


CASES = {
    # one exact pass per epoch, unequal worker shares, augmentations on: cut early, just before and after the epoch end
    "finite": ({"num_workers": 2, "random_crop": True, "random_flip": True}, [3, -1, +2]),
    "one_process": ({"num_workers": 0}, [4]),
    # exact passes back to back in epochs of 64 samples (8 batches): cut mid-epoch and at the boundary
    "epoch_length": ({"num_workers": 2, "epoch_length": 64}, [3, 8, 11]),
    "resampled": ({"num_workers": 2, "epoch_length": 64, "resampled": True}, [5]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_resume_continues_exactly(case, three_shards):
    extra, cuts = CASES[case]
    kwargs = {
        "urls": three_shards.urls,
        "resolution": 24,
        "batch_size": 8,
        "shuffle_buffer": 16,
        "seed": 3,
        **extra,
    }
    full, _ = run(kwargs, epochs=2)
    first_epoch = sum(b["resume"]["epoch"] == 0 for b in full)
    for cut in cuts:
        k = first_epoch + cut if cut < 0 or (case == "finite" and cut == 2) else cut
        head, state = run(kwargs, epochs=2, stop_after=k)
        epochs_left = 2 - state["ranks"][0]["position"]["epoch"]
        tail, _ = run(kwargs, epochs=epochs_left, state=state)
        assert same(head + tail, full), (case, k)


BUCKET_CASES = {
    # single passes: each ends with the buckets' partial batches (cut among them: -2); augmentations on
    "finite-0": ({"num_workers": 0, "random_crop": True, "random_flip": True}, [3, 9, -2]),
    "finite-2": ({"num_workers": 2, "random_crop": True, "random_flip": True}, [3, 9, -2]),
    # endless modes: samples wait in their buffers across the end of a data epoch (12 batches)
    "epoch_length-0": ({"num_workers": 0, "epoch_length": 48}, [4, 12, 17]),
    "epoch_length-2": ({"num_workers": 2, "epoch_length": 48}, [4, 12, 17]),
    "resampled-2": ({"num_workers": 2, "epoch_length": 48, "resampled": True}, [7, 13]),
}


@pytest.mark.parametrize("case", list(BUCKET_CASES))
def test_resume_with_buckets_continues_exactly(case, aspect_shards):
    """The position holds the samples waiting in the bucket buffers: cut anywhere, the resumed stream gives
    the straight run's batches (keys, pixels, crops) and counts, and it was cut with samples buffered."""
    extra, cuts = BUCKET_CASES[case]
    kwargs = {"urls": aspect_shards.urls, "resolution": 32, "batch_size": 4, "shuffle_buffer": 8, "seed": 3,
              "buckets": {"step": 4}, "size_multiple": 4, **extra}  # fmt: skip
    full, full_state = run(kwargs, epochs=2)
    assert len({b["image"].shape[-2:] for b in full}) == 5  # batches of all five buckets
    first_epoch = sum(b["resume"]["epoch"] == 0 for b in full)
    buffered = []
    for cut in cuts:
        k = first_epoch + cut if cut < 0 else cut
        head, state = run(kwargs, epochs=2, stop_after=k)
        buffered += [len(w.get("buffered", [])) for w in state["ranks"][0]["position"]["workers"].values()]
        tail, resumed = run(kwargs, epochs=2 - state["ranks"][0]["position"]["epoch"], state=state)
        assert same(head + tail, full), (case, k)
        assert resumed["ranks"][0]["stats"] == full_state["ranks"][0]["stats"], (case, k)
    assert max(buffered) > 0  # the cuts left samples in the buffers, which the resumed runs read again


def test_a_buffered_sample_that_cannot_be_read_again_is_left_out_with_a_warning(aspect_shards, caplog):
    kwargs = {"urls": aspect_shards.urls, "resolution": 32, "batch_size": 4, "shuffle_buffer": 8,
              "buckets": {"step": 4}, "num_workers": 0}  # fmt: skip
    full, _ = run(kwargs, epochs=1)
    head, state = run(kwargs, epochs=1, stop_after=5)
    buffered = state["ranks"][0]["position"]["workers"][0]["buffered"]
    assert len(buffered) >= 2
    buffered[0] = [buffered[0][0], 10**6]  # no such sample in that shard (a shard rewritten since the save)
    with caplog.at_level(logging.WARNING, logger="zsnr.data"):
        tail, _ = run(kwargs, epochs=1, state=state)
    assert "1 buffered sample(s) of the saved position could not be read again" in caplog.text
    keys = [k for b in head + tail for k in b["key"]]
    assert len(keys) == len(set(keys)) and len(set(k for b in full for k in b["key"]) - set(keys)) == 1


@pytest.mark.parametrize("extra", [{}, {"epoch_length": 64, "resampled": True}], ids=["exact", "resampled"])
def test_a_changed_setup_goes_on_with_fresh_randomness_not_the_runs_start(extra, three_shards, caplog):
    kwargs = {"urls": three_shards.urls, "resolution": 16, "batch_size": 8, "num_workers": 2,
              "shuffle_buffer": 16, "seed": 3, **extra}  # fmt: skip
    full, _ = run(kwargs, epochs=1)
    _, state = run(kwargs, epochs=1, stop_after=3)
    state["fingerprint"]["world_size"] = 2  # saved by a run on two ranks: the positions do not apply here
    with caplog.at_level(logging.WARNING, logger="zsnr.data"):
        tail, changed = run(kwargs, epochs=1, state=state)
    assert "world_size" in caplog.text and "fresh shard order and shuffle" in caplog.text
    keys = lambda batches: [b["key"] for b in batches]  # noqa: E731
    assert all(a != b for a, b in zip(keys(tail[:3]), keys(full[:3]), strict=True))  # before: the very same
    read = sum((Counter(b["stats"]) for b in tail), Counter(state["ranks"][0]["stats"]))
    assert Counter(changed["ranks"][0]["stats"]) == read  # the saved counts are kept, once
    if not extra:  # exact mode: the rest of the epoch is one fresh pass, every sample once
        tail_keys = [k for b in tail for k in b["key"]]
        assert len(tail_keys) == len(set(tail_keys)) and set(tail_keys) == three_shards.accepted
    # the fresh stream is itself resumable exactly, under the new setup
    head, again = run(kwargs, epochs=1, state=state, stop_after=2)
    rest, _ = run(kwargs, epochs=1, state=again)
    assert same(head + rest, tail)
    assert WebDataModule(**kwargs).state_dict() == {}  # nothing to save before setup


class KeyRecorder(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.keys: list[list[str]] = []

    def training_step(self, batch, batch_idx):
        self.keys.append(batch["key"])
        return (self.weight * batch["image"].float().mean()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit(data_kwargs: dict, root: str, max_steps: int, ckpt_path: str | None = None) -> list[list[str]]:
    module, datamodule = KeyRecorder(), WebDataModule(**data_kwargs)
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=root, every_n_train_steps=5, save_top_k=-1)
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[checkpoints], default_root_dir=root)  # fmt: skip
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    # the summed stats cover what was consumed, restored ones included
    assert (
        datamodule.stats["accepted"] >= 8 * max_steps
        and datamodule.stats["seen"] > datamodule.stats["accepted"]
    )
    return module.keys


@pytest.mark.parametrize("buckets", [None, {"step": 4}], ids=["square", "buckets"])
def test_lightning_checkpoint_resume_continues_exactly(buckets, three_shards, aspect_shards, tmp_path):
    """Through Trainer.fit: Lightning fetches a batch ahead, the datamodule must still save what was used."""
    kwargs = {
        "urls": three_shards.urls if buckets is None else aspect_shards.urls,
        "resolution": 16 if buckets is None else 32,
        "batch_size": 8,
        "num_workers": 2,
        "shuffle_buffer": 16,
        "buckets": buckets,
    }
    full = fit(kwargs, str(tmp_path), max_steps=14)  # one pass is 10 batches: crosses an epoch end
    assert len(full) == 14
    for step in (5, 10):
        (ckpt,) = glob.glob(os.path.join(tmp_path, f"*step={step}.ckpt"))
        resumed = fit(kwargs, str(tmp_path / f"r{step}"), max_steps=14, ckpt_path=ckpt)
        assert resumed == full[step:], step


def mixed_shards(folder) -> list[str]:
    """4 shards of 24 samples: every 5th rejected by punsafe, every 7th a broken image (known only on decode)."""
    urls = []
    for s in range(4):
        members = []
        for i in range(24):
            key, n = f"s{s}_{i:02d}", s * 24 + i
            if n % 7 == 3:
                members += [(f"{key}.jpg", b"\xff\xd8 not a jpeg"), *laion_sample(key, seed=n)[1:]]
            else:
                members += laion_sample(key, seed=n, **({"punsafe": 0.9} if n % 5 == 1 else {}))
        urls.append(write_tar(str(folder / f"mixed-{s}.tar"), members))
    return urls


@pytest.mark.parametrize(
    "extra",
    [{}, {"epoch_length": 48}, {"epoch_length": 48, "resampled": True}],
    ids=["finite", "epochs", "resampled"],
)
def test_counts_after_a_resume_equal_the_straight_runs(extra, tmp_path):
    """Resuming re-reads the saved shuffle block: its samples must not be counted a second time."""
    kwargs = {"urls": mixed_shards(tmp_path), "resolution": 16, "batch_size": 4, "num_workers": 2,
              "shuffle_buffer": 10, "seed": 5, "max_bad_fraction": 1.0, **extra}  # fmt: skip
    n = 16  # more than one data epoch of the endless modes (12 batches)
    _, straight = run(kwargs, epochs=3, stop_after=n)
    for cut in (3, 7, 13):
        _, state = run(kwargs, epochs=3, stop_after=cut)
        _, resumed = run(kwargs, epochs=3, stop_after=n - cut, state=state)
        assert resumed["ranks"][0]["stats"] == straight["ranks"][0]["stats"], cut
    if not extra:  # a whole pass, with a resume in it, counts every sample once
        _, state = run(kwargs, epochs=1, stop_after=5)
        _, whole = run(kwargs, epochs=1, state=state)
        stats = whole["ranks"][0]["stats"]
        assert (stats["seen"], stats["rejected/punsafe"], stats["bad/image_decode"]) == (96, 17, 14)
        assert stats["accepted"] == 96 - 17  # the broken images pass the json filters, then fail to decode
