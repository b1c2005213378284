"""Global batch arithmetic: name the units, derive the rest.

global_batch_size = micro_batch_size x world_size x accumulate_grad_batches
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPlan:
    global_batch_size: int
    micro_batch_size: int
    world_size: int
    accumulate_grad_batches: int

    def describe(self) -> str:
        return (
            f"global batch {self.global_batch_size} = micro-batch {self.micro_batch_size} x "
            f"{self.world_size} processes x {self.accumulate_grad_batches} accumulation steps"
        )


def world_size(devices: int | str | list | tuple, num_nodes: int = 1, accelerator: str = "auto") -> int:
    """Processes a Trainer with these arguments runs: devices per node x nodes.

    devices may be an int, a list of device ids, or "auto" (all visible GPUs when the accelerator may be a
    GPU and CUDA is available, else 1 process: Lightning's CPU "auto" is one process too).
    """
    if isinstance(devices, (list, tuple)):
        per_node = len(devices)
    elif isinstance(devices, str) and devices not in ("auto", "-1"):
        per_node = len([d for d in devices.split(",") if d.strip()]) if "," in devices else int(devices)
    elif isinstance(devices, int) and devices > 0:
        per_node = devices
    else:
        import torch

        gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        per_node = torch.cuda.device_count() if gpu else 1
    return per_node * int(num_nodes)


def plan_batches(global_batch_size: int, micro_batch_size: int, world: int) -> BatchPlan:
    """Accumulation steps for a global batch; a clear error when the numbers do not divide."""
    if global_batch_size <= 0 or micro_batch_size <= 0 or world <= 0:
        raise ValueError(
            f"batch sizes and world size must be positive, got global_batch_size={global_batch_size}, "
            f"micro_batch_size={micro_batch_size}, world size={world}"
        )
    per_step = micro_batch_size * world
    if global_batch_size % per_step:
        fits = [m for m in range(1, min(global_batch_size, 4096) + 1) if global_batch_size % (m * world) == 0]
        raise ValueError(
            f"global_batch_size={global_batch_size} is not a multiple of micro_batch_size x world size = "
            f"{micro_batch_size} x {world} = {per_step}. Change micro_batch_size (values that divide here: "
            f"{fits[-6:]}), global_batch_size, or the number of devices/nodes."
        )
    return BatchPlan(global_batch_size, micro_batch_size, world, global_batch_size // per_step)
