"""The zsnr checkpoint format, written and read in one place: pure torch, no Lightning.

A checkpoint is the dict Lightning saves (`state_dict`, `hyper_parameters`, `global_step`, its loops and
optimizer states) with zsnr's own entries:
    state_dict["unet.*"]      the trained UNet
    state_dict["ema_unet.*"]  its EMA (also when the EMA was kept outside the module tree)
    zsnr                      the training's counters: "betas" of its schedule, "micro_step", the EMA schedule's
                              and the skip counter's counts, and "rng" (every RNG's state, as tensors and ints)
    frozen                    the autoencoder's and text encoder's weights, only when they were random (model=tiny)
    hyper_parameters          "model" (the model spec) and "diffusion" (the Schedule's fields), among the rest

`write_training_state` fills the zsnr entries of a checkpoint being saved; `TrainingCheckpoint` reads them back,
from the dict Lightning hands over on resume or from a file (sampling, export, `init_from`). Files are
memory-mapped (`load_mapped`), so only what is used is read and no tensor is copied on the CPU.

Sharded checkpoints (FSDP: checkpoints/step=N.ckpt/ is a directory) hold one `__<rank>_0.distcp` file per
training rank, `.metadata` (where every tensor's pieces are) and `meta.pt` (everything but the model and
optimizer tensors). `read_sharded` reads one UNet of one without consolidating it: consolidating (Lightning's
`_load_distributed_checkpoint`) reads the AdamW moments and both UNets too, four copies of the UNet for the one
inference needs; here only the tensors under one prefix are read, each into a tensor allocated once at its full
size, and meta.pt is memory-mapped.
"""

from __future__ import annotations

import os
import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zsnr.models.schedule import Schedule

LAST = "last.ckpt"
SECTION = "zsnr"
PREFIXES = {"ema": "ema_unet.", "raw": "unet."}  # which UNet weights -> their keys' prefix in state_dict
REQUIRED = ("hyper_parameters", "state_dict", SECTION)


def write_training_state(
    checkpoint: dict[str, Any],
    betas: torch.Tensor,
    counters: dict[str, Any],
    ema_outside_tree: dict[str, torch.Tensor] | None = None,
    frozen: dict[str, dict[str, torch.Tensor]] | None = None,
) -> None:
    """In place, into a checkpoint being saved: the schedule's betas, the counters and every RNG's state; the
    EMA's weights when the module tree (so Lightning's state_dict) does not hold them; random frozen parts."""
    checkpoint[SECTION] = {"betas": betas, **counters, "rng": rng_states()}
    if ema_outside_tree is not None:
        prefix = PREFIXES["ema"]
        checkpoint["state_dict"].update({prefix + k: v for k, v in ema_outside_tree.items()})
    if frozen is not None:
        checkpoint["frozen"] = frozen


class TrainingCheckpoint:
    """A zsnr training checkpoint as torch.load gave it (`raw`), read through the format's names.

    `where` names it in errors (its path, when it came from a file)."""

    def __init__(self, raw: dict[str, Any], where: str = "the checkpoint") -> None:
        self.raw, self.where = raw, where

    @classmethod
    def open(
        cls, path: str | os.PathLike, what: str = "checkpoint", weights: str | None = None
    ) -> TrainingCheckpoint:
        """From a .ckpt file, or a run directory or its checkpoints/ folder (their newest), memory-mapped. With
        `weights` ("ema" or "raw"), a sharded checkpoint directory is read as it is, that UNet only."""
        file = checkpoint_file(path, what, sharded=weights is not None)
        raw = read_sharded(file, PREFIXES[weights]) if file.is_dir() else load_mapped(file)
        missing = [key for key in REQUIRED if key not in raw] if isinstance(raw, dict) else list(REQUIRED)
        if missing:
            raise ValueError(
                f"{what} {file} is not a zsnr training checkpoint (no {' / '.join(missing)} entries)"
            )
        return cls(raw, str(file))

    @property
    def counters(self) -> dict[str, Any]:
        """The zsnr section (betas, micro_step, EMA and skip counts, rng); empty in a checkpoint without it."""
        return self.raw.get(SECTION, {})

    @property
    def model_spec(self) -> dict[str, Any]:
        return dict(self.raw["hyper_parameters"]["model"])

    @property
    def schedule(self) -> Schedule:
        return Schedule(**self.raw["hyper_parameters"]["diffusion"])

    @property
    def step(self) -> int:
        return int(self.raw.get("global_step", 0))

    @property
    def frozen(self) -> dict[str, dict[str, torch.Tensor]]:
        return dict(self.raw.get("frozen", {}))

    def check_schedule(self, schedule: Schedule, advice: str) -> None:
        """Refuse a schedule whose betas differ from the saved ones (a checkpoint without betas passes)."""
        betas = self.counters.get("betas")
        if betas is not None and not torch.equal(betas.double(), schedule.make_betas()):
            raise ValueError(
                f"{self.where}: the betas saved with the checkpoint differ from what {schedule} gives. {advice}"
            )

    def unet(self, weights: str = "ema") -> dict[str, torch.Tensor]:
        """The UNet's state dict: "ema" (the average) or "raw" (the trained weights); the tensors themselves."""
        prefix = PREFIXES[weights]
        return {k[len(prefix) :]: v for k, v in self.raw["state_dict"].items() if k.startswith(prefix)}

    def pop_ema(self) -> dict[str, torch.Tensor]:
        """Take the EMA's weights out of state_dict (for an EMA kept outside the module tree, which Lightning's
        strict load of the tree would refuse)."""
        ema, state = self.unet("ema"), self.raw["state_dict"]
        for key in ema:
            del state[PREFIXES["ema"] + key]
        return ema

    def restore_rng(self) -> None:
        if "rng" in self.counters:
            restore_rng_states(self.counters["rng"])


