"""One optimizer step, top to bottom: `train_step(update, window, objective, data_parallel)`.

The whole update is this one function (nanoGPT's and torchtitan's shape): the micro-batch loop with the gradient
all-reduce on its last micro-batch only, the loss, backward, one gradient norm, the skip decision, clipping,
AdamW, the LR schedule and the EMA, in the order written. DiffusionModule runs it under Lightning's manual
optimisation (one Lightning batch is one window of micro-batches); the memory planner traces it and the overhead
benchmark's bare loop calls it, so there is one copy of the update.

A skipped step is not a step. A non-finite loss in any micro-batch on any rank, or a non-finite gradient norm,
drops the window's gradients: no AdamW, LR-scheduler or EMA update, and the optimizer's step count (Lightning's
global_step) stays where it was, so a run still makes max_steps real updates. Finiteness accumulates on the
device over the window and is decided once per step: one collective (a 1-element all-reduce, skipped in one
process) and one device-to-host read, the only host sync of a step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from zsnr.training.ema import EMA

Batch = Any  # a micro-batch as the data pipeline hands it over (a dict of tensors and captions)
Objective = Callable[
    [Batch], tuple[torch.Tensor, torch.Tensor]
]  # micro-batch -> (per-sample loss, timesteps)


class DataParallel(Protocol):
    """How the step talks to the other ranks (DiffusionModule's adapter for Lightning's strategies)."""

    def gradient_sync(self, enabled: bool) -> contextlib.AbstractContextManager: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def all_finite(self, bad: torch.Tensor) -> bool: ...


class OneProcess:
    """No other ranks: plain backward, nothing to synchronise, the flag read once."""

    def gradient_sync(self, enabled: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def all_finite(self, bad: torch.Tensor) -> bool:
        return not bool(bad)


@dataclass
class SkipCounter:
    """Optimizer steps not taken for a non-finite loss or gradient; too many in a row stop the run."""

    max_consecutive: int = 10
    skipped: int = 0
    consecutive: int = 0

    def record(self, applied: bool, step: int) -> None:
        if applied:
            self.consecutive = 0
            return
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive:
            raise RuntimeError(
                f"{self.consecutive} optimizer steps in a row had a non-finite loss or gradient (at step {step}, "
                f"{self.skipped} skipped in all); stopping. Lower the learning rate, check the data (batch stats) "
                "and the precision setting, then resume from the last checkpoint."
            )

    def state_dict(self) -> dict[str, int]:
        return {"skipped_steps": self.skipped, "consecutive_skips": self.consecutive}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.skipped = int(saved.get("skipped_steps", 0))
        self.consecutive = int(saved.get("consecutive_skips", 0))


@dataclass
class Update:
    """What a step changes besides the gradients, in the order train_step applies it."""

    params: list[torch.Tensor]  # the optimizer's parameters
    optimizer: Any  # torch.optim.Optimizer (or Lightning's wrapper of it, which counts global_step)
    scheduler: Any | None = None  # an LR scheduler stepped once per applied step
    ema: EMA | None = None
    max_grad_norm: float | None = 1.0  # clip to this total norm; None or 0: no clipping
    skips: SkipCounter = field(default_factory=SkipCounter)
    steps_done: int = 0  # applied steps before this one (for the skip message)


@dataclass
class StepResult:
    """What callbacks read after a step (DiffusionModule.last_step): tensors stay on the device."""

    applied: bool
    grad_norm: torch.Tensor  # total norm before clipping
    micro_losses: torch.Tensor  # [micro-batches]: each micro-batch's mean loss
    per_sample_loss: torch.Tensor  # [samples of the window], detached
    timesteps: torch.Tensor  # [samples of the window]


def train_step(
    update: Update, window: Sequence[Batch], objective: Objective, dp: DataParallel | None = None
) -> StepResult:
    """One optimizer step over a window of micro-batches (gradient accumulation); see the module docstring."""
    dp = dp or OneProcess()
    losses, timesteps, micro = [], [], []
    for i, batch in enumerate(window):
        with dp.gradient_sync(enabled=i == len(window) - 1):  # all-reduce once, on the last backward
            per_sample, t = objective(batch)
            loss = per_sample.mean()
            dp.backward(loss / len(window))
        losses.append(per_sample.detach())
        timesteps.append(t)
        micro.append(loss.detach())
    micro_losses = torch.stack(micro)  # on the device: no host sync per micro-batch
    norm = grad_norm(update.params)
    bad = ~(torch.isfinite(micro_losses).all() & torch.isfinite(norm))
    applied = dp.all_finite(bad)  # the step's one collective and one host sync
    if applied:
        if update.max_grad_norm:
            clip_(update.params, update.max_grad_norm, norm)
        update.optimizer.step()
        if update.scheduler is not None:
            update.scheduler.step()
        if update.ema is not None:
            update.ema.step()
    update.optimizer.zero_grad(set_to_none=True)  # a skipped step's gradients go unused
    update.skips.record(applied, update.steps_done)
    return StepResult(applied, norm, micro_losses, torch.cat(losses), torch.cat(timesteps))


def every_n_steps(result: StepResult | None, step: int, n: int) -> bool:
    """Whether the step just taken is an applied one whose count `step` (global_step) is a multiple of n; n = 0
    never. What every periodic callback (checkpoints, metrics, samples, validation) asks."""
    return result is not None and result.applied and bool(n) and step % n == 0


def grad_norm(parameters: Iterator[torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
    """Total L2 norm of the gradients (the full norm across FSDP2 shards; every rank must call it)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norm = torch.nn.utils.get_total_norm(grads)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def clip_(params: Sequence[torch.Tensor], max_norm: float, norm: torch.Tensor) -> None:
    """Scale the gradients to total norm `max_norm` with the norm already measured (clip_grad_norm_ without
    measuring twice); sharded gradients (FSDP2's DTensors) scale their local shards by the global norm."""
    grads = [p.grad for p in params if p.grad is not None]
    if all(type(g) is torch.Tensor for g in grads):
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in grads:
        local = g.to_local() if hasattr(g, "to_local") else g
        local.mul_(coef.to(local.device, local.dtype))
