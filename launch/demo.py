"""The paper in miniature: `python launch/demo.py` (what `make demo` runs). See configs/demo.yaml.

Makes the synthetic shards, trains a flawed and a fixed tiny model per seed with launch/train.py, samples
both with the same seeds, and writes outputs/demo/report.md, metrics.json, histograms and grids.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from zsnr.data import to_model_range
from zsnr.evaluation.brightness import mean_brightness
from zsnr.evaluation.demo import (
    data_brightness,
    measure,
    sample_sets,
    sampler_checks,
    save_samples,
    summarize,
    train_run,
)
from zsnr.evaluation.demo_report import save_grid, write_report
from zsnr.sampling import SamplingSettings

CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")


def training_config(run_dir: Path) -> DictConfig:
    """The config launch/train.py composed for a run (saved by Hydra), to read its data as training did."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    OmegaConf.set_struct(cfg, False)
    return cfg


def demo(cfg: DictConfig) -> Path:
    start = time.time()
    out = Path(cfg.out_dir)
    prompt_sets = {k: list(v) for k, v in cfg.prompt_sets.items()}
    overrides = [f"max_steps={cfg.train_steps}", f"data.root={out / 'data'}", *cfg.train_overrides]
    runs = {variant: {} for variant in cfg.variants}
    images = {variant: {} for variant in cfg.variants}
    for seed in cfg.seeds:
        for variant, experiment in cfg.variants.items():
            ckpt = train_run(experiment, seed, out / "runs" / f"{variant}_seed{seed}", overrides)
            runs[variant][seed] = ckpt
    # the data's brightness, read through the training datamodule (both variants read the same data)
    train_cfg = training_config(next(iter(runs.values()))[cfg.seeds[0]].parents[1])
    train_cfg.data.resampled, train_cfg.data.num_workers, train_cfg.data.shuffle_buffer = False, 0, 0
    data = data_brightness(instantiate(train_cfg.data), prompt_sets)

    from zsnr.training import load_for_inference

    s = cfg.sampling
    metrics_runs = {variant: {} for variant in cfg.variants}
    brightness = {"data": data}
    for variant, per_seed in runs.items():
        pooled: dict[str, list[torch.Tensor]] = {}
        for seed, ckpt in per_seed.items():
            model = load_for_inference(ckpt)
            settings = SamplingSettings(
                sampler=s.sampler, num_steps=s.num_steps, spacing=model.schedule.spacing,
                guidance_scale=s.guidance_scale, guidance_rescale=model.schedule.guidance_rescale,
            )  # fmt: skip
            print(f"\nsampling {variant} seed {seed}: {settings}", flush=True)
            sets = sample_sets(
                model, settings, prompt_sets, s.unconditional_images, s.images_per_prompt, s.batch_size
            )
            save_samples(sets, out / "samples" / variant / f"seed{seed}")
            checks = sampler_checks(model, settings, cfg.sampler_checks, s.unconditional_images, s.batch_size)
            metrics_runs[variant][seed] = {**measure(sets, data), **measure(checks, data)}
            for name, x in sets.items():
                pooled.setdefault(name, []).append(mean_brightness(to_model_range(x)))
            if seed == cfg.seeds[0]:
                images[variant] = save_grid(sets, out / f"grid_{variant}.png")
        brightness[variant] = {name: torch.cat(v) for name, v in pooled.items()}
    metrics = summarize(data, metrics_runs)
    setup = {
        "command": "make demo  (python launch/demo.py " + " ".join(sys.argv[1:]) + ")",
        "train_steps": cfg.train_steps, "batch": train_cfg.global_batch_size, "seeds": list(cfg.seeds),
        "resolution": train_cfg.data.resolution, "patch_size": train_cfg.model.autoencoder.patch_size, "sampler": s.sampler, "num_steps": s.num_steps,
        "guidance_scale": s.guidance_scale, "minutes": (time.time() - start) / 60,
    }  # fmt: skip
    report = write_report(out, metrics, brightness, images, prompt_sets, setup)
    print(f"\nwrote {report}")
    return report


@hydra.main(config_path=CONFIGS, config_name="demo", version_base="1.3")
def main(cfg: DictConfig) -> None:
    demo(cfg)


if __name__ == "__main__":
    main()
