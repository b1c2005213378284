"""The image sets the experiments compare: `data_reference` (the training images, read through the run's own
datamodule) and `sample_sets` (fixed seeds, the same for every model), sampled from checkpoints side by side in
worker processes (`sample_models`). The runs are zsnr.experiments.runs; the measures demo_metrics.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from zsnr.evaluation.images import save_png, to_uint8
from zsnr.sampling import SamplingSettings, generate

UNCONDITIONAL = "unconditional"


def _matches(caption: str, prompts: Sequence[str]) -> bool:
    return caption.strip().lower() in {p.lower() for p in prompts}


@torch.no_grad()
def data_reference(datamodule, prompt_sets: Mapping[str, Sequence[str]]) -> dict[str, torch.Tensor]:
    """The training images (uint8) in one exact pass through their own datamodule (filters applied):
    {"unconditional": all of them, set name: those whose caption is one of the set's prompts}."""
    datamodule.setup("fit")
    images, captions = [], []
    for batch in datamodule.train_dataloader():
        images.append(batch["image"])
        captions += list(batch["caption"])
    x = torch.cat(images)
    out = {UNCONDITIONAL: x}
    for name, prompts in prompt_sets.items():
        keep = torch.tensor([_matches(c, prompts) for c in captions])
        if not keep.any():
            raise ValueError(f"no training image has a caption in prompt set {name!r} ({list(prompts)})")
        out[name] = x[keep]
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
    seeds = list(range(num_unconditional))
    out = {UNCONDITIONAL: to_uint8(generate(model, [""] * num_unconditional, seeds, uncond, batch_size))}
    for name, prompts in prompt_sets.items():
        out[name] = prompt_set(model, settings, prompts, images_per_prompt, batch_size)
    return out


def prompt_set(
    model,
    settings: SamplingSettings,
    prompts: Sequence[str],
    images_per_prompt: int,
    batch_size: int,
    seed_stride: int | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """uint8 images of one prompt set, `images_per_prompt` per prompt: image i of prompt j has seed
    j * seed_stride + i. seed_stride defaults to images_per_prompt (seeds 0, 1, 2, ...: sample_sets' numbering);
    a larger one takes the first seeds of each prompt of a set sampled with seed_stride images per prompt."""
    stride = images_per_prompt if seed_stride is None else seed_stride
    if stride < images_per_prompt:
        raise ValueError(f"seed_stride {stride} < images_per_prompt {images_per_prompt}: seeds would repeat")
    ps = [p for p in prompts for _ in range(images_per_prompt)]
    seeds = [j * stride + i for j in range(len(prompts)) for i in range(images_per_prompt)]
    return to_uint8(generate(model, ps, seeds, settings, batch_size, progress=progress))


def sampler_checks(
    model, settings: SamplingSettings, checks: Sequence[Mapping], num_images: int, batch_size: int
) -> dict[str, torch.Tensor]:
    """The unconditional set (same seeds) with other samplers / step counts: {"unconditional, dpmpp_2m S=25": ...}."""
    out = {}
    for check in checks:
        s = replace(settings, guidance_scale=1.0, guidance_rescale=0.0, **check)
        images = generate(model, [""] * num_images, list(range(num_images)), s, batch_size)
        out[f"{UNCONDITIONAL}, {s.sampler} S={s.num_steps}"] = to_uint8(images)
    return out


def save_samples(images: Mapping[str, torch.Tensor], folder: Path) -> None:
    for name, x in images.items():
        for i, image in enumerate(x):
            save_png(image, folder / name / f"{i:04d}.png")


def model_settings(model, sampling: Mapping) -> SamplingSettings:
    """A model's sampling settings: sampler, num_steps and guidance_scale from `sampling`; the spacing and phi
    the model was trained for unless `sampling` names them (spacing, guidance_rescale); start_timestep if set."""
    return SamplingSettings.for_schedule(
        model.schedule, sampler=sampling["sampler"], num_steps=sampling["num_steps"],
        spacing=sampling.get("spacing") or None, guidance_scale=sampling["guidance_scale"],
        guidance_rescale=sampling.get("guidance_rescale"), start_timestep=sampling.get("start_timestep"),
    )  # fmt: skip


def sample_model(
    ckpt: Path,
    sampling: Mapping,
    prompt_sets: Mapping[str, Sequence[str]],
    checks: Sequence[Mapping] = (),
    folder: Path | None = None,
    threads: int | None = None,
) -> dict[str, torch.Tensor]:
    """Load a checkpoint and sample its image sets (and the sampler checks) with the model's own spacing and
    phi; saves the PNGs under `folder`. A function of plain values, so it runs in a worker process too."""
    from zsnr.sampling import load_for_inference

    if threads:
        torch.set_num_threads(threads)
    model = load_for_inference(ckpt)
    settings = model_settings(model, sampling)
    print(f"sampling {ckpt}: {settings}", flush=True)
    n, k, b = sampling["unconditional_images"], sampling["images_per_prompt"], sampling["batch_size"]
    sets = sample_sets(model, settings, prompt_sets, n, k, b)
    sets.update(sampler_checks(model, settings, checks, n, b))
    if folder is not None:
        save_samples(sets, folder)
    return sets


def sample_models(
    jobs: Mapping[str, Mapping], parallel: int = 1, cores: int | None = None, fn: Callable = sample_model
) -> dict[str, Any]:
    """fn(**kwargs) (sample_model, or any function of plain values with a `threads` argument) for every named
    job, `parallel` at a time in worker processes (cores // parallel threads each); {name: its result}."""
    if parallel <= 1 or len(jobs) == 1:
        return {name: fn(**kwargs) for name, kwargs in jobs.items()}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (cores or os.cpu_count() or 1) // parallel)
    # fork: the workers start with zsnr imported (spawn would import torch & co. again in each); they set their
    # own thread count first thing, as DataLoader workers do
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=parallel, mp_context=context) as pool:
        futures = {name: pool.submit(fn, **kwargs, threads=threads) for name, kwargs in jobs.items()}
        return {name: f.result() for name, f in futures.items()}
