"""Per-device memory of a training step, before queueing: `python launch/plan_memory.py [train.py's overrides]`.

    python launch/plan_memory.py experiment=paper                       # SD 2.1-base, 512 px, micro-batch 32
    python launch/plan_memory.py experiment=paper micro_batch_size=16 +device_gib=40
    python launch/plan_memory.py experiment=paper trainer=fsdp trainer.devices=8

Reads the same config as launch/train.py (configs/train.yaml and any override), loads no weights, traces one
training step on fake tensors (zsnr.training.memory_plan) and prints the peak per device by part, and whether
it fits in `+device_gib` (default 80) with 10% left for the CUDA context and fragmentation. It plans for the
run's accelerator (a GPU unless trainer.accelerator=cpu), wherever it runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from zsnr.train import plan_step
from zsnr.training.memory_plan import GIB

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")
HEADROOM = 0.1


def plan(cfg: DictConfig) -> dict:
    """Everything `python launch/plan_memory.py` does; returns the plan and the verdict."""
    accelerator = "cpu" if cfg.trainer.accelerator == "cpu" else "gpu"
    precision = str(cfg.trainer.precision)
    if precision == "auto":  # launch/train.py's rule, for the planned accelerator rather than this machine's
        precision = "bf16-mixed" if accelerator == "gpu" else "32-true"
    device_gib = float(cfg.get("device_gib", 80))
    print("tracing one training step on fake tensors (about a minute for SD 2.1) ...", flush=True)
    result = plan_step(cfg, accelerator, precision)
    world = result.setup["world_size"]
    fits = result.fits(device_gib * GIB, HEADROOM)
    s = result.setup
    print(
        f"{cfg.model.get('kind')} model at {s['resolution']} px, micro-batch {s['micro_batch_size']} "
        f"(accumulation {s['accumulation']}), {precision} on {accelerator}, {s['strategy']} x {world}\n"
        f"{result.table()}\n"
        + "".join(f"note: {n}\n" for n in result.notes)
        + f"{'fits' if fits else 'does NOT fit'} in {device_gib:g} GiB with {HEADROOM:.0%} left for the CUDA "
        f"context and fragmentation (peak {result.peak / GIB:.2f} GiB)"
    )
    return {"plan": result, "fits": fits}


def main(argv: list[str]) -> None:
    # composed, not @hydra.main: a plan writes no run directory
    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        plan(compose("train", overrides=argv))


if __name__ == "__main__":
    main(sys.argv[1:])
