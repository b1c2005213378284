"""The experiments' run bookkeeping: a run trained with the same overrides is reused, a stale one is redone,
the command is `python -m zsnr.train` with the configs folder, and progress is read from the metrics file."""

import os

import pytest
import yaml

from zsnr.experiments import runs
from zsnr.experiments.runs import TrainJob, train_runs


def _fake_run(job: TrainJob, max_steps: int, last_step: int, overrides=None) -> None:
    (job.run_dir / ".hydra").mkdir(parents=True)
    (job.run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides or job.task_overrides()))
    (job.run_dir / "config.yaml").write_text(yaml.safe_dump({"max_steps": max_steps}))
    ckpts = job.run_dir / "checkpoints"
    ckpts.mkdir()
    (ckpts / f"step={last_step:06d}.ckpt").write_bytes(b"x")
    os.symlink(f"step={last_step:06d}.ckpt", ckpts / "last.ckpt")


def test_a_finished_run_is_reused_and_an_unfinished_or_stale_one_is_not(tmp_path, monkeypatch):
    done = TrainJob("done", "demo_base", 0, tmp_path / "done", ("max_steps=20",))
    half = TrainJob("half", "demo_base", 0, tmp_path / "half", ("max_steps=20",))
    stale = TrainJob("stale", "demo_base", 0, tmp_path / "stale", ("max_steps=20",))
    _fake_run(done, 20, 20)
    _fake_run(half, 20, 10)
    _fake_run(stale, 20, 20, overrides=["experiment=demo_base", "seed=0", "resume=auto", "max_steps=30"])
    assert done.finished() and not half.finished() and not stale.finished()
    ran = []
    monkeypatch.setattr(
        runs, "_run_together", lambda jobs, config_dir, threads: ran.append([j.name for j in jobs])
    )
    with pytest.raises(FileNotFoundError, match="stale: training finished but left no"):
        train_runs([done, half, stale], tmp_path / "configs", parallel=2, cores=2)
    assert ran == [["half", "stale"]]  # the finished run is not trained again
    assert not stale.run_dir.exists()  # other overrides: removed, not continued with resume=auto
    assert half.last.exists()  # an interrupted run is continued (resume=auto), not removed


def test_the_command_is_what_a_user_types_through_the_package(tmp_path):
    job = TrainJob("fixed_seed1", "demo_fixed", 1, tmp_path / "run", ("max_steps=5", "init_from=/b.ckpt"))
    cmd = job.command(tmp_path / "configs")
    assert cmd[1:] == ["-m", "zsnr.train", f"--config-dir={tmp_path / 'configs'}", "experiment=demo_fixed",
                       "seed=1", "resume=auto", "max_steps=5", "init_from=/b.ckpt",
                       f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip


def test_progress_is_the_last_step_in_the_metrics_file(tmp_path):
    job = TrainJob("base", "demo_base", 0, tmp_path / "run")
    assert job.progress() == (0, None)  # nothing written yet
    (tmp_path / "run" / "csv").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"max_steps": 300}))
    assert job.progress() == (0, 300)
    rows = (
        "epoch,step,train/loss,val/loss\n0,50,0.5,\n0,50,,0.6\n0,100,0.4,\n0,1"  # the last row half written
    )
    (tmp_path / "run" / "csv" / "metrics.csv").write_text(rows)
    assert job.progress() == (100, 300)
