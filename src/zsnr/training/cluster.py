"""Running under a scheduler or a launcher: SLURM requeue on a signal, and Hydra multiruns of multi-process jobs.

SLURM. `sbatch --signal=USR1@90` sends SIGUSR1 to every task 90 s before the time limit. `SlurmRequeue` answers
it: the handler only sets a flag; at the next optimizer step all ranks agree (one all-reduce of a bool), the
AtomicCheckpoint saves (a collective for sharded checkpoints), rank 0 runs `scontrol requeue $SLURM_JOB_ID` and
training stops. The restarted job trains with resume=auto in the same run directory and continues from there.
Lightning's own SLURM auto-requeue is switched off (`SLURMEnvironment(auto_requeue=False)`, see
`slurm_plugins`): it saves *inside* the signal handler, where a rank can be in the middle of an all-reduce while
another enters the checkpoint's barrier / gather (DDP and FSDP then deadlock), and it writes hpc_ckpt_*.ckpt
files that take precedence over the run's own checkpoints on restart.

Hydra multirun (`-m`) with a strategy whose extra processes Lightning starts itself (trainer=ddp/fsdp on one
machine): Lightning re-runs the script for ranks > 0 with the parent's command line, which for `-m` means the
*whole sweep* again on every rank, and it leaves the process group and its environment variables behind, so the
next job of the sweep would reuse a group whose other ranks have exited. `multirun_job_scope` makes rank 0 the
only process that runs the sweep: each job's extra ranks run that job alone (its own overrides, its output
directory), and the process group and variables are cleared between jobs. Where processes are created outside
Lightning (srun, torchrun) every rank runs the same sweep in lockstep, which is consistent as long as all ranks
resolve the same output directory (slurm/train.sbatch pins hydra.run.dir and hydra.sweep.dir).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytorch_lightning as pl
import torch

from zsnr.sampling.ranks import Ranks, from_environment, process_group, spawn
from zsnr.training.step import every_n_steps

log = logging.getLogger("zsnr.cluster")
DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def on_slurm() -> bool:
    """Inside an srun task of a batch job (Lightning's SLURMEnvironment applies)."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def slurm_plugins() -> list[Any]:
    """Trainer plugins: Lightning's SLURM environment (ranks, nodes, main address) without its auto-requeue."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if on_slurm() else []


def slurm_job_id() -> str | None:
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class SlurmRequeue(pl.Callback):
    """Checkpoint and requeue the SLURM job when `signum` arrives (see the module docstring).

    `checkpoint` is the run's AtomicCheckpoint (so resume=auto finds what is saved). The signal handler is
    installed at construction, before the model loads, so an early signal is remembered rather than fatal
    (SIGUSR1's default action ends the process).
    """

    def __init__(self, checkpoint: Any, signum: int = signal.SIGUSR1, requeue: bool = True) -> None:
        self.checkpoint = checkpoint
        self.signum = signum
        self.requeue = requeue
        self.requested = False
        self.handled_step: int | None = None
        self._previous = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested = True  # async-signal-safe: the work happens at the next step boundary

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if not every_n_steps(pl_module.last_step, step, 1):  # every rank at the same applied step
            return
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):  # any rank signalled
            return
        if self.checkpoint._saved_step != step:
            self.checkpoint.save(trainer, step)
        self.handled_step = step
        if self.requeue:
            # the requeue makes SLURM send SIGTERM to every task at once; Lightning's handler would then try a
            # collective among dying ranks. The checkpoint is safe: stop quietly (or be killed after KillWait).
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if trainer.is_global_zero:
                requeue_job()
        trainer.should_stop = True

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        signal.signal(self.signum, self._previous)


def requeue_job() -> None:
    job = slurm_job_id()
    if job is None:
        log.warning("requeue requested but SLURM_JOB_ID is not set; not requeueing")
        return
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode:
        log.error("scontrol requeue %s failed (%d): %s", job, result.returncode, result.stderr.strip())
    else:
        log.info("checkpoint saved; requeued SLURM job %s", job)


def wait_for_launched_ranks(trainer: pl.Trainer, timeout: float = 600.0) -> None:
    """Lightning does not wait for the ranks it started; wait, so that their last writes (logs, files) are done
    before this process returns or the next job of a multirun starts."""
    launcher = getattr(trainer.strategy, "launcher", None)
    for proc in getattr(launcher, "procs", None) or []:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("rank process %d still running %.0f s after training ended", proc.pid, timeout)


# -- Hydra multirun x Lightning-launched processes ---------------------------------------------------------
def job_command(job_name: str) -> tuple[list[str], str]:
    """The command line that runs the current Hydra job alone (in a multirun too: its own overrides) in its
    output directory, as job `job_name`, and the directory to run it from."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    hc = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += ["--config-name", hc.job.config_name]
    for source in hc.runtime.config_sources:
        if source.provider == "command-line":
            command += ["--config-dir", source.path.split("://", 1)[-1]]
    command += list(hc.overrides.task)
    command += [
        f'hydra.run.dir="{hc.runtime.output_dir}"',
        f"hydra.job.name={job_name}",
        "hydra.output_subdir=null",
    ]
    return command, get_original_cwd()


def _job_command(local_rank: int) -> tuple[list[str], str]:
    """The command Lightning runs for rank `local_rank` of the current multirun job: this job only."""
    return job_command(f"train_ddp_process_{local_rank}")


@contextmanager
def inference_ranks(devices: int, name: str, device: torch.device) -> Iterator[Ranks]:
    """The processes of a sampling or evaluation job (launch/sample.py, launch/evaluate.py): a launcher's
    (torchrun, srun: zsnr.sampling.ranks.from_environment), else `devices` on this machine, ranks 1 .. N - 1
    started here, each running this Hydra job alone (job `{name}_process_{rank}`, its log beside rank 0's)."""
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    launched = from_environment()
    if launched is not None:
        if devices not in (1, launched.world_size):
            raise ValueError(
                f"devices={devices} but the launcher started {launched.world_size} processes: leave devices=1 "
                "under torchrun / srun"
            )
        with process_group(launched, device) as ranks:
            yield ranks
    elif devices == 1:
        yield Ranks()
    else:
        with spawn(devices, lambda rank: job_command(f"{name}_process_{rank}"), device) as ranks:
            yield ranks


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return False
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def multirun_job_scope() -> Iterator[None]:
    """Wrap one job's Trainer creation and fit (see the module docstring). A no-op outside a Hydra multirun and
    wherever processes are created externally (LOCAL_RANK already set: srun, torchrun, a spawned child)."""
    if not _in_multirun() or "LOCAL_RANK" in os.environ or on_slurm():
        yield
        return
    from pytorch_lightning.strategies.launchers import subprocess_script

    if not hasattr(subprocess_script, "_hydra_subprocess_cmd"):
        raise RuntimeError(
            "this Lightning version launches processes differently; zsnr cannot keep a Hydra multirun (-m) from "
            "restarting the sweep on every rank. Run the jobs one by one, or under srun/torchrun."
        )
    saved_env = {k: os.environ.get(k) for k in DIST_ENV}
    original = subprocess_script._hydra_subprocess_cmd
    subprocess_script._hydra_subprocess_cmd = _job_command
    try:
        yield
    finally:
        subprocess_script._hydra_subprocess_cmd = original
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
