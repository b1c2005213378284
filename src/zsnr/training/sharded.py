"""Read a sharded (FSDP, torch.distributed.checkpoint) checkpoint directory for inference, without consolidating it.

Such a directory (checkpoints/step=N.ckpt/) holds one `__<rank>_0.distcp` file per training rank, `.metadata`
(where every tensor's pieces are) and `meta.pt` (everything but the model and optimizer tensors: the config,
the schedule, the frozen autoencoder and text encoder). Consolidating it first (Lightning's
`_load_distributed_checkpoint`) reads everything into memory, the AdamW moments and both UNets included: four
copies of the UNet for the one inference needs. Here only the tensors under one prefix of the state dict are read
(`ema_unet.` or `unet.`), each into a tensor allocated once at its full size, and meta.pt is memory-mapped.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from zsnr.training.checkpointing import load_mapped

EXTRA = "meta.pt"  # Lightning's name for the non-tensor part of a distributed checkpoint


def is_sharded(path: Path) -> bool:
    return path.is_dir() and (path / ".metadata").is_file()


def read_sharded(path: str | Path, prefix: str) -> dict[str, Any]:
    """The checkpoint dict a single file would give (meta.pt's entries), whose `state_dict` holds only the
    tensors whose names start with `prefix`."""
    from torch.distributed.checkpoint import FileSystemReader, load
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path = Path(path)
    if not is_sharded(path) or not (path / EXTRA).is_file():
        raise ValueError(
            f"{path} is not a sharded zsnr checkpoint (a directory with .metadata and {EXTRA}, as FSDP training "
            "writes)"
        )
    reader = FileSystemReader(path)
    stored = reader.read_metadata().state_dict_metadata
    head = f"state_dict.{prefix}"
    wanted = {
        name[len("state_dict.") :]: torch.empty(meta.size, dtype=meta.properties.dtype)
        for name, meta in stored.items()
        if name.startswith(head) and isinstance(meta, TensorStorageMetadata)
    }
    if not wanted:
        raise ValueError(f"{path} holds no tensors under {prefix!r} (state_dict.{prefix}*)")
    with warnings.catch_warnings():  # no_dist=True is the intent: every rank reads what it needs by itself
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process")
        load({"state_dict": wanted}, storage_reader=reader, no_dist=True)
    checkpoint = load_mapped(path / EXTRA)
    checkpoint["state_dict"] = wanted
    return checkpoint
