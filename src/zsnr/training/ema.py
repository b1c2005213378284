"""Exponential moving average of the UNet's weights, kept in float32.

    ema <- decay * ema + (1 - decay) * param        (= lerp(ema, param, 1 - decay))

Updated parameter by parameter on each process's *local* tensors, so it works unchanged on FSDP2-sharded
parameters (DTensors: each rank updates its own shard) as well as on plain and DDP-replicated ones. Lightning's
EMAWeightAveraging is not used: it copies the whole LightningModule, refuses sharded models, and swaps the
averaged weights into the model at the end of training, which would make a resumed run differ from a straight one.

Two options trade accuracy of timing for cost (DiffusionModule's ema_every_n_steps and ema_on_cpu):
- every N optimizer steps, with the decay of the N steps in one (`window_decay`): a step change of the weights
  then reaches the EMA by the same fraction after the same number of steps, so the averaging horizon,
  1 / (1 - decay) steps, is unchanged; what changes is that the N - 1 steps in between are represented by the
  window's last weights (the average is up to N - 1 steps fresher than the every-step one).
- an EMA in host memory while the UNet is on an accelerator: the weights are copied to the host in chunks
  (`HOST_CHUNK_BYTES` of pinned staging memory at a time) and averaged there, on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

HOST_CHUNK_BYTES = 256 * 2**20  # device-to-host staging per chunk: bounds the extra pinned host memory


def ema_decay(step: int, decay: float, warmup: bool = False) -> float:
    """The decay used at optimizer step `step` (0-based count of updates done so far).

    With warmup, min(decay, (1 + step) / (10 + step)): early averages follow the fast-moving weights
    (0.1 at step 0, 0.5 at step 8, 0.9 at step 80, 0.99 at step 890) instead of the initialisation.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


def window_decay(first_step: int, steps: int, decay: float, warmup: bool = False) -> float:
    """The decay of `steps` consecutive optimizer steps from `first_step` on, folded into one update: the
    product of their per-step decays (decay ** steps without warmup)."""
    out = 1.0
    for step in range(first_step, first_step + steps):
        out *= ema_decay(step, decay, warmup)
    return out


@dataclass
class EMASchedule:
    """When the EMA takes in the weights, and with which decay. Part of DiffusionModule's step accounting:
    `step()` after every optimizer step that was taken returns the decay to apply now, or None in between."""

    decay: float
    warmup: bool = False
    every_n_steps: int = 1
    updates: int = 0  # EMA updates so far
    steps: int = 0  # optimizer steps the EMA has taken in (the warmup's step count)
    pending: int = 0  # optimizer steps since the last update

    def __post_init__(self) -> None:
        ema_decay(0, self.decay)  # checks the range
        if int(self.every_n_steps) != self.every_n_steps or self.every_n_steps < 1:
            raise ValueError(f"module.ema_every_n_steps must be an integer >= 1, got {self.every_n_steps}")

    def step(self) -> float | None:
        self.pending += 1
        if self.pending < self.every_n_steps:
            return None
        decay = window_decay(self.steps, self.pending, self.decay, self.warmup)
        self.updates, self.steps, self.pending = self.updates + 1, self.steps + self.pending, 0
        return decay

    def state_dict(self) -> dict[str, int]:
        return {"ema_updates": self.updates, "ema_steps": self.steps, "ema_pending": self.pending}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.updates = int(saved.get("ema_updates", 0))
        self.steps = int(saved.get("ema_steps", self.updates))  # checkpoints before every_n_steps: equal
        self.pending = int(saved.get("ema_pending", 0))


class EMA:
    """The average of `model`'s weights kept in `average` (same layout), and when it takes them in: `step()` after
    every applied optimizer step (zsnr.training.step.train_step)."""

    def __init__(self, average: torch.nn.Module, model: torch.nn.Module, schedule: EMASchedule) -> None:
        self.average, self.model, self.schedule = average, model, schedule
        self._lists: tuple[tuple[torch.Tensor, ...], list, list] | None = None

    def step(self) -> None:
        decay = self.schedule.step()  # every every_n_steps applied steps, with their decay in one
        if decay is not None:
            ema_update_(*self._pairs(), decay)

    def _pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(average, model) parameters, listed once and again only when a module's tensors were replaced (FSDP's
        sharding in configure_model): walking both module trees at every step cost ~12 ms of a 184 ms tiny-UNet
        step under cProfile on a CPU (the overhead benchmark)."""
        firsts = (next(self.average.parameters()), next(self.model.parameters()))
        if self._lists is None or any(a is not b for a, b in zip(self._lists[0], firsts, strict=True)):
            self._lists = (firsts, list(self.average.parameters()), list(self.model.parameters()))
        return self._lists[1], self._lists[2]


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # DTensor -> this rank's shard


@torch.no_grad()
def ema_update_(ema_params: Iterable[torch.Tensor], params: Iterable[torch.Tensor], decay: float) -> None:
    """In place on `ema_params`; both iterables must list the same tensors in the same order and layout. The
    EMA may live on another device than the parameters (the host: see the module docstring)."""
    ema = [_local(e) for e in ema_params]
    src = [_local(p).detach() for p in params]
    if len(ema) != len(src):
        raise ValueError(f"EMA has {len(ema)} tensors but the model has {len(src)}; they must match")
    for e, s in zip(ema, src, strict=True):
        if e.shape != s.shape:
            raise ValueError(
                f"EMA tensor of shape {tuple(e.shape)} paired with a model tensor {tuple(s.shape)}"
            )
    if not ema:
        return
    if ema[0].device == src[0].device:
        src = [s if s.dtype == e.dtype else s.to(e.dtype) for e, s in zip(ema, src, strict=True)]
        torch._foreach_lerp_(ema, src, 1.0 - decay)
        return
    start, size = 0, 0
    for i, s in enumerate(src):  # chunks of about HOST_CHUNK_BYTES: copy (asynchronously), wait, average
        size += s.numel() * s.element_size()
        if size >= HOST_CHUNK_BYTES or i == len(src) - 1:
            staged = [t.to(ema[0].device, non_blocking=True) for t in src[start : i + 1]]
            if src[0].device.type == "cuda":
                torch.cuda.current_stream(src[0].device).synchronize()
            staged = [t.to(e.dtype) for e, t in zip(ema[start : i + 1], staged, strict=True)]
            torch._foreach_lerp_(ema[start : i + 1], staged, 1.0 - decay)
            start, size = i + 1, 0
