"""Exponential moving average of the UNet's weights, kept in float32.

    ema <- decay * ema + (1 - decay) * param        (= lerp(ema, param, 1 - decay))

Updated parameter by parameter on each process's *local* tensors, so it works unchanged on FSDP2-sharded
parameters (DTensors: each rank updates its own shard) as well as on plain and DDP-replicated ones. Lightning's
EMAWeightAveraging is not used: it copies the whole LightningModule, refuses sharded models, and swaps the
averaged weights into the model at the end of training, which would make a resumed run differ from a straight one.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def ema_decay(step: int, decay: float, warmup: bool = False) -> float:
    """The decay used at optimizer step `step` (0-based count of updates done so far).

    With warmup, min(decay, (1 + step) / (10 + step)): early averages follow the fast-moving weights
    (0.1 at step 0, 0.5 at step 8, 0.9 at step 80, 0.99 at step 890) instead of the initialisation.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # DTensor -> this rank's shard


@torch.no_grad()
def ema_update_(ema_params: Iterable[torch.Tensor], params: Iterable[torch.Tensor], decay: float) -> None:
    """In place on `ema_params`; both iterables must list the same tensors in the same order and layout."""
    ema = [_local(e) for e in ema_params]
    src = [_local(p).detach() for p in params]
    if len(ema) != len(src):
        raise ValueError(f"EMA has {len(ema)} tensors but the model has {len(src)}; they must match")
    for e, s in zip(ema, src, strict=True):
        if e.shape != s.shape:
            raise ValueError(
                f"EMA tensor of shape {tuple(e.shape)} paired with a model tensor {tuple(s.shape)}"
            )
    src = [s if s.dtype == e.dtype else s.to(e.dtype) for e, s in zip(ema, src, strict=True)]
    if ema:
        torch._foreach_lerp_(ema, src, 1.0 - decay)
