"""Sampling on several processes: which images a rank makes, and how the ranks' results come together.

Processes come from a launcher (torchrun, or srun with MASTER_ADDR / MASTER_PORT exported: `from_environment`
reads RANK / WORLD_SIZE / LOCAL_RANK, or SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID) or from `spawn`, the
`devices=N` of launch/sample.py and launch/evaluate.py on one machine: this process becomes rank 0 and starts
N - 1 copies of its own command with their rank in the environment (what Lightning does for training).

Work is split by batch, not by image: global batch b (images b*B .. b*B + B - 1, image k with seed + k) is made by
rank b mod N. Every image is then made in the batch it has on one process, from its own generator, so it is the
same bit for bit whatever N is (on the same device and thread count). Results are gathered whole, keyed by image
index and put back in index order, so the metrics are computed on exactly the tensors one process would have.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

# Rank 0 alone computes the metrics (and, on a first run, the FID reference statistics) while the others wait
# at the next collective: longer than the default 10 to 30 minutes.
TIMEOUT = timedelta(hours=4)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in 0..{self.world_size - 1} (world size), got {self.rank}")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def batches(self, n: int, batch_size: int) -> list[range]:
        """This rank's batches of images 0 .. n - 1: global batch b goes to rank b mod world_size."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        starts = range(0, n, batch_size)[self.rank :: self.world_size]
        return [range(s, min(s + batch_size, n)) for s in starts]

    def images(self, n: int, batch_size: int) -> list[int]:
        """The indices of this rank's batches, in order. Every batch but the global last is `batch_size`
        long, so zsnr.sampling.generate(..., batch_size) splits them into the same batches again."""
        return [i for batch in self.batches(n, batch_size) for i in batch]

    def device(self, device: torch.device) -> torch.device:
        """A rank's own accelerator: cuda becomes cuda:local_rank when there are several processes."""
        if device.type == "cuda" and device.index is None and self.world_size > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def gather(self, tensors: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every rank's rows (row i is image index[i]), concatenated over ranks and sorted by image index, on
        every rank. A rank with no rows passes an empty dict."""
        if self.world_size > 1:
            parts: list[Any] = [None] * self.world_size
            dist.all_gather_object(parts, (index.cpu(), {k: v.cpu() for k, v in tensors.items()}))
            index = torch.cat([i for i, _ in parts])
            names = {k for _, p in parts for k in p}  # a rank without images has none
            tensors = {k: torch.cat([p[k] for _, p in parts if k in p]) for k in sorted(names)}
        order = torch.argsort(index)
        return {k: v[order] for k, v in tensors.items()}

    def gather_objects(self, items: list[Any]) -> list[Any]:
        """Every rank's list, concatenated in rank order, on every rank."""
        if self.world_size == 1:
            return list(items)
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, items)
        return [item for part in parts for item in part]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def from_environment(env: dict[str, str] | None = None) -> Ranks | None:
    """The ranks a launcher set up (torchrun's RANK / WORLD_SIZE / LOCAL_RANK, else srun's SLURM_PROCID /
    SLURM_NTASKS / SLURM_LOCALID), or None for a single process."""
    env = os.environ if env is None else env
    for rank, world, local in (("RANK", "WORLD_SIZE", "LOCAL_RANK"),
                               ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")):  # fmt: skip
        if int(env.get(world, 1)) > 1:
            return Ranks(int(env[rank]), int(env[world]), int(env.get(local, 0)))
    return None


@contextmanager
def process_group(ranks: Ranks, device: torch.device) -> Iterator[Ranks]:
    """Join the process group of `ranks` (nccl on CUDA, gloo elsewhere) for the duration; nothing for one
    process or when a group exists already. Needs MASTER_ADDR and MASTER_PORT in the environment."""
    if ranks.world_size == 1 or dist.is_initialized():
        yield ranks
        return
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"{ranks.world_size} processes but {missing} not set: launch with torchrun, or export them before "
            "srun (slurm/evaluate_sweep.sbatch shows how), or use devices=N on one machine"
        )
    cuda = ranks.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(ranks.device(device))
    dist.init_process_group(
        "nccl" if cuda else "gloo", rank=ranks.rank, world_size=ranks.world_size, timeout=TIMEOUT
    )
    try:
        yield ranks
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def spawn(
    devices: int, command: Callable[[int], tuple[list[str], str | Path]], device: torch.device
) -> Iterator[Ranks]:
    """This process as rank 0 of `devices` on this machine; rank r in 1 .. devices - 1 runs command(r) (a
    command line and the directory to run it in: this job's own) with its rank in the environment. Waits for
    them on exit; a rank that fails fails this."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": str(devices)}  # fmt: skip
    procs = []
    for r in range(1, devices):
        argv, cwd = command(r)
        procs.append(subprocess.Popen(argv, cwd=cwd, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}))
    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(MASTER_ADDR=env["MASTER_ADDR"], MASTER_PORT=env["MASTER_PORT"])
    try:
        with process_group(Ranks(0, devices, 0), device) as ranks:
            yield ranks
    except BaseException:
        for proc in procs:
            proc.kill()
        raise
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    failed = [(r, proc.wait()) for r, proc in enumerate(procs, start=1)]
    failed = [(r, rc) for r, rc in failed if rc]
    if failed:
        raise RuntimeError(f"ranks {[r for r, _ in failed]} exited with {[rc for _, rc in failed]}")
