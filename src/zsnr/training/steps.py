"""What a training step's accounting needs from torch and Lightning: the gradient norm, and un-counting a step.

DiffusionModule owns the step accounting (micro-steps, skipped steps, EMA updates, `stepped`); these are the
two pieces of it that reach into the libraries.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch


def grad_norm(parameters: Any) -> torch.Tensor:
    """Total L2 norm of the gradients (full norm across FSDP2 shards; every rank must call it)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norm = torch.nn.utils.get_total_norm(grads)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def uncount_optimizer_step(trainer: pl.Trainer) -> None:
    """Take back the optimizer step Lightning is counting, from inside LightningModule.optimizer_step.

    Lightning's automatic optimisation counts every call of the optimizer_step hook as a step
    (loops/optimization/automatic.py: increment_ready before the hook, increment_completed after it), and the
    fit loop adds one to the batches that stepped afterwards. Undoing both here leaves global_step where it
    was once the hook returns. test_train_guard checks the counts against a run without bad batches, so a
    Lightning release that counts differently fails there rather than silently.
    """
    loop = trainer.fit_loop.epoch_loop
    progress = loop.automatic_optimization.optim_progress.optimizer.step
    for tracker in (progress.total, progress.current):
        tracker.ready -= 1
        tracker.completed -= 1  # Lightning adds it back right after the hook returns
    loop._batches_that_stepped -= 1  # the fit loop adds one after the batch (the loggers' step)
