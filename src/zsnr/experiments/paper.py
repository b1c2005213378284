"""Every claim of the paper, measured in miniature (`make paper`, launch/paper.py; configs/paper_report.yaml).

Measured once per protocol (configs/paper_report.yaml `protocols`: the demo's schedule with SNR x 4, and SD's
as it is), each a column of the claims table. A protocol builds on the demo (zsnr.experiments.demo: its base and
two fine-tunes are reused when already trained): it fine-tunes the one-fix-removed arms and offset noise from the
same base, samples every model with the same seeds, and writes out_dir/<protocol>/report.md (a claims table first),
metrics.json and the figures. out_dir/report.md puts the protocols side by side. One function per section of a
protocol's report: `ablations`, `samplers` (Figure 4), `trajectory` (Figure 5), `phi_sweep` (Figure 6),
`fid_table` (Table 3); measures: paper_measures; report: paper_report.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from zsnr.data import to_model_range
from zsnr.data.decode import decode_image
from zsnr.data.synthetic import SyntheticSet, synthetic_samples
from zsnr.diffusion.report import format_report, plot
from zsnr.evaluation.brightness import mean_brightness
from zsnr.evaluation.fid import ReferenceStats, extract, frechet_distance
from zsnr.evaluation.images import labelled_grid, save_png, to_uint8
from zsnr.experiments.demo import demo, leak_against_sd, schedule_words
from zsnr.experiments.demo_metrics import measure
from zsnr.experiments.demo_report import save_grid
from zsnr.experiments.paper_measures import saturated_fraction, spread_at_T, x0_trajectory
from zsnr.experiments.paper_report import (
    EXTREMES,
    NOT_REFUSED,
    plain,
    write_paper_report,
    write_protocols_report,
)
from zsnr.experiments.runs import TrainJob, train_runs
from zsnr.experiments.samples import model_settings, prompt_set, sample_models, sample_sets
from zsnr.sampling import generate, load_for_inference


def ablations(cfg: DictConfig, d: dict[str, Any], arms: dict[str, Path], out: Path) -> dict[str, Any]:
    """One fix removed at a time (and offset noise): every arm's image sets, measured like the demo's."""
    dcfg, seed = d["cfg"], d["cfg"].seeds[0]
    sampling = OmegaConf.to_container(dcfg.sampling)
    sampling["unconditional_images"] = int(sampling["unconditional_images"] * cfg.ablation_images)
    sampling["images_per_prompt"] = int(sampling["images_per_prompt"] * cfg.ablation_images)
    prompt_sets = {k: list(v) for k, v in dcfg.prompt_sets.items()}
    fixed = d["checkpoints"][f"fixed_seed{seed}"]
    eps = load_for_inference(arms["zsnr_eps"])
    try:  # what a user sees who samples an epsilon model on a zero-SNR schedule from t = T
        generate(eps, ["a black background"], [0], model_settings(eps, sampling), progress=False)
        refusal = NOT_REFUSED
    except ValueError as exn:
        refusal = str(exn)
    last = eps.schedule.num_timesteps - 1
    jobs = {
        "no v-prediction (zero SNR, epsilon; from t = T - 1)": (
            arms["zsnr_eps"],
            {"start_timestep": last - 1},
        ),
        "no trailing (leading steps)": (fixed, {"spacing": "leading"}),
        "no CFG rescale (phi = 0)": (fixed, {"guidance_rescale": 0.0}),
        "no zero SNR (SD's schedule, v-prediction)": (arms["sd_v"], {}),
        "offset noise (0.1)": (arms["offset_noise"], {}),
    }
    samples = sample_models(
        {name: dict(ckpt=ckpt, sampling={**sampling, **extra}, prompt_sets=prompt_sets,
                    folder=out / "samples" / "ablations" / name.split(" (")[0].replace(" ", "_"))
         for name, (ckpt, extra) in jobs.items()},
        parallel=dcfg.parallel, cores=dcfg.cores,
    )  # fmt: skip
    metrics = {name: measure(sets, d["data"]) for name, sets in samples.items()}
    grids = {
        name: save_grid(sets, out / f"ablation_{i}.png", prompt_sets)
        for i, (name, sets) in enumerate(samples.items())
    }
    return {"metrics": metrics, "refusal": refusal, "grids": grids, "samples": samples,
            "num_steps": sampling["num_steps"]}  # fmt: skip


def samplers(cfg: DictConfig, d: dict[str, Any], out: Path) -> dict[str, Any]:
    """Figure 4: the fixed model with leading, linspace and trailing steps at each S, the same seeds."""
    dcfg = d["cfg"]
    model = load_for_inference(d["checkpoints"][f"fixed_seed{dcfg.seeds[0]}"])
    sets = {"dark": list(dcfg.prompt_sets.dark), "bright": list(dcfg.prompt_sets.bright)}
    results, rows = {}, {}
    for steps in cfg.samplers.num_steps:
        for spacing in cfg.samplers.spacings:
            s = model_settings(
                model, {**OmegaConf.to_container(dcfg.sampling), "num_steps": steps, "spacing": spacing}
            )
            images = sample_sets(model, s, sets, cfg.samplers.unconditional_images, cfg.samplers.images_per_prompt,
                                 dcfg.sampling.batch_size)  # fmt: skip
            name = f"{spacing}, S = {steps}"
            results[name] = measure(images, d["data"])
            rows[name] = images["unconditional"][:10]
    grid = save_png(labelled_grid(rows, 10), out / "figure4_samplers.png")
    return {"metrics": results, "grid": grid}


def trajectory(cfg: DictConfig, d: dict[str, Any], out: Path) -> dict[str, Any]:
    """Figure 5: x0 predicted at every step; its spread over noise seeds against that over prompts at the first."""
    c, dcfg = cfg.trajectory, d["cfg"]
    prompts = [p for p in c.prompts for _ in range(c.seeds)]
    seeds = [s for _ in c.prompts for s in range(c.seeds)]
    result = {"prompts": list(c.prompts), "strip_steps": [k for k in c.strip_steps if k < c.num_steps]}
    for name in ("fixed", "flawed"):
        model = load_for_inference(d["checkpoints"][f"{name}_seed{dcfg.seeds[0]}"])
        s = model_settings(model, {**OmegaConf.to_container(dcfg.sampling), "num_steps": c.num_steps})
        x0 = x0_trajectory(model, prompts, seeds, s)  # [steps, N, 3, H, W]
        result[name] = {
            **spread_at_T(x0[0], len(c.prompts)),
            "first_timestep": int(model.schedule.timesteps(c.num_steps)[0]),
        }
        steps = result["strip_steps"]
        strip = {f"step {k + 1}": to_uint8(x0[k, :: c.seeds][:10]) for k in steps}
        result[name]["strip"] = str(save_png(labelled_grid(strip, 10), out / f"figure5_x0_{name}.png"))
        same_prompt = {f"seed {i}": to_uint8(x0[steps, i]) for i in range(min(3, c.seeds))}  # prompt 0
        result[name]["seeds"] = str(
            save_png(labelled_grid(same_prompt, len(steps)), out / f"figure5_seeds_{name}.png")
        )
    return result


def phi_sweep(cfg: DictConfig, d: dict[str, Any], out: Path) -> dict[str, Any]:
    """Figure 6: phi at w = 7.5 on the fixed model: over-exposure and brightness spread."""
    dcfg = d["cfg"]
    model = load_for_inference(d["checkpoints"][f"fixed_seed{dcfg.seeds[0]}"])
    prompt_sets = {k: list(v) for k, v in dcfg.prompt_sets.items()}
    data_sat = saturated_fraction(torch.cat([d["data"][k] for k in cfg.phi.over_exposure_sets]))
    result, rows = {"data": {"saturated": data_sat}}, {}
    for phi in cfg.phi.factors:
        s = model_settings(model, {**OmegaConf.to_container(dcfg.sampling), "guidance_rescale": phi})
        sets = {name: prompt_set(model, s, ps, cfg.phi.images_per_prompt, dcfg.sampling.batch_size, progress=False)
                for name, ps in prompt_sets.items()}  # fmt: skip
        stats = measure(sets, d["data"])
        over = torch.cat([sets[k] for k in cfg.phi.over_exposure_sets])
        light = mean_brightness(to_model_range(torch.cat(list(sets.values()))))
        result[f"{phi:g}"] = {
            "saturated": saturated_fraction(over),
            "brightness_std": light.std().item(),
            "w1": {k: v["wasserstein_to_reference"] for k, v in stats.items()},
            "colour_mean": sum(stats[k]["colour_agreement"] for k in dcfg.colour_sets)
            / len(dcfg.colour_sets),
        }
        rows[f"phi = {phi:g}"] = torch.cat([sets[k][:2] for k in sets])[:12]
    result["grid"] = str(save_png(labelled_grid(rows, 12), out / "figure6_phi.png"))
    return result


def heldout_set(
    resolution: int, shapes: tuple[str, ...], seed: int, n: int
) -> tuple[torch.Tensor, list[str]]:
    """n captioned images of the synthetic set with another seed (never trained on): uint8 images, captions."""
    spec = SyntheticSet(num_samples=2 * n, resolution=resolution, seed=seed, shapes=shapes)
    pairs = [(decode_image(s["png"], resolution), s["txt"]) for s in synthetic_samples(spec) if s["txt"]][:n]
    return torch.stack([image for image, _ in pairs]), [caption for _, caption in pairs]


def caption_images(
    ckpt: Path, captions: list[str], sampling: dict, threads: int | None = None
) -> torch.Tensor:
    """uint8 images, one per caption (seed = its index), with the model's own spacing and phi."""
    if threads:
        torch.set_num_threads(threads)
    model = load_for_inference(ckpt)
    s = model_settings(model, sampling)
    print(f"FID samples {ckpt}: {s}", flush=True)
    return to_uint8(generate(model, captions, list(range(len(captions))), s, sampling["batch_size"]))


