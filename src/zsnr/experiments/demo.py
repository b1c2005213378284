"""The paper in miniature (`make demo`): one flawed base model per data family, fine-tuned two ways, sampled and
measured.

The paper's protocol (section 5): SD 2.1-base, trained with SD's schedule and epsilon-prediction, is fine-tuned
twice on the same data, once keeping that recipe (the reference) and once with all four fixes. In miniature, for
each synthetic data family (configs/demo.yaml `families`): `experiment=demo_base` pretrains a tiny pixel-space model
with the flawed recipe (once: a later run reuses it), then `experiment=demo_flawed` and `experiment=demo_fixed`
fine-tune copies of it (`init_from=`) on the same data with the same steps and seeds. Every run trains on SD's
schedule with SNR(t) x `snr_shift` (the leak at t = T, see `leak_against_sd`). launch/demo.py (`make demo`) and
the shortened end-to-end test run `demo`. Runs: zsnr.experiments.runs; image sets: samples; measures:
demo_metrics; learning curves: demo_curves; report: demo_report.
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
from zsnr.experiments.demo_curves import curve, kept_checkpoints, plot_curves, sample_checkpoints
from zsnr.experiments.demo_metrics import demo_checks, held, measure, prompt_noise_spread, summarize
from zsnr.experiments.demo_report import save_grid, write_report
from zsnr.experiments.runs import TrainJob, train_runs
from zsnr.experiments.samples import data_reference, sample_models

PROTOCOL = (
    "The paper's protocol (section 5) in miniature, on each data family below. A tiny text-conditioned pixel-space "
    "UNet is pretrained once per family with Stable Diffusion's flawed recipe (SD's schedule{shift}, "
    "epsilon-prediction): the **base**, a miniature SD 2.1-base (`experiment=demo_base`, {base_steps} steps, seed "
    "{base_seed}). Copies of it are fine-tuned ({steps} steps, batch {batch}, seeds {seeds}, `init_from=` the "
    "base's EMA) on the same data with the same steps and seeds in two ways: **flawed** (`experiment=demo_flawed`: "
    "the same recipe continued; sampled with leading steps and plain CFG) and **fixed** (`experiment=demo_fixed`: "
    "all four fixes together: the schedule rescaled to zero terminal SNR, v-prediction with the v-loss, trailing "
    "steps, CFG rescale phi = 0.7). The two fine-tunes differ only in the diffusion config; one fix at a time is "
    "what `make paper` measures. Data: {resolution} px synthetic images on backgrounds from black to white, with "
    "captions that say so. The models work in pixel space ({patch}x{patch} pixel patches folded into channels, no "
    "autoencoder), so brightness is measured on exactly what the diffusion produced. Sampling: {sampler}, "
    "{num_steps} steps, w = {w} for prompts; unconditional: empty prompt, no guidance; the same seeds for every "
    "model. The same thresholds hold for every family."
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


def common_overrides(cfg: DictConfig, family: str) -> list[str]:
    """The overrides every run of a family shares: its data (own folder), the schedule's shift when the demo sets
    one (else the experiments' own), the user's."""
    out = Path(cfg.out_dir) / family
    shift = [] if cfg.snr_shift is None else [f"diffusion.snr_shift={cfg.snr_shift}"]
    return [f"data.root={out / 'data'}", f"data.synthetic.family={family}", *shift, *cfg.train_overrides]


def curve_overrides(every: int) -> tuple[str, ...]:
    """Keep a checkpoint every `every` steps for the learning curves (0: the last one only)."""
    return (f"checkpoint.every_n_steps={every}", "checkpoint.keep_last=0") if every else ()


def data_of(run_dir: Path, prompt_sets: dict[str, list[str]]) -> tuple[DictConfig, dict[str, torch.Tensor]]:
    """(the run's training config, the images it trained on per prompt set): one exact pass, its resolution."""
    train_cfg = training_config(run_dir)
    train_cfg.data.resampled, train_cfg.data.num_workers, train_cfg.data.shuffle_buffer = False, 0, 0
    train_cfg.data.epoch_length = None
    datamodule = instantiate(
        train_cfg.data, resolution=train_cfg.model.resolution, batch_size=256, seed=train_cfg.seed
    )
    return train_cfg, data_reference(datamodule, prompt_sets)


def demo(cfg: DictConfig, config_dir: str | Path) -> dict[str, Any]:
    """`cfg`: configs/demo.yaml composed; `config_dir`: the configs folder the runs compose theirs from.

    Train (or reuse), sample, measure and report; returns the report's path and, per family, what
    zsnr.experiments.paper builds on: metrics, checks, the checkpoints ("base" and "<variant>_seed<seed>"), the
    data's and every model's image sets, the overrides every run shared and the base's training config."""
    start = time.time()
    out = Path(cfg.out_dir)
    families = list(cfg.families)
    unknown = [f for f in families if f not in FAMILIES]
    if not families or unknown:
        raise ValueError(f"demo families must be some of {list(FAMILIES)}; got {families}")
    prompt_sets = {k: list(v) for k, v in cfg.prompt_sets.items()}
    curves_cfg = cfg.curves
    common = {f: common_overrides(cfg, f) for f in families}
    bases = {
        f: TrainJob(f"{f}/base", cfg.base.experiment, cfg.base.seed, out / f / "runs" / "base",
                    (f"max_steps={cfg.base.steps}", *curve_overrides(curves_cfg.base_every), *common[f]))
        for f in families
    }  # fmt: skip
    base_ckpts = train_runs(list(bases.values()), config_dir, parallel=cfg.parallel, cores=cfg.cores)
    jobs = {
        f: [TrainJob(f"{f}/{variant}_seed{seed}", experiment, seed, out / f / "runs" / f"{variant}_seed{seed}",
                     (f"max_steps={cfg.finetune_steps}", f"init_from='{base_ckpts[f'{f}/base']}'", "init_weights=ema",
                      *curve_overrides(curves_cfg.finetune_every if seed == cfg.seeds[0] else 0), *common[f]))
            for seed in cfg.seeds for variant, experiment in cfg.variants.items()]
        for f in families
    }  # fmt: skip
    ckpts = train_runs(
        [j for fj in jobs.values() for j in fj], config_dir, parallel=cfg.parallel, cores=cfg.cores
    )

    sampling = OmegaConf.to_container(cfg.sampling)
    checks = OmegaConf.to_container(cfg.sampler_checks)
    models = {f: {"base": base_ckpts[f"{f}/base"]} | {j.name.split("/")[1]: ckpts[j.name] for j in jobs[f]}
              for f in families}  # fmt: skip
    samples = sample_models(
        {f"{f}/{name}": dict(ckpt=ckpt, sampling=sampling, prompt_sets=prompt_sets,
                             checks=[] if name == "base" else checks, folder=out / f / "samples" / name)
         for f in families for name, ckpt in models[f].items()},
        parallel=cfg.parallel, cores=cfg.cores,
    )  # fmt: skip
    first = {"base": "base"} | {v: f"{v}_seed{cfg.seeds[0]}" for v in cfg.variants}
    curve_sets = {k: v for k, v in prompt_sets.items() if k in (*cfg.extremes, *cfg.colour_sets, "mid")}
    per_step = sample_models(
        {f"{f}/{model}": dict(ckpts=kept_checkpoints(out / f / "runs" / name), sampling=sampling,
                              prompt_sets=curve_sets, images_per_prompt=curves_cfg.images_per_prompt,
                              seed_stride=sampling["images_per_prompt"])
         for f in families for model, name in first.items()},
        parallel=cfg.parallel, cores=cfg.cores, fn=sample_checkpoints,
    )  # fmt: skip

    s = cfg.sampling
    results: dict[str, Any] = {}
    for f in families:
        train_cfg, data = data_of(bases[f].run_dir, prompt_sets)
        fs = {name: samples[f"{f}/{name}"] for name in models[f]}
        runs = {"base": {cfg.base.seed: measure(fs["base"], data)}}
        runs |= {variant: {seed: measure(fs[f"{variant}_seed{seed}"], data) for seed in cfg.seeds}
                 for variant in cfg.variants}  # fmt: skip
        metrics = summarize(data, runs)
        spread = {model: prompt_noise_spread({k: fs[name][k] for k in prompt_sets}, s.images_per_prompt)
                  for model, name in first.items()}  # fmt: skip
        checks_ = demo_checks(metrics, list(cfg.extremes), list(cfg.colour_sets), **cfg.thresholds)
        brightness = {"data": {k: mean_brightness(to_model_range(x)) for k, x in data.items()}}
        for model in runs:
            names = ["base"] if model == "base" else [f"{model}_seed{seed}" for seed in cfg.seeds]
            brightness[model] = {
                k: torch.cat([mean_brightness(to_model_range(fs[n][k])) for n in names]) for k in data
            }
        grids = {model: save_grid({k: fs[name][k] for k in data}, out / f / f"grid_{model}.png", prompt_sets)
                 for model, name in first.items()}  # fmt: skip
        curves = {model: curve(per_step[f"{f}/{model}"], data, list(cfg.colour_sets)) for model in first
                  if per_step[f"{f}/{model}"]}  # fmt: skip
        curves_png = None
        if curves:
            data_means = {k: metrics["data"][k]["mean"] for k in curve_sets}
            curves_png = plot_curves(curves, data_means, list(cfg.extremes), f"{f}: learning curves (seed {cfg.seeds[0]})",
                                     out / f / "curves.png")  # fmt: skip
        results[f] = dict(metrics=metrics, checks=checks_, checkpoints=models[f], data=data, samples=fs,
                          common=common[f], train_cfg=train_cfg, brightness=brightness, grids=grids,
                          curves=curves, curves_png=curves_png, spread=spread,
                          description=FAMILIES[f])  # fmt: skip
    train_cfg = results[families[0]]["train_cfg"]
    setup = {
        "command": "make demo  (python launch/demo.py " + " ".join(sys.argv[1:]) + ")",
        "minutes": (time.time() - start) / 60,
        "protocol": PROTOCOL.format(
            base_steps=cfg.base.steps, base_seed=cfg.base.seed, steps=cfg.finetune_steps,
            batch=train_cfg.global_batch_size, seeds=list(cfg.seeds), resolution=train_cfg.model.resolution,
            patch=train_cfg.model.autoencoder.patch_size, sampler=s.sampler, num_steps=s.num_steps,
            w=s.guidance_scale, shift=schedule_words(float(train_cfg.diffusion.snr_shift), train_cfg.model.resolution),
        ),
    }  # fmt: skip
    report = write_report(out, results, prompt_sets, setup)
    every = [c for r in results.values() for c in r["checks"]]
    print(f"\nwrote {report}: {held(every)} checks hold ({setup['minutes']:.1f} min)")
    for f, r in results.items():
        for c in r["checks"]:
            if not c.ok:
                print(f"  does not hold ({f}): {c.claim} (seed {c.seed}): {c.value:.3f}, needs {c.bound}")
    return {"report": report, "families": results}
