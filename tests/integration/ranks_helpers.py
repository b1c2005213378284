"""Run an entry point (launch/<name>.py) in a fresh process, as the multi-process tests compare it: one
intra-op thread everywhere, so a batch's arithmetic is the same in every process (as in test_ddp_fsdp.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_entry_point(name: str, args: list[str], cwd: Path, timeout: int = 300) -> str:
    path = [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}  # fmt: skip
    cmd = [sys.executable, str(ROOT / "launch" / f"{name}.py"), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-6000:]}"
    return out