def fid_table(cfg: DictConfig, d: dict[str, Any], arms: dict[str, Path], out: Path) -> dict[str, Any]:
    """Table 3 in miniature: FID and KID to held-out data in the synthetic-data classifier's feature space."""
    from zsnr.evaluation.classifier import load_or_train
    from zsnr.evaluation.fid import kernel_inception_distance

    f, dcfg, tcfg = cfg.fid, d["cfg"], d["train_cfg"]
    resolution, shapes = int(tcfg.model.resolution), tuple(tcfg.data.synthetic.shapes)
    classifier, info, _ = load_or_train(Path(cfg.out_dir) / "classifier", resolution=resolution, shapes=shapes,
                                        steps=f.classifier_steps, progress=True)  # fmt: skip
    acc = ", ".join(f"{head} {v:.3f}" for head, v in info["heldout_accuracy"].items())
    info["summary"] = (f"held-out accuracy {acc}; features: its pooled penultimate layer "
                       f"({classifier.config()['feature_dim']}-d)")  # fmt: skip
    images, captions = heldout_set(resolution, shapes, f.heldout_seed, f.num_images)
    ref_feats, _, ref_light = extract(classifier, images.split(f.batch_size))
    reference = ReferenceStats.from_features(ref_feats, ref_light)
    seed = dcfg.seeds[0]
    ckpts = {"base": d["checkpoints"]["base"], "flawed": d["checkpoints"][f"flawed_seed{seed}"],
             "fixed": d["checkpoints"][f"fixed_seed{seed}"], **arms}  # fmt: skip
    sampling = {**OmegaConf.to_container(dcfg.sampling), "num_steps": f.num_steps, "guidance_scale": f.guidance_scale,
                "batch_size": f.batch_size}  # fmt: skip
    generated = sample_models(
        {m: dict(ckpt=ckpts[m], captions=captions, sampling=sampling) for m in f.models},
        parallel=dcfg.parallel, cores=dcfg.cores, fn=caption_images,
    )  # fmt: skip
    train_images = d["data"]["unconditional"][: f.num_images]
    rows = {"training data (a floor)": train_images, **generated}
    table = {}
    for name, x in rows.items():
        feats, _, _ = extract(classifier, x.split(f.batch_size))
        kid, kid_std = kernel_inception_distance(ref_feats, feats, f.kid_subsets, f.kid_subset_size, seed=0)
        table[name] = {"fid": frechet_distance(reference, feats), "kid": kid, "kid_std": kid_std, "n": len(x)}
    return {"classifier": info, "table": table, "n_reference": len(images), "num_steps": f.num_steps}


