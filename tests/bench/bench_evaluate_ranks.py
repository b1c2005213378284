"""Evaluation on 2 CPU processes against 1: images/s of `python launch/evaluate.py` (tiny checkpoint, tiny
stand-in extractors, 3 DDIM steps) with devices=1 and devices=2, in the same run, one intra-op thread per
process, each timed around the whole command (process start, model load, sampling, gather, metrics). The two
write the same metrics.json (asserted here too). Marked slow: `make bench`. Nothing asserts a time; on a shared
machine the ratio says what it says about that machine's load, which the printed line names.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

INTEGRATION = (
    Path(__file__).resolve().parents[1] / "integration"
)  # the tiny checkpoint and entry-point runner

NUM_IMAGES, BATCH = 32, 4


@pytest.mark.slow
@pytest.mark.distributed
def test_bench_evaluate_on_two_processes(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(INTEGRATION))
    from ranks_helpers import run_entry_point
    from test_evaluate import TINY_METRICS
    from tiny_checkpoint import make_tiny_checkpoint

    ckpt = make_tiny_checkpoint(tmp_path / "tiny.ckpt")
    (tmp_path / "captions.txt").write_text("\n".join(f"caption {i}" for i in range(NUM_IMAGES)))
    common = [f"checkpoint={ckpt}", f"captions={tmp_path / 'captions.txt'}", "num_steps=3", "num_images=null",
              f"batch_size={BATCH}", "save_images=0", *TINY_METRICS, "metrics.clip=null"]  # fmt: skip
    seconds, metrics = {}, {}
    for devices in (1, 2):
        out = tmp_path / f"d{devices}"
        start = time.perf_counter()
        run_entry_point("evaluate", [*common, f"devices={devices}", f"hydra.run.dir={out}"], tmp_path)
        seconds[devices] = time.perf_counter() - start
        metrics[devices] = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics[2]["num_images"] == metrics[1]["num_images"] == NUM_IMAGES
    rate = {d: NUM_IMAGES / s for d, s in seconds.items()}
    print(f"\nevaluate, {NUM_IMAGES} tiny images, CPU ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
          f"torch {torch.__version__}): 1 process {rate[1]:.2f} images/s, 2 processes {rate[2]:.2f} images/s "
          f"(x{rate[2] / rate[1]:.2f}), wall time including process start and model load")  # fmt: skip
