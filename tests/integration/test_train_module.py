"""`python -m zsnr.train --config-dir configs` (how the experiments start their runs) is launch/train.py without
the checkout's launch/: the same composed config from the same overrides, and a clear error without the folder."""

import os
import subprocess
import sys

from training_helpers import ROOT

OVERRIDES = ["experiment=demo_fixed", "seed=1", "resume=auto", "max_steps=5", "hydra.run.dir=outputs/x"]


def _run(*args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_package_run_composes_what_launch_train_composes(tmp_path):
    script = _run(str(ROOT / "launch" / "train.py"), *OVERRIDES, "--cfg", "job")
    package = _run(
        "-m", "zsnr.train", f"--config-dir={ROOT / 'configs'}", *OVERRIDES, "--cfg", "job", cwd=tmp_path
    )
    assert script.returncode == 0 and package.returncode == 0, script.stderr + package.stderr
    assert package.stdout == script.stdout and "max_steps: 5" in script.stdout


def test_without_the_configs_folder_it_says_what_to_pass(tmp_path):
    out = _run("-m", "zsnr.train", *OVERRIDES, cwd=tmp_path)
    assert out.returncode != 0 and "--config-dir PATH/TO/configs" in out.stderr