def protocol(cfg: DictConfig, dcfg: DictConfig, config_dir: str | Path, out: Path) -> dict[str, Any]:
    """One protocol (one column of the claims table): `dcfg` is configs/demo.yaml composed with the protocol's
    overrides. Runs the demo, trains the arms from its base, measures every section on `cfg.family` and writes
    out/report.md and out/metrics.json; returns the column: its schedule, claims and every family's demo checks."""
    start = time.time()
    out.mkdir(parents=True, exist_ok=True)
    ran = demo(dcfg, config_dir)["families"]
    d = {**ran[cfg.family], "cfg": dcfg}
    demo_dir, seed = Path(dcfg.out_dir) / cfg.family, dcfg.seeds[0]
    jobs = [
        TrainJob(f"{arm}_seed{seed}", experiment, seed, demo_dir / "runs" / f"{arm}_seed{seed}",
                 (f"max_steps={dcfg.finetune_steps}", f"init_from='{d['checkpoints']['base']}'", "init_weights=ema",
                  *d["common"]))
        for arm, experiment in cfg.arms.items()
    ]  # fmt: skip
    ckpts = train_runs(jobs, config_dir, parallel=dcfg.parallel, cores=dcfg.cores)
    arms = {arm: ckpts[f"{arm}_seed{seed}"] for arm in cfg.arms}
    for name in ("histograms.png", "grid_base.png", "grid_flawed.png", "grid_fixed.png"):
        shutil.copy(demo_dir / name, out / f"figure3_{name}")
    (out / "schedules.md").write_text(format_report())
    plot(str(out / "figure2_schedules.png"))
    tcfg = d["train_cfg"]
    shift, resolution = float(tcfg.diffusion.snr_shift), int(tcfg.model.resolution)
    results = {
        "seed": seed,
        "demo": {k: d["metrics"][k] for k in ("data", "flawed", "fixed", "base")},
        "checks": [c.__dict__ for c in d["checks"]],
        "ablations": ablations(cfg, d, arms, out),
        "samplers": samplers(cfg, d, out),
        "trajectory": trajectory(cfg, d, out),
        "phi": phi_sweep(cfg, d, out),
        "fid": fid_table(cfg, d, arms, out),
    }
    setup = {
        "command": f"make paper, protocol {out.name} (its demo in {dcfg.out_dir})",
        "minutes": (time.time() - start) / 60,
        "schedule": "SD's" + schedule_words(shift, resolution),
    }
    _, rows = write_paper_report(out, plain(results), setup)
    return {
        "snr_shift": shift,
        "leak": leak_against_sd(shift, resolution),
        "demo_dir": str(dcfg.out_dir),
        "minutes": setup["minutes"],
        "claims": [r.__dict__ for r in rows],
        "families": {f: family_summary(r) for f, r in ran.items()},
    }


