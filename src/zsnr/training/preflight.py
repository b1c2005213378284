"""Will the run fit? Checked before any weight loads, from the step's memory plan and what the machine has free.

`launch/train.py` traces one training step on fake tensors (zsnr.training.memory_plan, what
`launch/plan_memory.py` prints), adds what the host holds beside it, and compares:
- on a GPU, the plan's peak per device against the device's free memory (torch.cuda.mem_get_info);
- the host's share against MemAvailable (/proc/meminfo): per training process on this node the Python and torch
  runtime, on the CPU the whole plan (the host is the device), an EMA kept on the host (module.ema_on_cpu);
  and the data workers. A checkpoint to resume from adds nothing: it is memory-mapped, its weights are copied
  into the model and the mapping dropped, its AdamW moments become the optimizer's own pages as they are
  written (tests/integration/test_resume_memory.py measures both).
A fraction of the free memory is left for what the plan does not count: on a GPU 10% (the CUDA context,
allocator fragmentation), on the host 5% (the plan was within 1.5% of the measured peak of SD 2.1 on the CPU;
the page cache of the data and of the checkpoint being written can be dropped). The figures for the runtime and the workers were measured on
the CPU with SD 2.1 at 256 px (tests/fullsize/sd21_check.py); a CUDA process holds more host memory than that
(its driver's), which `runtime_bytes` can be raised for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from zsnr.training.memory_plan import GIB, MemoryPlan

log = logging.getLogger("zsnr.train")
ACTIONS = ("refuse", "warn", "off")
RUNTIME_BYTES = int(0.6 * GIB)  # a training process's own anonymous memory before any model loads (measured)
WORKER_SERVER_BYTES = int(0.45 * GIB)  # the forkserver the data workers start from: torch, the data pipeline
# one data worker: the tokenizer and the pages of the imports it writes (measured)
WORKER_BYTES = int(0.4 * GIB)
# a compressed sample in a worker's shuffle buffer (a LAION JPEG with its json)
SHUFFLED_SAMPLE_BYTES = 100_000


def worker_bytes(shuffle_buffer: int, prefetch_factor: int, batch_bytes: int) -> int:
    """One data worker: its base (measured), its shuffle buffer of compressed samples, its prefetched batches."""
    return WORKER_BYTES + shuffle_buffer * SHUFFLED_SAMPLE_BYTES + prefetch_factor * batch_bytes


class MemoryCheckError(RuntimeError):
    """The run does not fit: raised before anything loads, with what it needs, what is free, what to change."""


@dataclass
class MemoryNeed:
    """Bytes a run needs, by part: on each device (None on the CPU) and on the host (the node, all processes)."""

    device: dict[str, int] | None
    host: dict[str, int]
    advice: list[str] = field(default_factory=list)

    @staticmethod
    def total(parts: dict[str, int] | None) -> int:
        return sum((parts or {}).values())


def memory_need(
    plan: MemoryPlan,
    accelerator: str,
    processes_per_node: int,
    num_workers: int,
    one_worker_bytes: int = WORKER_BYTES,
    runtime_bytes: int = RUNTIME_BYTES,
) -> MemoryNeed:
    """What the planned run holds: the plan on each device, and on the host per node `processes_per_node` x
    (runtime, the plan too when the accelerator is the CPU, a host EMA, the data workers' server and
    `num_workers` workers of `one_worker_bytes` each, see worker_bytes)."""
    gpu = accelerator != "cpu"
    per_process = {"runtime (python, torch)": runtime_bytes}
    if not gpu:
        per_process.update(plan.parts)
    per_process.update({f"{name} (host)": b for name, b in plan.host.items()})
    host = {
        name if processes_per_node == 1 else f"{name} x {processes_per_node}": b * processes_per_node
        for name, b in per_process.items()
    }
    if num_workers > 0:
        workers = processes_per_node * (WORKER_SERVER_BYTES + num_workers * one_worker_bytes)
        host[f"data workers ({num_workers} per process)"] = workers
    return MemoryNeed(
        dict(plan.parts) if gpu else None, host, _advice(plan, gpu, num_workers, one_worker_bytes)
    )


def _advice(plan: MemoryPlan, gpu: bool, num_workers: int, one_worker_bytes: int) -> list[str]:
    """The settings that shrink the parts that are there, largest effect first."""
    parts, setup = plan.parts, plan.setup
    moves = []
    batch_bound = parts.get("activations", 0) + parts.get("temporaries", 0)
    if setup.get("micro_batch_size", 1) > 1:
        moves.append((batch_bound / 2, f"micro_batch_size={setup['micro_batch_size'] // 2} (activations "
                      f"{batch_bound / GIB:.2f} GiB halve; accumulation keeps global_batch_size)"))  # fmt: skip
    moves.append((batch_bound / 2, "model.gradient_checkpointing=true (recomputes activations in backward)"))
    if gpu and parts.get("ema"):
        moves.append(
            (parts["ema"], f"module.ema_on_cpu=true (the EMA, {parts['ema'] / GIB:.2f} GiB, to the host)")
        )
    if gpu and setup.get("strategy") != "fsdp":
        state = sum(parts.get(k, 0) for k in ("unet", "ema", "gradients", "adamw"))
        moves.append((state / 2, f"trainer=fsdp over N GPUs (UNet, EMA, gradients and AdamW, {state / GIB:.2f} "
                      "GiB, divided by N)"))  # fmt: skip
    if num_workers > 0:
        moves.append((num_workers * one_worker_bytes, f"data.num_workers={num_workers // 2} (fewer data workers, "
                      f"{one_worker_bytes / GIB:.2f} GiB each)"))  # fmt: skip
    return [text for _, text in sorted(moves, key=lambda m: -m[0])]


def host_available(root: Path = Path("/")) -> int | None:
    """The memory this process's host can still give it, in bytes: MemAvailable (Linux), or less where a memory
    cgroup limits the job (SLURM's --mem, a container): its limit minus its usage, cgroup v2 or v1. None where
    /proc/meminfo is not there. `root`: where /proc and /sys are (tests)."""
    try:
        lines = (root / "proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    free = next((int(x.split()[1]) * 1024 for x in lines if x.startswith("MemAvailable:")), None)
    limit = cgroup_free(root)
    return free if limit is None or free is None else min(free, limit)


def cgroup_free(root: Path = Path("/")) -> int | None:
    """Limit minus usage of this process's memory cgroup (v2: memory.max / memory.current; v1:
    memory.limit_in_bytes / memory.usage_in_bytes); None without a limit."""
    try:
        entries = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for entry in entries:
        _, controllers, path = entry.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            base, files = root / "sys/fs/cgroup" / path.lstrip("/"), ("memory.max", "memory.current")
        elif "memory" in controllers.split(","):
            base = root / "sys/fs/cgroup/memory" / path.lstrip("/")
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes")
        else:
            continue
        try:
            limit, used = ((base / f).read_text().strip() for f in files)
        except OSError:
            continue
        if limit == "max" or int(limit) >= 2**60:  # v2's and v1's "no limit"
            continue
        return int(limit) - int(used)
    return None


def device_free(index: int) -> int:
    """Free memory of CUDA device `index`, in bytes."""
    import torch

    free, _ = torch.cuda.mem_get_info(index)
    return int(free)


def _table(parts: dict[str, int]) -> str:
    return ", ".join(f"{name} {b / GIB:.2f}" for name, b in parts.items())


def check_memory(
    need: MemoryNeed,
    host_free: int | None,
    device_free_bytes: int | None,
    device_headroom: float = 0.1,
    host_headroom: float = 0.05,
    action: str = "refuse",
) -> list[str]:
    """Compare; returns the lines that say what was checked. A need over (1 - headroom) x free raises
    MemoryCheckError (action "refuse") or logs it as a warning ("warn"). `host_free` None: the host is not
    checked (a process that is not its node's first, or no /proc/meminfo), and the lines say so."""
    if action not in ACTIONS:
        raise ValueError(f"memory_check.action must be one of {ACTIONS}, got {action!r}")
    for name, value in (("device_headroom", device_headroom), ("host_headroom", host_headroom)):
        if not 0 <= value < 1:
            raise ValueError(f"memory_check.{name} must be in [0, 1), got {value}")
    report, problems = [], []
    for where, parts, free, headroom in (
        ("device", need.device, device_free_bytes, device_headroom),
        ("host", need.host, host_free, host_headroom),
    ):
        if parts is None:
            continue
        total = MemoryNeed.total(parts)
        if free is None:
            report.append(f"{where}: needs {total / GIB:.2f} GiB, free memory not known here: not checked")
            continue
        usable = (1 - headroom) * free
        verdict = "fits" if total <= usable else "does NOT fit"
        line = (f"{where}: needs {total / GIB:.2f} GiB ({_table(parts)}), {free / GIB:.2f} GiB free, "
                f"{usable / GIB:.2f} GiB usable with {headroom:.0%} headroom: {verdict}")  # fmt: skip
        report.append(line)
        if total > usable:
            problems.append(line)
    if problems:
        message = (
            "this run does not fit in memory (checked before loading anything):\n  "
            + "\n  ".join(problems)
            + "\nTo fit, change (largest effect first): "
            + "; ".join(need.advice)
            + ". Or start it anyway: memory_check.action=warn (or off)"
        )
        if action == "refuse":
            raise MemoryCheckError(message)
        log.warning("%s", message)
    return report
