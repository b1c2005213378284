"""Helpers for the training tests (import them: `from training_helpers import ...`; tests/ is on sys.path).

A tiny in-memory text-image data module with zsnr.data's batch format, the entry points as importable
modules, and Hydra composition of the real configs with overrides for seconds-long CPU runs.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

TINY_SPEC = {"kind": "tiny", "resolution": 32, "init_seed": 0}
ZERO_SNR = {"betas": "scaled_linear", "rescale_zero_terminal_snr": True, "prediction_type": "v_prediction"}


def brightness_batch(n: int, resolution: int = 32, seed: int = 0) -> dict:
    """Flat backgrounds whose caption names their brightness: what the tiny model can learn fast."""
    g = torch.Generator().manual_seed(seed)
    levels = {"a solid black background": 10, "a gray background": 128, "a white background": 245}
    names = list(levels)
    which = torch.randint(0, len(names), (n,), generator=g)
    captions = [names[i] for i in which]
    image = torch.tensor([levels[c] for c in captions], dtype=torch.uint8).view(n, 1, 1, 1)
    image = image.expand(n, 3, resolution, resolution).contiguous()
    return {"image": image, "caption": captions, "key": [f"{seed}-{i}" for i in range(n)]}


class RepeatedBatch(torch.utils.data.IterableDataset):
    """The same batch forever (already batched: DataLoader(batch_size=None))."""

    def __init__(self, batch: dict) -> None:
        self.batch = batch

    def __iter__(self):
        while True:
            yield self.batch


class FixedBatchData(pl.LightningDataModule):
    def __init__(self, batch_size: int = 8, resolution: int = 32, seed: int = 0, **_: object) -> None:
        super().__init__()
        self.batch = brightness_batch(batch_size, resolution, seed)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(RepeatedBatch(self.batch), batch_size=None)


ROOT = Path(__file__).resolve().parents[1]


def launch_module(name: str):
    """Import launch/<name>.py (the entry points are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"launch_{name}", ROOT / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compose(config_name: str, overrides: list[str], config_dir=None):
    """A config as launch/ composes it, from the repository's configs/ or from `config_dir`."""
    with initialize_config_dir(config_dir=str(config_dir or ROOT / "configs"), version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides)


def tiny_run(run_dir, data_root, steps: int = 2) -> list[str]:
    """Overrides for a seconds-long CPU run of the tiny model on a small synthetic set."""
    return [
        f"run_dir={run_dir}",
        "model=tiny",
        "data=synthetic",
        f"data.root={data_root}",
        "data.synthetic.num_samples=128",
        "data.synthetic.samples_per_shard=32",
        "data.num_workers=0",
        "data.shuffle_buffer=16",
        "trainer=cpu",
        "logger=csv",
        f"max_steps={steps}",
        "global_batch_size=8",
        "micro_batch_size=4",
        "samples.num_steps=2",
        "samples.seeds=[0]",
        "samples.prompts=[a white background]",
    ]


def train_with(cfg, *callbacks):
    """zsnr.train.train(cfg) (launch/train.py's body) with `callbacks` added after the run's own, so they see
    each step last."""
    import zsnr.train as train

    made = train.instantiate

    def instantiate(config, *args, **kwargs):
        out = made(config, *args, **kwargs)
        if isinstance(out, pl.Trainer):
            out.callbacks.extend(callbacks)
        return out

    train.instantiate = instantiate
    try:
        return train.train(cfg)
    finally:
        train.instantiate = made


def run_train(args: list[str], cwd: Path, timeout: int = 420) -> str:
    """`python launch/train.py ARGS` in `cwd`, one intra-op thread per process, tests/ and tests/integration/
    importable (their callbacks and data modules); returns the output, asserting success."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "integration"), str(ROOT / "tests")]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
    }
    cmd = [sys.executable, str(ROOT / "launch" / "train.py"), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-6000:]}"
    return out
