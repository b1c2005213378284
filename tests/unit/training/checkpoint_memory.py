"""Run as a script (one process, so the imports are paid once): prints memory figures in MiB as JSON.

    python checkpoint_memory.py DIR

- save_ours / save_lightning: how far the peak RSS rose above the RSS at the start while StreamingCheckpointIO /
  Lightning's TorchCheckpointIO saved a checkpoint of two TENSOR_MIB tensors (peak reset first, Linux >= 4.0);
- load_one_mapping / load_ours: file pages still resident after a resume-like load (copy the weights into the
  model, drop them, keep the optimizer state) with a single torch.load(mmap=True) / with StreamingCheckpointIO.
"""

import json
import sys
from pathlib import Path

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from zsnr.models.checkpoint import load_mapped
from zsnr.training.checkpointing import StreamingCheckpointIO

TENSOR_MIB = 128
N = TENSOR_MIB * 2**20 // 4  # float32 elements


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def save_rise(io, checkpoint: dict, path: Path) -> float:
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    start = status_mib("VmRSS")
    io.save_checkpoint(checkpoint, path)
    return status_mib("VmHWM") - start


def resident_file_mib() -> float:
    return status_mib("RssFile")


def resident_after_resume(load, path: Path) -> float:
    before = resident_file_mib()
    checkpoint = load(path)
    model = torch.empty(N)
    model.copy_(checkpoint["state_dict"]["w"])  # reads every page of the weights
    optimizer = checkpoint.pop("optimizer_states")
    del checkpoint
    left = resident_file_mib() - before
    assert float(optimizer[0]["m"][0]) == 1.0
    return left


def main(folder: str) -> None:
    path = Path(folder) / "ckpt.ckpt"
    checkpoint = {"state_dict": {"w": torch.ones(N)}, "optimizer_states": [{"m": torch.ones(N)}]}
    out = {
        "tensor_mib": TENSOR_MIB,
        "save_ours": save_rise(StreamingCheckpointIO(), checkpoint, path),
        "save_lightning": save_rise(TorchCheckpointIO(), checkpoint, Path(folder) / "lightning.ckpt"),
    }
    del checkpoint
    out["load_one_mapping"] = resident_after_resume(load_mapped, path)
    out["load_ours"] = resident_after_resume(StreamingCheckpointIO().load_checkpoint, path)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
