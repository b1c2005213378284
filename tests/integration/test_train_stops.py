"""launch/train.py stops: an exact pass that gives no batch is an error within seconds, and SIGTERM always ends a
run with a non-zero status, also while a worker is stuck reading a shard or the loop is training."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time

import pytest
from training_helpers import ROOT, tiny_run

EXACT = [
    "data.resampled=false",
    "data.epoch_length=null",
    "samples.every_n_steps=0",
    "checkpoint.every_n_steps=1",
]


def launch(run_dir, data_root, extra: list[str], steps: int = 5) -> subprocess.Popen:
    """launch/train.py in its own process group (so that a test can end whatever it started), output to a file."""
    overrides = [o for o in tiny_run(run_dir, data_root, steps=steps) if not o.startswith("data.num_workers")]
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "launch/train.py", *overrides, *extra]
    with open(f"{run_dir}.log", "w") as log:
        process = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    process.log_path = f"{run_dir}.log"
    return process


def finish(process: subprocess.Popen, bound: float) -> tuple[int | None, str]:
    """Wait up to `bound` seconds; returns (status or None if still running, output), and kills what is left."""
    try:
        status = process.wait(timeout=bound)
    except subprocess.TimeoutExpired:
        status = None
    finally:
        with open(process.log_path) as f:
            output = f.read()
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the run, its workers, a shard's shell command
        except ProcessLookupError:
            pass
        process.wait()
    return status, output


def wait_for(path, process: subprocess.Popen, bound: float = 240) -> None:
    deadline = time.monotonic() + bound
    while not os.path.exists(path):
        assert process.poll() is None and time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def test_an_exact_pass_without_a_usable_sample_is_an_error(tmp_path, data_root):
    empty = tmp_path / "empty.tar"
    tarfile.open(empty, "w").close()
    run = launch(tmp_path / "run", data_root, [f"data.urls={empty}", "data.num_workers=2", *EXACT])
    status, output = finish(run, bound=240)  # it used to loop over empty epochs forever
    assert status not in (None, 0), output[-3000:]
    assert "gave rank 0 no batch" in output and str(empty) in output and "0 samples read" in output
    assert not list((tmp_path / "run").glob("checkpoints/*.ckpt"))  # no step-0 checkpoint either


def test_sigterm_stops_a_run_whose_worker_is_stuck_reading(tmp_path, data_root):
    started = tmp_path / "started"
    stall = f"pipe:touch {started}; sleep 600"  # a shard source that never answers (a stalled download)
    extra = [f"data.urls='{stall}'", "data.allow_pipe=true", "data.num_workers=1", *EXACT]
    run = launch(tmp_path / "run", data_root, extra)
    wait_for(started, run)
    time.sleep(1)
    run.send_signal(signal.SIGTERM)  # to the main process only, as `kill PID` does
    status, output = finish(run, bound=30)  # it used to wait for the worker for ever
    assert status == 128 + signal.SIGTERM, output[-3000:]


@pytest.mark.parametrize("to", ["main", "group"])
def test_sigterm_stops_a_training_run_with_a_non_zero_status(to, tmp_path, data_root):
    extra = ["data.num_workers=2", "checkpoint.every_n_steps=1", "samples.every_n_steps=0"]
    run = launch(tmp_path / "run", data_root, extra, steps=100000)
    wait_for(tmp_path / "run" / "checkpoints" / "step=000002.ckpt", run)
    if (
        to == "main"
    ):  # `kill PID`: Lightning's handler used to end the run with status 0, as if it had finished
        run.send_signal(signal.SIGTERM)
    else:  # `timeout`, schedulers: the workers get it too (they die, the run stops on that)
        os.killpg(run.pid, signal.SIGTERM)
    status, output = finish(run, bound=30)
    assert status not in (None, 0), output[-3000:]
    if to == "main":
        assert status == 128 + signal.SIGTERM and "stopped by SIGTERM" in output, output[-3000:]
