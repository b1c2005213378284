"""The paper in miniature (`make demo`): train a flawed and a fixed tiny model, sample both, measure brightness.

Each step is a plain function so the shortened end-to-end test and launch/demo.py run the same code:
`train_run` (launch/train.py in a subprocess, exactly as a user runs it), `data_brightness` (the training
data through the same datamodule), `sample_sets` (unconditional and prompt sets with fixed seeds) and
`write_report` (metrics.json, report.md, histograms and grids). Brightness is measured on the uint8 images
that are saved as PNG, so the files under samples/ are exactly what the numbers describe.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from zsnr.data import to_model_range
from zsnr.evaluation.brightness import brightness_stats, mean_brightness
from zsnr.evaluation.images import save_png, to_uint8
from zsnr.sampling import SamplingSettings, generate

UNCONDITIONAL = "unconditional"


def train_run(
    experiment: str, seed: int, run_dir: Path, overrides: Sequence[str] = (), train_script: Path | None = None
) -> Path:
    """Run `python launch/train.py experiment=... seed=... resume=auto` and return its last checkpoint.

    resume=auto makes the demo restartable: a finished run is not trained again.
    """
    script = train_script or Path(__file__).resolve().parents[3] / "launch" / "train.py"
    cmd = [
        sys.executable,
        str(script),
        f"experiment={experiment}",
        f"seed={seed}",
        f"hydra.run.dir={run_dir}",
    ]
    cmd += ["resume=auto", *overrides]
    print(f"\n$ {' '.join(cmd[1:])}", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    subprocess.run(cmd, check=True, env=env)
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.exists():
        raise FileNotFoundError(f"training finished but left no {last}; see the log above")
    return last


def _matches(caption: str, prompts: Sequence[str]) -> bool:
    return caption.strip().lower() in {p.lower() for p in prompts}


@torch.no_grad()
def data_brightness(
    datamodule, prompt_sets: Mapping[str, Sequence[str]], max_images: int | None = None
) -> dict:
    """Brightness of the training data read through its own datamodule (one exact pass, filters applied):
    {"unconditional": all images, set name: images whose caption is one of that set's prompts}."""
    datamodule.setup("fit")
    values, captions = [], []
    for batch in datamodule.train_dataloader():
        values.append(mean_brightness(to_model_range(batch["image"])))
        captions += list(batch["caption"])
        if max_images is not None and len(captions) >= max_images:
            break
    b = torch.cat(values)
    out = {UNCONDITIONAL: b}
    for name, prompts in prompt_sets.items():
        keep = torch.tensor([_matches(c, prompts) for c in captions])
        if not keep.any():
            raise ValueError(f"no training image has a caption in prompt set {name!r} ({list(prompts)})")
        out[name] = b[keep]
    return out


def sample_sets(
    model,
    settings: SamplingSettings,
    prompt_sets: Mapping[str, Sequence[str]],
    num_unconditional: int,
    images_per_prompt: int,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """uint8 images per set, with fixed seeds (image i of a set uses seed i, the same for every model).

    Unconditional: the empty prompt without guidance (w = 1), as trained by caption dropout.
    """
    uncond = replace(settings, guidance_scale=1.0, guidance_rescale=0.0)
    out = {UNCONDITIONAL: to_uint8(generate(model, [""] * num_unconditional, list(range(num_unconditional)),
                                            uncond, batch_size))}  # fmt: skip
    for name, prompts in prompt_sets.items():
        ps = [p for p in prompts for _ in range(images_per_prompt)]
        out[name] = to_uint8(generate(model, ps, list(range(len(ps))), settings, batch_size))
    return out


def sampler_checks(
    model, settings: SamplingSettings, checks: Sequence[Mapping[str, Any]], num_images: int, batch_size: int
) -> dict[str, torch.Tensor]:
    """The unconditional set (same seeds) with other samplers / step counts: {"unconditional, dpmpp_2m S=25": ...}."""
    out = {}
    for check in checks:
        s = replace(settings, guidance_scale=1.0, guidance_rescale=0.0, **check)
        images = generate(model, [""] * num_images, list(range(num_images)), s, batch_size)
        out[f"{UNCONDITIONAL}, {s.sampler} S={s.num_steps}"] = to_uint8(images)
    return out


def measure(images: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> dict[str, dict]:
    """brightness_stats of every set against the data's brightness for the same set (a sampler check such as
    "unconditional, ddim S=100" against the data's "unconditional")."""
    return {
        name: brightness_stats(mean_brightness(to_model_range(x)), reference[name.split(",")[0]])
        for name, x in images.items()
    }


def save_samples(images: Mapping[str, torch.Tensor], folder: Path) -> None:
    for name, x in images.items():
        for i, image in enumerate(x):
            save_png(image, folder / name / f"{i:04d}.png")


def _mean_over_seeds(per_seed: Mapping[str, Mapping[str, dict]]) -> dict[str, dict[str, float]]:
    keys = ("mean", "std", "p05", "p95", "frac_dark", "frac_bright", "wasserstein_to_reference")
    seeds = list(per_seed.values())
    return {s: {k: sum(r[s][k] for r in seeds) / len(seeds) for k in keys} for s in seeds[0]}


def summarize(data: Mapping[str, torch.Tensor], runs: Mapping[str, Mapping[int, dict]]) -> dict[str, Any]:
    """metrics.json: {"data": stats per set, "flawed"/"fixed": {"seeds": {seed: stats per set}, "mean": ...}}."""
    out: dict[str, Any] = {"data": {name: brightness_stats(b) for name, b in data.items()}}
    for variant, per_seed in runs.items():
        out[variant] = {"seeds": {str(s): m for s, m in per_seed.items()}, "mean": _mean_over_seeds(per_seed)}
    return out
