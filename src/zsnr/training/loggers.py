"""Loggers whose history survives resumes and requeues: a CSV that is kept, a wandb run id kept in the run dir."""

from __future__ import annotations

import csv
import os
import uuid
from pathlib import Path

from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

WANDB_ID_FILE = "wandb_run_id"


class _KeptHistoryWriter(ExperimentWriter):
    """Lightning's writer deletes metrics.csv when it starts. This one keeps the rows of earlier attempts; the
    steps a resumed attempt logs again (those after its checkpoint) replace that attempt's rows from its first
    logged step on, so every (step, metric) appears once, from the attempt that carried the run on."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self._earlier_rows: list[dict[str, str]] | None = None
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                reader = csv.DictReader(file)
                self._earlier_rows, self.metrics_keys = list(reader), sorted(reader.fieldnames or [])

    def _check_log_dir_exists(self) -> None:
        pass  # the base class deletes the earlier history here

    def save(self) -> None:
        if self._earlier_rows is not None and self.metrics:
            first = min(int(m["step"]) for m in self.metrics)
            kept = [r for r in self._earlier_rows if r.get("step") and int(float(r["step"])) < first]
            with open(self.metrics_file_path, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
            self._earlier_rows = None
        super().save()


class RunCSVLogger(CSVLogger):
    """CSVLogger (save_dir/name/version/metrics.csv) that appends across attempts of a run instead of starting
    the file over (see _KeptHistoryWriter). It fills the `_experiment` cache that CSVLogger's own methods read,
    and the writer overrides `_check_log_dir_exists`: Lightning privates with no public way in, pinned by
    tests/unit/training/test_lightning_privates.py."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            get_filesystem(self.root_dir).makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeptHistoryWriter(log_dir=self.log_dir)
        return self._experiment


def wandb_run_id(run_dir: str | os.PathLike) -> str:
    """The run's wandb id, kept in run_dir/wandb_run_id: every attempt (resume, SLURM requeue) logs to the same
    wandb run. Rank 0 creates it; the other ranks never log to wandb, they only read it if it exists."""
    path = Path(run_dir) / WANDB_ID_FILE
    if path.exists():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    if rank_zero_only.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n")
    return run_id
