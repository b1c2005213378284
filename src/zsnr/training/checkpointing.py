"""Checkpoints that a crash can never break, `resume=auto`, and RNG state that loads with weights_only=True.

Layout of a run directory:
    checkpoints/step=000200.ckpt   every `every_n_steps` optimizer steps, and one at the end of training
    checkpoints/last.ckpt          a symlink to the newest complete checkpoint

Each checkpoint is written to a temporary name and renamed into place (an atomic operation on POSIX file
systems); `last.ckpt` is then swapped by renaming a fresh symlink over it. A crash at any moment leaves either
the old or the new `last`, both complete. Under sharded strategies the checkpoint path is a directory, which is
renamed the same way.

`StreamingCheckpointIO` writes a checkpoint straight to its (temporary) file and memory-maps it on load.
Lightning's default `TorchCheckpointIO` serialises the whole checkpoint into a BytesIO first, which for SD 2.1
(UNet, EMA and AdamW moments: 12.9 GB) doubles the host memory a save needs.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn

from zsnr.models.checkpoint import LAST, load_mapped, newest_checkpoint, newest_in_run
from zsnr.training.step import every_n_steps


def step_name(step: int) -> str:
    return f"step={step:06d}.ckpt"


class StreamingCheckpointIO(TorchCheckpointIO):
    """torch.save straight to the path (no in-memory copy), torch.load(mmap=True) on load.

    Atomicity comes from AtomicCheckpoint, which saves to a temporary name and renames it into place. Loading
    maps the file twice: Lightning keeps the optimizer states (AdamW moments) alive after it has copied the
    weights into the model, and a tensor keeps its whole mapping alive, so from one mapping the weights' pages,
    once read, would stay resident for the rest of the run. From their own mapping they go with the dict.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        if "://" in str(path):
            raise ValueError(f"checkpoints are written to local paths only, got {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint, path)

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        checkpoint = load_mapped(path, map_location, weights_only)
        if "optimizer_states" in checkpoint:
            checkpoint["optimizer_states"] = load_mapped(path, map_location, weights_only)["optimizer_states"]
        return checkpoint


class AtomicCheckpoint(pl.Callback):
    """Save every `every_n_steps` optimizer steps and at the end; keep the newest `keep_last` step files."""

    def __init__(
        self, dirpath: str | os.PathLike, every_n_steps: int = 1000, keep_last: int | None = 3
    ) -> None:
        if every_n_steps <= 0:
            raise ValueError(f"every_n_steps must be positive, got {every_n_steps}")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.keep_last = keep_last
        self._saved_step = -1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        # only right after an applied optimizer step, never for a skipped one
        if every_n_steps(pl_module.last_step, trainer.global_step, self.every_n_steps):
            self.save(trainer, trainer.global_step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._saved_step:
            self.save(trainer, trainer.global_step)

    def save(self, trainer: pl.Trainer, step: int) -> Path:
        """Collective: every rank calls it (sharded strategies write one piece per rank)."""
        final = self.dirpath / step_name(step)
        tmp = self.dirpath / f".tmp-{step_name(step)}"
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            _remove(tmp)
        trainer.strategy.barrier("zsnr_checkpoint_prepare")
        self._saved_step = step  # before saving: the checkpoint records itself as saved
        trainer.save_checkpoint(tmp, weights_only=False)
        trainer.strategy.barrier("zsnr_checkpoint_written")
        if trainer.is_global_zero:
            _remove(final)
            os.replace(tmp, final)
            link_tmp = self.dirpath / f".tmp-{LAST}"
            _remove(link_tmp)
            os.symlink(final.name, link_tmp)
            os.replace(link_tmp, self.dirpath / LAST)
            self._prune()
            rank_zero_info(f"checkpoint: {final} (last -> {final.name})")
        trainer.strategy.barrier("zsnr_checkpoint_done")
        return final

    def _prune(self) -> None:
        if not self.keep_last:
            return
        steps = sorted(self.dirpath.glob("step=*.ckpt"))
        for old in steps[: -self.keep_last]:
            _remove(old)

    def state_dict(self) -> dict[str, Any]:
        return {"saved_step": self._saved_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved_step = int(state_dict.get("saved_step", -1))


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def resolve_resume(resume: str | None, checkpoint_dir: str | os.PathLike) -> str | None:
    """`resume`: None (start fresh), "auto" (the run's newest readable checkpoint if there is one), or a path
    to a checkpoint or to a run/checkpoint directory (its last). Returns the checkpoint path for Trainer.fit.
    Runs before any model loads: a missing or unreadable file is an error naming it; resume=auto skips an
    unreadable newest checkpoint (a crash mid-save) for the previous intact one, with a warning."""
    if resume in (None, "", "none", "null"):
        return None
    if resume == "auto":
        found = _readable_newest(Path(checkpoint_dir))
        rank_zero_info(
            f"resume=auto: {'continuing from ' + str(found) if found else 'no checkpoint yet, fresh start'}"
        )
        return str(found) if found else None
    path = newest_in_run(Path(resume).expanduser(), f"resume={resume}")
    if not path.exists():
        raise FileNotFoundError(f"resume={resume}: no such checkpoint. Use resume=auto or a path to a .ckpt")
    if path.is_file():  # (a sharded FSDP checkpoint is a directory, read by torch.distributed.checkpoint)
        load_mapped(path)  # memory-mapped: reads the archive's index, not the tensors
    return str(path)


def _readable_newest(directory: Path) -> Path | None:
    newest = newest_checkpoint(directory)
    candidates = [newest] if newest else []
    candidates += [p for p in sorted(directory.glob("step=*.ckpt"), reverse=True) if p != newest]
    for i, path in enumerate(candidates):
        if path.is_dir():
            return path
        try:
            load_mapped(path)
        except ValueError as err:
            rest = candidates[i + 1 :]
            rank_zero_warn(f"resume=auto: skipping {path}: {err}" + ("" if rest else "; no intact one left"))
            continue
        return path
    if candidates:
        raise ValueError(f"resume=auto: no checkpoint in {directory} is readable ({len(candidates)} tried)")
    return None


def steps_under_manual_optimisation(checkpoint: dict[str, Any]) -> None:
    """In place: a checkpoint written while zsnr's update ran under Lightning's automatic optimisation keeps
    its optimizer-step count in the automatic loop's progress, where the manual loop (train_step's, which
    Lightning's global_step reads now) does not look: it would resume at step 0. The count is copied across, so
    such a checkpoint resumes at its own step. Checkpoints written since are left as they are."""
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    automatic = loops.get("epoch_loop.automatic_optimization.optim_progress", {}).get("optimizer", {})
    manual = loops.get("epoch_loop.manual_optimization.optim_step_progress")
    steps = automatic.get("step")
    if steps and manual and manual["total"]["completed"] == 0 and steps["total"]["completed"] > 0:
        loops["epoch_loop.manual_optimization.optim_step_progress"] = copy.deepcopy(steps)
