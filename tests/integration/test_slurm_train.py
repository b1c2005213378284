"""slurm/train.sbatch on a real one-node SLURM (tests/slurm/start.sh): 2 CPU tasks, USR1 mid-run, requeue, resume.

One job covers both halves of the story: it trains the tiny model under srun (2 tasks, DDP over gloo, Lightning's
SLURM environment) on the synthetic data set and checkpoints every 5 steps; once the first checkpoint exists the
test sends SIGUSR1 to its tasks (what --signal=USR1@90 does near the time limit). The job must then save at the
next step, requeue itself, restart in the same run directory with resume=auto from that checkpoint, and complete
at max_steps, leaving its checkpoints behind.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from training_helpers import ROOT

pytestmark = [pytest.mark.slurm, pytest.mark.distributed]
STEPS, EVERY = 40, 5
FINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
}


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.skip(
            "starting the local SLURM (tests/slurm/start.sh) needs root to install and run its daemons"
        )
    proc = subprocess.run(
        ["bash", str(ROOT / "tests" / "slurm" / "start.sh")], capture_output=True, text=True, timeout=600
    )
    log = (proc.stdout + proc.stderr)[-3000:]
    if proc.returncode and not all(shutil.which(c) for c in ("sbatch", "slurmctld", "slurmd", "munged")):
        pytest.skip(f"could not install the SLURM packages (slurmctld slurmd slurm-client munge): {log}")
    assert proc.returncode == 0, f"tests/slurm/start.sh failed:\n{log}"


def job_info(job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait_until(condition, timeout: float, every: float = 0.5) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(every)
    return False


def test_train_sbatch_requeues_on_usr1_and_resumes_to_the_end(cluster, tmp_path):
    run_dir, data = tmp_path / "run", tmp_path / "data"
    ckpts = run_dir / "checkpoints"
    overrides = [
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "model=tiny",
        "data=synthetic",
        f"data.root={data}",
        "data.synthetic.num_samples=128",
        "data.synthetic.samples_per_shard=32",
        "data.epoch_length=128",
        "data.num_workers=0",
        "data.shuffle_buffer=16",
        "logger=csv",
        f"max_steps={STEPS}",
        "global_batch_size=8",
        "micro_batch_size=4",
        "samples.every_n_steps=0",
        f"checkpoint.every_n_steps={EVERY}",
        "checkpoint.keep_last=null",
    ]
    env = {**os.environ, "ZSNR_ROOT": str(ROOT), "ZSNR_RUN_DIR": str(run_dir), "ZSNR_PYTHON": sys.executable}
    sbatch = ["sbatch", "--parsable", "--job-name=zsnr-test-requeue", f"--output={tmp_path}/job-%j.out"]
    sbatch += ["--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=10"]
    submitted = subprocess.run(
        [*sbatch, str(ROOT / "slurm" / "train.sbatch"), *overrides],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    job = submitted.stdout.strip().split(";")[0]
    log_file = tmp_path / f"job-{job}.out"
    log = lambda: log_file.read_text()[-6000:] if log_file.exists() else "(no output yet)"  # noqa: E731
    try:
        first = ckpts / f"step={EVERY:06d}.ckpt"
        assert wait_until(lambda: first.exists() or job_info(job).get("JobState") in FINAL, 300), log()
        assert first.exists(), f"job {job} ended before its first checkpoint: {job_info(job)}\n{log()}"
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
        assert wait_until(lambda: job_info(job).get("JobState") in FINAL, 300), f"{job_info(job)}\n{log()}"
    finally:
        if job_info(job).get("JobState") not in FINAL:
            subprocess.run(["scancel", job])
    info, text = job_info(job), log_file.read_text()
    assert info["JobState"] == "COMPLETED", f"{info}\n{text[-6000:]}"
    assert info["Restarts"] == "1", f"expected exactly one requeue: {info}\n{text[-6000:]}"
    assert "restart 0" in text and "restart 1" in text
    assert f"requeued SLURM job {job}" in text
    resumed = re.search(r"resume=auto: continuing from (\S+step=(\d+)\.ckpt)", text)
    assert resumed, text[-6000:]
    at = int(resumed.group(2))
    assert EVERY <= at < STEPS  # saved at the signal, mid-run
    assert Path(resumed.group(1)).parent == ckpts  # the same run directory after the requeue
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == STEPS
    assert (ckpts / "last.ckpt").resolve().name == f"step={STEPS:06d}.ckpt"
    assert last["zsnr"]["micro_step"] == STEPS  # module state (step-seeded noise) restored too
