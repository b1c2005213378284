"""make demo's run bookkeeping: a run trained with the same overrides is reused, a stale one is redone, and
the progress of side-by-side runs is read from their logs."""

import os

import pytest
import yaml

from zsnr.evaluation import demo
from zsnr.evaluation.demo import TrainJob, _progress, train_runs


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
    monkeypatch.setattr(demo, "_run_together", lambda jobs, threads: ran.append([j.name for j in jobs]))
    with pytest.raises(FileNotFoundError, match="stale: training finished but left no"):
        train_runs([done, half, stale], parallel=2, cores=2)
    assert ran == [["half", "stale"]]  # the finished run is not trained again
    assert not stale.run_dir.exists()  # other overrides: removed, not continued with resume=auto
    assert half.last.exists()  # an interrupted run is continued (resume=auto), not removed


def test_the_command_is_what_a_user_types(tmp_path):
    job = TrainJob("fixed_seed1", "demo_fixed", 1, tmp_path / "run", ("max_steps=5", "init_from=/b.ckpt"))
    cmd = job.command()
    assert cmd[2:] == ["experiment=demo_fixed", "seed=1", "resume=auto", "max_steps=5", "init_from=/b.ckpt",
                       f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    assert cmd[1].endswith("launch/train.py")


def test_progress_is_the_last_step_line(tmp_path):
    log = tmp_path / "stdout.log"
    log.write_text("noise\nstep 10/300  loss 0.5\nrich bar 28/28\nstep 20/300  loss 0.4\n")
    assert _progress(log) == (20, 300)
    log.write_text("starting\n")
    assert _progress(log) == (0, None)
