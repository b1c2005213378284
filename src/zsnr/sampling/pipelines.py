"""The sampling entry points: text-to-image and image-to-image on model parts, and `generate`, which runs
either on a loaded checkpoint in batches. All three share zsnr.sampling.setup's `prepare`.

`generate(model, prompts, seeds, settings, ...)` is what launch/sample.py and launch/evaluate.py run.
Image-to-image (SDEdit: noise the init image to the timestep `strength` selects, then denoise) is what
diffusers' SD img2img pipeline lacks with guidance rescale. The paper's defaults: DDIM, 50 steps, trailing,
w = 7.5, phi = 0.7. `SamplingSettings.dtype` picks float32 or half-precision autocast (zsnr.sampling.setup).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zsnr.models.schedule import Schedule
from zsnr.models.text import Tokenizer
from zsnr.sampling.settings import SamplingSettings, autocast
from zsnr.sampling.setup import decode_images, latent_shape, prepare


@torch.no_grad()
def text_to_image(
    unet: nn.Module,
    autoencoder: nn.Module,
    text_encoder: nn.Module,
    tokenizer: Tokenizer,
    schedule: Schedule,
    prompts: list[str],
    seeds: list[int],
    resolution: int,
    settings: SamplingSettings | None = None,
    progress: bool = False,
    **overrides: Any,
) -> torch.Tensor:
    """One image per (prompt, seed) pair; returns images in [-1, 1] (float32, [N, 3, H, W]).

    `settings` default to SamplingSettings.for_schedule(schedule, **overrides): the schedule's sampler,
    spacing and phi, and SamplingSettings' other defaults, unless `overrides` (num_steps, guidance_scale,
    guidance_rescale, dtype, ...) name them; guidance_scale 1 skips the negative pass.
    """
    if settings is None:
        settings = SamplingSettings.for_schedule(schedule, **overrides)
    elif overrides:
        raise TypeError(f"give settings or overrides, not both (got overrides {sorted(overrides)})")
    device = next(unet.parameters()).device
    with autocast(device, settings.torch_dtype):
        setup = prepare(unet, text_encoder, tokenizer, schedule, prompts, seeds,
                        latent_shape(autoencoder, resolution), settings, progress)  # fmt: skip
        return decode_images(autoencoder, setup.sample())


@torch.no_grad()
def image_to_image(
    unet: nn.Module,
    autoencoder: nn.Module,
    text_encoder: nn.Module,
    tokenizer: Tokenizer,
    schedule: Schedule,
    init_images: torch.Tensor,
    prompts: list[str],
    seeds: list[int],
    strength: float,
    settings: SamplingSettings,
    progress: bool = False,
) -> torch.Tensor:
    """Images [N, 3, H, W] in [-1, 1] from init images in [-1, 1] of the model's resolution (one per prompt).
    strength 1 starts from pure noise at t = T (with zero terminal SNR nothing of the init image is left)."""
    if not len(prompts) == len(seeds) == init_images.shape[0]:
        raise ValueError(
            f"need one init image and seed per prompt: {init_images.shape[0]}, {len(seeds)}, {len(prompts)}"
        )
    device = next(unet.parameters()).device
    ae_dtype = next(autoencoder.parameters(), init_images).dtype
    with autocast(device, settings.torch_dtype):
        x0 = autoencoder.encode(init_images.to(device, ae_dtype)).float()
        setup = prepare(unet, text_encoder, tokenizer, schedule, prompts, seeds, tuple(x0.shape[1:]), settings,
                        progress)  # fmt: skip
        return decode_images(autoencoder, setup.img2img(x0, strength))


# inference_mode, not only no_grad: less bookkeeping per op (7% off the tiny UNet's forward on a CPU). It is
# for inference models only; text_to_image keeps no_grad, as it also samples a training run's UNets, whose
# tensors (FSDP2's gathered weights among them) must stay usable by autograd.
@torch.inference_mode()
def generate(
    model,
    prompts: list[str],
    seeds: list[int],
    settings: SamplingSettings,
    batch_size: int = 8,
    init_image: torch.Tensor | None = None,
    strength: float = 0.8,
    progress: bool = True,
) -> torch.Tensor:
    """Images in [-1, 1] (float32, CPU, [N, 3, H, W]) for (prompt, seed) pairs, `batch_size` at a time.

    `model` is a zsnr.sampling.InferenceModel. Its schedule (what it was trained with) is kept; the sampler,
    the spacing and phi come from `settings`. `init_image` ([3, H, W] in [-1, 1], the model's resolution) turns
    on image-to-image for every prompt. A seed fixes x_T and, for stochastic samplers (ddpm, euler_ancestral,
    eta > 0), every later draw (one CPU generator per image): an image does not depend on the batch it is in.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"need one seed per prompt, got {len(prompts)} prompts and {len(seeds)} seeds")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches = range(0, len(prompts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"{len(prompts)} images", unit="batch")
    parts = (model.unet, model.autoencoder, model.text_encoder, model.tokenizer, model.schedule)
    out = []
    for i in batches:
        p, s = prompts[i : i + batch_size], seeds[i : i + batch_size]
        if init_image is None:
            images = text_to_image(*parts, p, s, model.resolution, settings, progress=progress)
        else:
            init = init_image.unsqueeze(0).expand(len(p), -1, -1, -1)
            images = image_to_image(*parts, init, p, s, strength, settings, progress=progress)
        out.append(images.cpu())
    return torch.cat(out)


def read_prompts(path: str) -> list[str]:
    """Prompts from a file: .txt (one per non-empty line), .json (a list of strings, or COCO's captions file
    {"annotations": [{"caption": ...}, ...]}, e.g. captions_val2014.json)."""
    import json
    from pathlib import Path

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"prompts file {p} does not exist (.txt, one prompt per line, or .json)")
    if p.suffix == ".json":
        data = json.loads(p.read_text())
        if isinstance(data, dict) and "annotations" in data:
            data = [a["caption"] for a in data["annotations"]]
        if not (isinstance(data, list) and all(isinstance(c, str) for c in data)):
            raise ValueError(
                f"{p}: expected a JSON list of strings or a COCO captions file with 'annotations'"
            )
        prompts = [c.strip() for c in data]
    else:
        prompts = [line.strip() for line in p.read_text().splitlines()]
    prompts = [c for c in prompts if c]
    if not prompts:
        raise ValueError(f"{p} holds no prompts")
    return prompts
