"""The shortened `make demo` that test_demo.py checks and test_paper.py builds on (one run for the session)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# A short base, short fine-tunes and few images: minutes, not the paper's numbers.
SHORT = ("families=[shapes,scenes]", "base.steps=300", "finetune_steps=100", "seeds=[0]", "sampling.unconditional_images=16",
         "sampling.images_per_prompt=8", "sampling.num_steps=10", "curves.base_every=150",
         "curves.finetune_every=50", "curves.images_per_prompt=2")  # fmt: skip


def run_demo(out: Path, *overrides: str, timeout: int) -> dict:
    cmd = [sys.executable, str(ROOT / "launch" / "demo.py"), f"out_dir={out}", *overrides]
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=timeout)
    return json.loads((out / "metrics.json").read_text())
