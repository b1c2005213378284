"""StreamingCheckpointIO: the same file as Lightning's TorchCheckpointIO, without the in-memory copy on save,
and loads that leave no weights resident once a resume has copied them into the model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from zsnr.training import StreamingCheckpointIO

PROBE = Path(__file__).with_name("checkpoint_memory.py")


@pytest.fixture(scope="module")
def memory(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint_memory")
    out = subprocess.run(
        [sys.executable, str(PROBE), str(folder)], capture_output=True, text=True, check=True, timeout=300
    )
    mib = json.loads(out.stdout.strip().splitlines()[-1])
    return mib, mib["tensor_mib"]


def test_same_checkpoint_as_lightnings_io(tmp_path):
    checkpoint = {
        "state_dict": {"w": torch.randn(3, 4), "b": torch.arange(5)},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.randn(3, 4)}}}],
        "global_step": 7,
    }
    StreamingCheckpointIO().save_checkpoint(checkpoint, tmp_path / "sub" / "ours.ckpt")  # makes the folder
    TorchCheckpointIO().save_checkpoint(checkpoint, tmp_path / "lightning.ckpt")
    ours = StreamingCheckpointIO().load_checkpoint(tmp_path / "sub" / "ours.ckpt", weights_only=True)
    theirs = TorchCheckpointIO().load_checkpoint(tmp_path / "lightning.ckpt", weights_only=True)
    assert ours.keys() == theirs.keys() and ours["global_step"] == 7
    for key in ("w", "b"):
        assert torch.equal(ours["state_dict"][key], theirs["state_dict"][key])
    m = ours["optimizer_states"][0]["state"][0]["exp_avg"]
    assert torch.equal(m, theirs["optimizer_states"][0]["state"][0]["exp_avg"])
    m.add_(1.0)  # copy-on-write: writable, and the file stays as saved
    again = StreamingCheckpointIO().load_checkpoint(tmp_path / "sub" / "ours.ckpt")
    assert torch.equal(again["optimizer_states"][0]["state"][0]["exp_avg"] + 1.0, m)


def test_save_needs_no_second_copy_in_memory(memory):
    mib, size = memory  # a checkpoint of 2 x size MiB
    assert mib["save_lightning"] > 1.8 * size, mib  # its BytesIO holds it all once more (the test can fail)
    assert mib["save_ours"] < 0.25 * size, mib  # written as it goes


def test_resumed_weights_do_not_stay_resident(memory):
    mib, size = memory
    assert mib["load_one_mapping"] > 0.9 * size, mib  # the optimizer state kept the weights' pages mapped
    assert mib["load_ours"] < 0.1 * size, mib
