"""Checkpoint writing never leaves a broken `last`; resume paths; RNG state that loads with weights_only."""

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from zsnr.models.checkpoint import restore_rng_states, rng_states
from zsnr.training import AtomicCheckpoint, newest_checkpoint, resolve_resume


class FakeTrainer:
    is_global_zero = True

    def __init__(self, crash_after_bytes=None):
        self.crash_after_bytes = crash_after_bytes
        self.strategy = SimpleNamespace(barrier=lambda *a: None)

    def save_checkpoint(self, path, weights_only=False):
        with open(path, "wb") as f:
            if self.crash_after_bytes is not None:
                f.write(b"x" * self.crash_after_bytes)
                raise KeyboardInterrupt("killed while writing")
            torch.save({"ok": torch.ones(2)}, f)


def test_last_survives_a_crash_mid_save(tmp_path):
    cb = AtomicCheckpoint(tmp_path, every_n_steps=10, keep_last=2)
    cb.save(FakeTrainer(), 10)
    assert (tmp_path / "last.ckpt").resolve() == tmp_path / "step=000010.ckpt"
    with pytest.raises(KeyboardInterrupt):
        cb.save(FakeTrainer(crash_after_bytes=100), 20)
    assert (tmp_path / "last.ckpt").resolve() == tmp_path / "step=000010.ckpt"
    assert not (tmp_path / "step=000020.ckpt").exists()
    assert newest_checkpoint(tmp_path) == tmp_path / "step=000010.ckpt"
    loaded = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert torch.equal(loaded["ok"], torch.ones(2))
    for step in (20, 30, 40):  # keeps the newest two
        cb.save(FakeTrainer(), step)
    assert sorted(p.name for p in tmp_path.glob("step=*")) == ["step=000030.ckpt", "step=000040.ckpt"]
    assert (tmp_path / "last.ckpt").resolve().name == "step=000040.ckpt"


def test_resolve_resume(tmp_path):
    ckpts = tmp_path / "checkpoints"
    assert resolve_resume(None, ckpts) is None
    assert resolve_resume("auto", ckpts) is None  # nothing yet: a fresh start
    AtomicCheckpoint(ckpts, 5).save(FakeTrainer(), 5)
    assert resolve_resume("auto", ckpts) == str(ckpts / "step=000005.ckpt")
    assert resolve_resume(str(tmp_path), ckpts) == str(ckpts / "step=000005.ckpt")  # a run directory
    assert resolve_resume(str(ckpts / "step=000005.ckpt"), "elsewhere") == str(ckpts / "step=000005.ckpt")
    with pytest.raises(FileNotFoundError, match="resume=auto"):
        resolve_resume(str(tmp_path / "nope.ckpt"), ckpts)


def test_rng_states_round_trip_through_weights_only_load(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    torch.save(rng_states(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_resume_names_a_corrupt_file_and_auto_falls_back_to_the_previous_intact_one(tmp_path):
    ckpts = tmp_path / "checkpoints"
    for step in (5, 10):
        AtomicCheckpoint(ckpts, 5, keep_last=None).save(FakeTrainer(), step)
    newest = ckpts / "step=000010.ckpt"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # what a crash mid-save (or a full disk) leaves
    with pytest.raises(ValueError, match=r"step=000010\.ckpt \(\d+ bytes\) is not a readable checkpoint"):
        resolve_resume(str(newest), "elsewhere")
    with pytest.warns(UserWarning, match=r"skipping .*step=000010\.ckpt"):
        assert resolve_resume("auto", ckpts) == str(ckpts / "step=000005.ckpt")
    (ckpts / "step=000005.ckpt").write_bytes(b"")  # zero bytes: torch's bare EOFError, now with the file
    with pytest.raises(ValueError, match=r"step=000005\.ckpt \(0 bytes\)"):
        resolve_resume(str(ckpts / "step=000005.ckpt"), "elsewhere")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no checkpoint in .* is readable"):
        resolve_resume("auto", ckpts)  # never a silent fresh start over a run's checkpoints
