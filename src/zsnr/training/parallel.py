"""How the UNet is compiled, sharded and wrapped, for every strategy, in one function (torchtitan's parallelize_*).

    trainer=cpu | gpu   one process: the UNet as built (optionally compiled: see `compile_choice`)
    trainer=ddp         Lightning's DDPStrategy replicates the LightningModule and all-reduces the UNet's gradients
    trainer=fsdp        FSDP2: `fully_shard` on every down block, the mid block and every up block, then on the
                        root (conv_in, time embedding, conv_out), on a 1-D data-parallel mesh over all processes

Only the UNet (and its EMA copy) are ever touched: the frozen autoencoder and text encoder live outside the
LightningModule's module tree (see module.py), so DDP never wraps them and FSDP never shards them; every process
keeps a full copy and runs them under no_grad.

FSDP2 details. Parameters are stored as float32 DTensor shards: the optimizer and the EMA update those shards (the
fp32 master weights; AdamW's moments are sharded the same way). With precision "bf16-mixed" the blocks all-gather
their weights in bfloat16 and compute in bfloat16 (MixedPrecisionPolicy param_dtype), while gradients are
reduce-scattered in float32 (reduce_dtype): "bf16 compute, fp32 master weights". With "32-true" everything is
float32 (what the CPU tests run). The EMA copy is sharded by the same plan, so shard i of each EMA tensor sits on
the rank that holds shard i of the weight it averages; it always computes in float32 when sampling.
Checkpoints are then sharded too (one file per rank plus meta.pt, written with torch.distributed.checkpoint);
see the README's multi-node section for resuming on another world size and for consolidating one into a file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import ModelParallelStrategy
from torch import nn
from torch.nn.parallel import DistributedDataParallel

PARAM_DTYPES = {"bf16-mixed": torch.bfloat16}  # Lightning precision -> FSDP2 compute dtype; others: float32
EMA_ON_CPU_UNDER_FSDP = (
    "module.ema_on_cpu=true does not combine with trainer=fsdp: there the EMA is sharded like the UNet (1 / world "
    "size of it per device) and updated shard by shard; set module.ema_on_cpu=false"
)


def unet_blocks(unet: nn.Module) -> list[nn.Module]:
    """The units FSDP shards and torch.compile compiles: down blocks, mid block, up blocks (diffusers' names)."""
    missing = [name for name in ("down_blocks", "mid_block", "up_blocks") if not hasattr(unet, name)]
    if missing:
        raise TypeError(
            f"parallelize_unet expects a diffusers UNet2DConditionModel (down_blocks, mid_block, up_blocks); "
            f"{type(unet).__name__} has no {missing}"
        )
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    return [b for b in blocks if b is not None]


COMPILE_CHOICES = ("blocks", "loss")


def compile_choice(value: bool | str | None) -> str | None:
    """module.compile: false (eager), true or "blocks" (each UNet block compiled in place: what composes with
    FSDP2's per-block sharding), "loss" (DiffusionModule.per_sample_loss as one graph: add_noise, the UNet, the
    target, the weighted MSE; the random draws and the encoders stay eager, the generators they take are opaque
    to torch.compile). Returns None, "blocks" or "loss"."""
    if value is None or value is False or value == "false":
        return None
    if value is True or value == "true":
        return "blocks"
    if value not in COMPILE_CHOICES:
        raise ValueError(f"module.compile must be false, true, 'blocks' or 'loss', got {value!r}")
    return str(value)


def is_sharded(module: nn.Module) -> bool:
    return any(hasattr(p, "device_mesh") for p in module.parameters())  # DTensor parameters


def parallelize_unet(
    unet: nn.Module,
    mesh: Any | None = None,
    precision: str = "32-true",
    compile: bool | str = False,
    reshard_after_forward: bool = True,
    compile_mode: str | None = None,
) -> nn.Module:
    """Compile (optionally) and shard `unet` in place; returns it. Idempotent (Lightning may call it twice).

    mesh: a 1-D DeviceMesh to shard over (FSDP2), or None (one process or DDP: nothing to shard; Lightning's
        DDPStrategy wraps the whole LightningModule afterwards).
    precision: the Trainer's precision; "bf16-mixed" means bfloat16 compute over float32 shards (see above).
    compile: compile_choice's values; "blocks" compiles each block in place (parameter names and checkpoints
        stay the same) with torch.compile's `compile_mode`; "loss" leaves the UNet to the module's compiled loss.
    reshard_after_forward: free each block's gathered weights after its forward (ZeRO-3); False keeps them
        until the backward (ZeRO-2: more memory, one all-gather less per step).
    Gradient checkpointing is the model config's switch (`model.gradient_checkpointing`, diffusers' own), and it
    composes with both: each block recomputes its activations, FSDP re-gathers its weights for that.
    """
    if compile_choice(compile) == "blocks":
        for block in unet_blocks(unet):
            if getattr(block, "_compiled_call_impl", None) is None:
                block.compile(mode=compile_mode)
    if mesh is None or is_sharded(unet):
        return unet
    blocks = unet_blocks(unet)
    if mesh.ndim != 1:
        raise ValueError(f"parallelize_unet shards over a 1-D data-parallel mesh, got {mesh.ndim}-D: {mesh}")
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    param_dtype = PARAM_DTYPES.get(str(precision))
    policy = MixedPrecisionPolicy(
        param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype is not None else None
    )
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(unet, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    return unet


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ModelParallelStrategy as pure FSDP2: one data-parallel mesh dimension over every process of
    every node (ModelParallelStrategy's own "auto" would make it nodes x GPUs-per-node tensor parallel).

    The LightningModule's `configure_model` calls `parallelize_unet` with `self.device_mesh["data_parallel"]`.
    save_distributed_checkpoint=True writes sharded checkpoints (a directory per checkpoint); False gathers
    full weights and optimizer state on rank 0 into one file (slower, needs host memory for the whole state).
    """

    def __init__(self, save_distributed_checkpoint: bool = True, **kwargs: Any) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


class LightningDataParallel:
    """zsnr.training.step.train_step's view of the other ranks under the module's Lightning strategy.

    gradient_sync(False): DDP's no_sync (Lightning's DDPStrategy wraps the LightningModule), FSDP2's
    set_requires_gradient_sync(False) (the UNet's own), nothing in one process: the micro-batches before a
    window's last accumulate their gradients locally and the last backward all-reduces (reduce-scatters) the
    sum once. backward: Lightning's manual_backward (precision plugin, DDP's reducer). all_finite: the skip flag
    agreed by every rank (one 1-element all-reduce) and read on the host, once per step.
    """

    def __init__(self, module: pl.LightningModule) -> None:
        self.module = module

    def gradient_sync(self, enabled: bool) -> contextlib.AbstractContextManager:
        if enabled:
            return contextlib.nullcontext()
        wrapped = self.module.trainer.strategy.model
        if isinstance(wrapped, DistributedDataParallel):
            return wrapped.no_sync()
        if is_sharded(self.module.unet):
            return _fsdp_no_gradient_sync(self.module.unet)
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.module.manual_backward(loss)

    def all_finite(self, bad: torch.Tensor) -> bool:
        if self.module.trainer.world_size > 1:
            bad = bad.float()
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
        return not bool(bad)


@contextlib.contextmanager
def _fsdp_no_gradient_sync(unet: nn.Module) -> Iterator[None]:
    unet.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        unet.set_requires_gradient_sync(True)
