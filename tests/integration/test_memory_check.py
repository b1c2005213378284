"""launch/train.py's memory check (zsnr.training.preflight): it refuses before anything loads, `warn` starts
anyway, and its host figure is checked against the memory a run's process tree really holds.

(The rest of the suite runs with ZSNR_MEMORY_CHECK=off, tests/conftest.py; here it is on.)
"""

import logging
import os
import re
import subprocess
import sys

import pytest
from training_helpers import ROOT, compose, launch_module, tiny_run

from zsnr.training.preflight import MemoryCheckError

sys.path.insert(0, str(ROOT / "tests" / "fullsize"))
from memory_watch import Watch  # noqa: E402


def test_refuses_before_loading_anything(tmp_path, data_root, monkeypatch):
    def loaded(*args, **kwargs):
        raise AssertionError("weights or data were loaded before the memory check refused")

    monkeypatch.setattr("zsnr.training.module.build_components", loaded)  # the model's real parts
    monkeypatch.setattr("zsnr.data.WebDataModule.__init__", loaded)
    cfg = compose("train", [*tiny_run(tmp_path / "run", data_root), "memory_check.action=refuse",
                            "memory_check.host_limit_gib=0.5"])  # fmt: skip
    with pytest.raises(MemoryCheckError) as err:
        launch_module("train").train(cfg)
    message = str(err.value)
    assert re.search(r"host: needs \d+\.\d\d GiB \(runtime \(python, torch\) 0\.60, unet", message)
    assert "0.50 GiB free" in message and "does NOT fit" in message
    assert "micro_batch_size=2" in message and "memory_check.action=warn" in message
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_warn_starts_anyway(tmp_path, data_root, caplog):
    cfg = compose("train", [*tiny_run(tmp_path / "run", data_root, steps=1), "memory_check.action=warn",
                            "memory_check.host_limit_gib=0.5", "samples.every_n_steps=0"])  # fmt: skip
    with caplog.at_level(logging.INFO, logger="zsnr.train"):
        out = launch_module("train").train(cfg)
    assert out["last_checkpoint"] is not None
    assert "this run does not fit in memory" in caplog.text


def test_host_need_is_what_the_process_tree_holds(tmp_path, data_root):
    """The tiny model with 2 data workers (forkserver): the check's host figure (runtime, plan, workers) against
    the peak anonymous memory of the run's processes, measured (tests/fullsize/memory_watch.py).
    Measured here: 2.05 GiB needed, 2.0-2.2 GiB held."""
    args = [*tiny_run(tmp_path / "run", data_root, steps=20), "data.num_workers=2", "samples.every_n_steps=0",
            "validation.every_n_steps=0", "memory_check.action=refuse", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    env = {**os.environ, "ZSNR_MEMORY_CHECK": "refuse", "OMP_NUM_THREADS": "1"}
    log = tmp_path / "train.log"
    with log.open("w") as f:
        proc = subprocess.Popen([sys.executable, str(ROOT / "launch" / "train.py"), *args], cwd=tmp_path,
                                env=env, stdout=f, stderr=subprocess.STDOUT)  # fmt: skip
        watch = Watch(proc.pid, period_s=0.1)
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    held = watch.summary()["peak_tree_anon_gib"]
    need = float(re.search(r"host: needs (\d+\.\d+) GiB", log.read_text()).group(1))
    assert watch.summary()["max_processes"] >= 4  # the trainer, the forkserver, 2 workers
    assert 0.8 <= held / need <= 1.25, (held, need)