def family_summary(r: dict[str, Any]) -> dict[str, Any]:
    """A demo family's line in the paper's report: its checks, and the extremes' means (mean over seeds)."""
    m = r["metrics"]
    means = {"data": {s: m["data"][s]["mean"] for s in EXTREMES}}
    means |= {model: {s: m[model]["mean"][s]["mean"] for s in EXTREMES} for model in ("flawed", "fixed")}
    return {"checks": [c.__dict__ for c in r["checks"]], "means": means}


def paper(cfg: DictConfig, demos: dict[str, DictConfig], config_dir: str | Path) -> Path:
    """`cfg`: configs/paper_report.yaml composed; `demos`: per protocol, configs/demo.yaml composed with its
    demo_dir and demo_overrides; `config_dir`: the configs folder the runs compose theirs from. Measures every
    protocol (out_dir/<protocol>/) and writes the report with one column per protocol; returns its path."""
    start = time.time()
    out = Path(cfg.out_dir)
    for name, dcfg in demos.items():
        if cfg.family not in dcfg.families:
            raise ValueError(
                f"paper family {cfg.family!r} is not one protocol {name}'s demo runs ({list(dcfg.families)})"
            )
    columns = {
        name: {
            **protocol(cfg, dcfg, config_dir, out / name),
            "demo_overrides": list(cfg.protocols[name].demo_overrides),
        }
        for name, dcfg in demos.items()
    }
    setup = {
        "command": "make paper  (python launch/paper.py " + " ".join(sys.argv[1:]) + ")",
        "minutes": (time.time() - start) / 60,
    }
    report, rows = write_protocols_report(out, columns, setup)
    agree = "; ".join(f"{name}: {sum(r.agrees for r in rs)} of {len(rs)}" for name, rs in rows.items())
    print(f"\nwrote {report}: claims that agree, {agree} ({setup['minutes']:.1f} min)")
    for name, rs in rows.items():
        for r in rs:
            if not r.agrees:
                print(f"  disagrees ({name}): {r.section}: {r.paper} / measured: {r.measured}")
    return report
