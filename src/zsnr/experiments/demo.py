"""The paper in miniature (`make demo`): one flawed base model, fine-tuned two ways, sampled and measured.

The paper's protocol (section 5): SD 2.1-base, trained with SD's schedule and epsilon-prediction, is fine-tuned
twice on the same data, once keeping that recipe (the reference) and once with all four fixes. In miniature:
`experiment=demo_base` pretrains a tiny pixel-space model with the flawed recipe (once: a later run reuses it),
then `experiment=demo_flawed` and `experiment=demo_fixed` fine-tune copies of it (`init_from=`) on the same
data with the same steps and seeds. launch/demo.py (`make demo`) and the shortened end-to-end test run `demo`;
see configs/demo.yaml. Runs: zsnr.experiments.runs; image sets: samples; measures: demo_metrics; report:
demo_report.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from zsnr.data import to_model_range
from zsnr.evaluation.brightness import mean_brightness
from zsnr.experiments.demo_metrics import demo_checks, measure, summarize
from zsnr.experiments.demo_report import save_grid, write_report
from zsnr.experiments.runs import TrainJob, train_runs
from zsnr.experiments.samples import data_reference, sample_models

PROTOCOL = (
    "The paper's protocol (section 5) in miniature. A tiny text-conditioned pixel-space UNet is pretrained "
    "once with Stable Diffusion's flawed recipe (SD's schedule{shift}, epsilon-prediction): the "
    "**base**, a miniature SD 2.1-base (`experiment=demo_base`, {base_steps} steps, seed {base_seed}). Copies of "
    "it are fine-tuned ({steps} steps, batch {batch}, seeds {seeds}, `init_from=` the base's EMA) on the same "
    "data with the same steps and seeds in two ways: **flawed** (`experiment=demo_flawed`: the same recipe "
    "continued; sampled with leading steps and plain CFG) and **fixed** (`experiment=demo_fixed`: all four fixes "
    "together: the schedule rescaled to zero terminal SNR, v-prediction with the v-loss, trailing steps, CFG "
    "rescale phi = 0.7). The two fine-tunes differ only in the diffusion config; one fix at a time is what "
    "`make paper` measures. Data: {resolution} px synthetic {family} on backgrounds from black to white, captions "
    "that say so. The models work in pixel space ({patch}x{patch} pixel patches folded into channels, no "
    "autoencoder), so brightness is measured on exactly what the diffusion produced. Sampling: {sampler}, "
    "{num_steps} steps, w = {w} for prompts; unconditional: empty prompt, no guidance; the same seeds for every "
    "model."
)


FAMILIES = {"shapes": "shapes (flat colours, clean edges)",
            "scenes": "scenes (soft blobs, suns and hills; smooth light and shade)"}  # fmt: skip


def leak_against_sd(shift: float, resolution: int) -> float:
    """How strongly the image mean leaks at t = T in a run at `resolution` px with SNR(t) x `shift`, in SNR,
    against SD 2.1 at its 64 x 64 latents (same SNR(T) otherwise): the mean of n values per channel is seen at
    SNR n SNR(T), so the ratio is shift x resolution^2 / 64^2 (16 px: 1/16 unshifted, 1 at shift 16)."""
    return shift * resolution**2 / 64**2


def schedule_words(shift: float, resolution: int) -> str:
    """The run's schedule against SD's, for the report."""
    named = "" if shift == 1 else f" with SNR(t) x {shift:g} (`diffusion.snr_shift`)"
    return (f"{named}, SNR(T) = 0.0047{'' if shift == 1 else f' x {shift:g}'}: at {resolution} px the image mean "
            f"leaks at t = T {leak_against_sd(shift, resolution):.3g}x as strongly (in SNR) as in SD 2.1 at its 64 x 64 "
            "latents")  # fmt: skip


def training_config(run_dir: Path) -> DictConfig:
    """The config a run composed (saved by Hydra), to read its data as training did."""
    cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    OmegaConf.set_struct(cfg, False)
    return cfg


def demo(cfg: DictConfig, config_dir: str | Path) -> dict[str, Any]:
    """`cfg`: configs/demo.yaml composed; `config_dir`: the configs folder the runs compose theirs from.

    Train (or reuse), sample, measure and report; returns what zsnr.experiments.paper builds on: the report's path,
    metrics, checks, the checkpoints ("base" and "<variant>_seed<seed>"), the data's and every model's image
    sets, the overrides every run shared and the base's training config."""
    start = time.time()
    out = Path(cfg.out_dir)
    prompt_sets = {k: list(v) for k, v in cfg.prompt_sets.items()}
    common = [f"data.root={out / 'data'}", *cfg.train_overrides]
    base = TrainJob("base", cfg.base.experiment, cfg.base.seed, out / "runs" / "base",
                    (f"max_steps={cfg.base.steps}", *common))  # fmt: skip
    base_ckpt = train_runs([base], config_dir, cores=cfg.cores)["base"]
    jobs = [
        TrainJob(f"{variant}_seed{seed}", experiment, seed, out / "runs" / f"{variant}_seed{seed}",
                 (f"max_steps={cfg.finetune_steps}", f"init_from='{base_ckpt}'", "init_weights=ema", *common))
        for seed in cfg.seeds for variant, experiment in cfg.variants.items()
    ]  # fmt: skip
    ckpts = train_runs(jobs, config_dir, parallel=cfg.parallel, cores=cfg.cores)

    train_cfg = training_config(base.run_dir)  # every run reads the same data
    train_cfg.data.resampled, train_cfg.data.num_workers, train_cfg.data.shuffle_buffer = False, 0, 0
    train_cfg.data.epoch_length = None
    data = data_reference(
        instantiate(
            train_cfg.data, resolution=train_cfg.model.resolution, batch_size=256, seed=train_cfg.seed
        ),
        prompt_sets,
    )  # the images the runs trained on: their resolution (launch/train.py passes the same)

    sampling = OmegaConf.to_container(cfg.sampling)
    checks = OmegaConf.to_container(cfg.sampler_checks)
    models = {"base": base_ckpt} | {job.name: ckpts[job.name] for job in jobs}
    samples = sample_models(
        {name: dict(ckpt=ckpt, sampling=sampling, prompt_sets=prompt_sets,
                    checks=[] if name == "base" else checks, folder=out / "samples" / name)
         for name, ckpt in models.items()},
        parallel=cfg.parallel, cores=cfg.cores,
    )  # fmt: skip

    runs = {"base": {cfg.base.seed: measure(samples["base"], data)}}
    runs |= {variant: {seed: measure(samples[f"{variant}_seed{seed}"], data) for seed in cfg.seeds}
             for variant in cfg.variants}  # fmt: skip
    metrics = summarize(data, runs)
    checks_ = demo_checks(metrics, list(cfg.extremes), list(cfg.colour_sets), **cfg.thresholds)
    brightness = {"data": {k: mean_brightness(to_model_range(x)) for k, x in data.items()}}
    for model in runs:
        names = ["base"] if model == "base" else [f"{model}_seed{s}" for s in cfg.seeds]
        brightness[model] = {
            k: torch.cat([mean_brightness(to_model_range(samples[n][k])) for n in names]) for k in data
        }
    first = {"base": "base"} | {v: f"{v}_seed{cfg.seeds[0]}" for v in cfg.variants}
    grids = {
        model: save_grid({k: samples[name][k] for k in data}, out / f"grid_{model}.png", prompt_sets)
        for model, name in first.items()
    }
    s = cfg.sampling
    setup = {
        "command": "make demo  (python launch/demo.py " + " ".join(sys.argv[1:]) + ")",
        "minutes": (time.time() - start) / 60,
        "protocol": PROTOCOL.format(
            base_steps=cfg.base.steps, base_seed=cfg.base.seed, steps=cfg.finetune_steps,
            batch=train_cfg.global_batch_size, seeds=list(cfg.seeds), resolution=train_cfg.model.resolution,
            patch=train_cfg.model.autoencoder.patch_size, sampler=s.sampler, num_steps=s.num_steps,
            w=s.guidance_scale, family=FAMILIES[train_cfg.data.synthetic.get("family", "shapes")],
            shift=schedule_words(float(train_cfg.diffusion.get("snr_shift", 1.0)), train_cfg.model.resolution),
        ),
    }  # fmt: skip
    report = write_report(out, metrics, checks_, brightness, grids, prompt_sets, setup)
    held = sum(c.ok for c in checks_)
    print(f"\nwrote {report}: {held} of {len(checks_)} checks hold ({setup['minutes']:.1f} min)")
    for c in checks_:
        if not c.ok:
            print(f"  does not hold: {c.claim} (seed {c.seed}): {c.value:.3f}, needs {c.bound}")
    return dict(report=report, metrics=metrics, checks=checks_, checkpoints=models, data=data, samples=samples,
                common=common, train_cfg=train_cfg, brightness=brightness)  # fmt: skip
