"""The experiments' training runs: `python -m zsnr.train` in subprocesses, exactly the run a user makes with
`python launch/train.py` (the same config composition and overrides, recorded in .hydra/overrides.yaml), reused
when already trained with the same overrides, side by side when there are cores for it.

The runs need the configs folder, which an installed package does not carry: the experiment's entry point
passes the folder its own config came from (launch/demo.py: the repository's configs/), and every run gets it
as `--config-dir`. Progress is read from each run's metrics file (<run_dir>/csv/metrics.csv, `step` column;
configs/logger/csv.yaml writes every row as it is logged) against max_steps in <run_dir>/config.yaml.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class TrainJob:
    """`python -m zsnr.train --config-dir C experiment=E seed=S resume=auto [overrides] hydra.run.dir=D`."""

    name: str
    experiment: str
    seed: int
    run_dir: Path
    overrides: tuple[str, ...] = ()

    def task_overrides(self) -> list[str]:
        return [f"experiment={self.experiment}", f"seed={self.seed}", "resume=auto", *self.overrides]

    def command(self, config_dir: Path) -> list[str]:
        return [sys.executable, "-m", "zsnr.train", f"--config-dir={config_dir}", *self.task_overrides(),
                f"hydra.run.dir={self.run_dir}"]  # fmt: skip

    @property
    def last(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"

    def saved_overrides(self) -> list[str] | None:
        path = self.run_dir / ".hydra" / "overrides.yaml"
        return yaml.safe_load(path.read_text()) if path.is_file() else None

    def max_steps(self) -> int | None:
        """max_steps of the composed config (written when the run starts), None before."""
        config = self.run_dir / "config.yaml"
        return yaml.safe_load(config.read_text())["max_steps"] if config.is_file() else None

    def finished(self) -> bool:
        """Trained to its max_steps with exactly these overrides (so a second `make demo` reuses it)."""
        max_steps = self.max_steps()
        if self.saved_overrides() != self.task_overrides() or max_steps is None or not self.last.exists():
            return False
        return self.last.resolve().name == f"step={max_steps:06d}.ckpt"

    def progress(self) -> tuple[int, int | None]:
        """(the last step in the run's metrics file, max_steps): (0, None) before either is written."""
        metrics = self.run_dir / "csv" / "metrics.csv"
        steps = [0]
        if metrics.is_file():
            with open(metrics, newline="") as f:
                for row in csv.DictReader(f):
                    try:
                        steps.append(int(float(row["step"])))
                    except (KeyError, TypeError, ValueError):  # a row being written as we read
                        pass
        return max(steps), self.max_steps()


def train_runs(
    jobs: Sequence[TrainJob], config_dir: Path, parallel: int = 1, cores: int | None = None
) -> dict[str, Path]:
    """Run the jobs with the configs in `config_dir` (at most `parallel` at a time, each with
    cores // (jobs running) threads); returns each job's last checkpoint. A job already trained with the same
    overrides is reused; a run directory left by other overrides is removed first (resume=auto would otherwise
    continue it)."""
    cores = cores or os.cpu_count() or 1
    todo = []
    for job in jobs:
        if job.finished():
            print(f"{job.name}: reusing {job.last.resolve()} (trained with the same overrides)", flush=True)
        else:
            if job.saved_overrides() not in (None, job.task_overrides()):
                print(f"{job.name}: {job.run_dir} was trained with other overrides; starting it again")
                shutil.rmtree(job.run_dir)
            todo.append(job)
    for i in range(0, len(todo), max(1, parallel)):
        together = todo[i : i + parallel]
        _run_together(together, Path(config_dir), threads=max(1, cores // len(together)))
    for job in jobs:
        if not job.last.exists():
            raise FileNotFoundError(f"{job.name}: training finished but left no {job.last}")
    return {job.name: job.last.resolve() for job in jobs}


def _env(threads: int) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    return {**env, "OMP_NUM_THREADS": str(threads)}


def _run_together(jobs: Sequence[TrainJob], config_dir: Path, threads: int) -> None:
    """One job: its output goes to the console. Several: each writes run_dir/stdout.log, and one progress bar
    per job follows its metrics file (TrainJob.progress)."""
    for job in jobs:
        print(f"\n$ {' '.join(job.command(config_dir)[1:])}   # {threads} thread(s)", flush=True)
    if len(jobs) == 1:
        subprocess.run(jobs[0].command(config_dir), check=True, env=_env(threads))
        return
    from tqdm.auto import tqdm

    procs, logs, bars = [], [], []
    for i, job in enumerate(jobs):
        job.run_dir.mkdir(parents=True, exist_ok=True)
        logs.append(job.run_dir / "stdout.log")
        with open(logs[-1], "w") as out:
            procs.append(
                subprocess.Popen(
                    job.command(config_dir), stdout=out, stderr=subprocess.STDOUT, env=_env(threads)
                )
            )
        bars.append(tqdm(desc=job.name, position=i, unit="step", leave=True))
    while any(p.poll() is None for p in procs):
        time.sleep(2)
        for bar, job in zip(bars, jobs, strict=True):
            bar.n, bar.total = job.progress()
            bar.refresh()
    for bar in bars:
        bar.close()
    for job, proc, log in zip(jobs, procs, logs, strict=True):
        if proc.returncode != 0:
            tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-30:]
            raise RuntimeError(
                f"{job.name} failed (exit {proc.returncode}); the end of {log}:\n" + "\n".join(tail)
            )
