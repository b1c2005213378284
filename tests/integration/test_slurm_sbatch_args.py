"""slurm/train.sbatch's argument handling, with a stand-in `srun` that prints what it was asked to run (no SLURM
needed): allocation -> trainer.num_nodes/devices, Hydra flags before overrides, overrides passed through, the run
directory keyed on the job id, resume=auto winning after a requeue, and contradictions refused up front."""

import os
import subprocess
from pathlib import Path

import pytest
from training_helpers import ROOT

SBATCH = ROOT / "slurm" / "train.sbatch"


def run_script(tmp_path: Path, *args: str, **slurm: str) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "srun"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "ZSNR_ROOT": str(ROOT),
        "ZSNR_PYTHON": "python3",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "zsnr-train",
        "SLURM_JOB_NUM_NODES": "4",
        "SLURM_NTASKS_PER_NODE": "8",
        **slurm,
    }
    return subprocess.run(["bash", str(SBATCH), *args], env=env, capture_output=True, text=True, cwd=tmp_path)


def srun_args(proc: subprocess.CompletedProcess) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    return lines[lines.index("--kill-on-bad-exit=1") + 1 :]


def test_allocation_flags_overrides_and_run_dir(tmp_path):
    args = srun_args(run_script(tmp_path, "experiment=paper", "-m", "module.lr=1e-4,2e-4", "trainer=fsdp"))
    assert args[:3] == ["python3", "launch/train.py", "-m"]  # Hydra's flags before any override
    rest = args[3:]
    assert rest[:3] == ["trainer.num_nodes=4", "trainer.devices=8", "resume=auto"]
    assert "hydra.run.dir=outputs/slurm/zsnr-train_4242" in rest
    assert "hydra.sweep.dir=outputs/slurm/zsnr-train_4242" in rest
    assert rest[-3:] == ["experiment=paper", "module.lr=1e-4,2e-4", "trainer=fsdp"]  # untouched, in order


def test_after_a_requeue_resume_auto_comes_last(tmp_path):
    fresh = srun_args(run_script(tmp_path, "resume=/old/run"))
    assert fresh[-1] == "resume=/old/run"  # a first start honours an explicit resume
    again = srun_args(run_script(tmp_path, "resume=/old/run", SLURM_RESTART_COUNT="1"))
    assert again[-2:] == ["resume=/old/run", "resume=auto"]  # Hydra: the last value wins


def test_array_jobs_get_one_directory_per_task(tmp_path):
    args = srun_args(run_script(tmp_path, SLURM_ARRAY_JOB_ID="77", SLURM_ARRAY_TASK_ID="3"))
    assert "hydra.run.dir=outputs/slurm/zsnr-train_77_3" in args


@pytest.mark.parametrize(
    ("override", "hint"),
    [("trainer.num_nodes=2", "sbatch --nodes=2"), ("trainer.devices=4", "sbatch --ntasks-per-node=4")],
)
def test_overrides_that_contradict_the_allocation_fail_before_srun(tmp_path, override, hint):
    proc = run_script(tmp_path, "experiment=paper", override)
    assert proc.returncode == 2 and hint in proc.stderr and "--kill-on-bad-exit" not in proc.stdout


def test_outside_slurm_it_says_how_to_run_it(tmp_path):
    proc = run_script(tmp_path, SLURM_JOB_ID="")
    assert proc.returncode == 2 and "sbatch" in proc.stderr