def rng_states() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states as tensors and ints (safe for weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "gauss": [has_gauss, cached],
        },
        "python": random.getstate(),
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], *n["gauss"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


def checkpoint_file(path: str | os.PathLike, what: str = "checkpoint", sharded: bool = False) -> Path:
    """A zsnr checkpoint file from a .ckpt path, a run directory or its checkpoints/ folder (their newest);
    with `sharded`, a sharded checkpoint's directory is an answer too (read_sharded reads it)."""
    path = newest_in_run(Path(path).expanduser(), f"{what} {path}")
    if sharded and is_sharded(path):
        return path
    if path.is_dir():
        raise ValueError(
            f"{what} {path} is a directory (a sharded checkpoint); consolidate it into one file first "
            "(python -m lightning_fabric.utilities.consolidate_checkpoint, see the README's FSDP section)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path}: no such file")
    return path


def newest_in_run(path: Path, what: str) -> Path:
    """A run directory or its checkpoints/ folder stands for its newest checkpoint; anything else is itself."""
    if not path.is_dir() or path.name.endswith(".ckpt"):  # a sharded FSDP checkpoint is a *.ckpt directory
        return path
    found = newest_checkpoint(path / "checkpoints") or newest_checkpoint(path)
    if found is None:
        raise FileNotFoundError(f"{what}: no checkpoint in {path} or {path / 'checkpoints'}")
    return found


def newest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path | None:
    directory = Path(checkpoint_dir)
    last = directory / LAST
    if last.exists():  # a dangling link (its target pruned by hand) falls through to the step files
        return last.resolve()
    steps = sorted(directory.glob("step=*.ckpt"))
    return steps[-1] if steps else None


def load_mapped(path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = True) -> Any:
    """torch.load with the tensors memory-mapped (copy-on-write) from the file: only what is used is read.
    A file torch cannot read (truncated, empty, not a checkpoint) is a ValueError that names it."""
    try:
        return torch.load(path, map_location=map_location or "cpu", weights_only=weights_only, mmap=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as err:
        if "mmap" in str(err) and "zip" not in str(err):
            raise ValueError(
                f"{path} cannot be memory-mapped ({err}); it was written with torch.save's legacy format. Load "
                "it once with torch.load and save it again with torch.save (the zip format, the default since "
                "torch 1.6)"
            ) from err
        size = os.path.getsize(path) if os.path.isfile(path) else 0
        raise ValueError(
            f"{path} ({size} bytes) is not a readable checkpoint: {type(err).__name__}: {err or 'empty file'}. "
            "A truncated or empty file is what a crash or a full disk mid-save leaves"
        ) from err


EXTRA = "meta.pt"  # Lightning's name for the non-tensor part of a distributed checkpoint


def is_sharded(path: Path) -> bool:
    """A sharded (torch.distributed.checkpoint) checkpoint directory."""
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
