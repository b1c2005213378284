"""Generate images from a loaded checkpoint in batches: text-to-image and image-to-image, both with rescaled CFG.

`generate(model, prompts, seeds, settings, ...)` is what launch/sample.py and launch/evaluate.py run.
Text-to-image is `zsnr.models.pipeline.text_to_image`; image-to-image (SDEdit: noise the init image to the
timestep `strength` selects, then denoise) is `image_to_image` below, which diffusers' SD img2img pipeline
lacks with guidance rescale. The paper's defaults: DDIM, 50 steps, trailing, w = 7.5, phi = 0.7.
`SamplingSettings.dtype` picks float32 or half-precision autocast (zsnr.models.pipeline).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from zsnr.diffusion import SAMPLERS, SPACINGS, img2img
from zsnr.models.pipeline import (
    DTYPES,
    autocast,
    decode_images,
    guided_denoiser,
    image_generators,
    initial_noise,
    prompt_states,
    resolve_dtype,
    text_to_image,
)
from zsnr.models.schedule import Schedule
from zsnr.models.text import Tokenizer


@dataclass(frozen=True)
class SamplingSettings:
    sampler: str = "ddim"
    num_steps: int = 50
    spacing: str = "trailing"
    eta: float | None = None  # None: the sampler's default (0 for ddim, 1 for euler_ancestral)
    guidance_scale: float = 7.5  # w; 1 turns classifier-free guidance off
    guidance_rescale: float = 0.7  # phi (Algorithm 2); 0 is plain CFG
    negative_prompt: str = ""
    dtype: str = "float32"  # the networks' compute dtype: float32, or bfloat16 / float16 autocast
    start_timestep: int | None = None  # cap on the first timestep (select_timesteps' start)

    def __post_init__(self) -> None:
        """Fail on a bad option before any model loads."""
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"spacing must be one of {SPACINGS}, got {self.spacing!r}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if not 0.0 <= self.guidance_rescale <= 1.0:
            raise ValueError(f"guidance.rescale (phi) must be in [0, 1], got {self.guidance_rescale}")
        if self.dtype not in DTYPES:
            raise ValueError(
                f"dtype must be one of {sorted(DTYPES)} (or auto in a config), got {self.dtype!r}"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_options(cls, options: Mapping[str, Any], device: torch.device | str) -> SamplingSettings:
        """From configs/sample.yaml's and configs/evaluate.yaml's keys (guidance.scale / guidance.rescale);
        dtype "auto" becomes bfloat16 on CUDA, float32 elsewhere (what `device` is)."""
        return cls(
            sampler=options["sampler"],
            num_steps=int(options["num_steps"]),
            spacing=options["spacing"],
            eta=options["eta"],
            guidance_scale=float(options["guidance"]["scale"]),
            guidance_rescale=float(options["guidance"]["rescale"]),
            negative_prompt=options["negative_prompt"],
            dtype=resolve_dtype(options["dtype"], device),
        )


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
    generators = image_generators(seeds)
    with autocast(device, settings.torch_dtype):
        pos, neg = prompt_states(text_encoder, tokenizer, prompts, settings.negative_prompt, device)
        x0 = autoencoder.encode(init_images.to(device, ae_dtype)).float()
        noise = initial_noise(generators, tuple(x0.shape[1:]), device)
        out = img2img(
            guided_denoiser(unet, pos, neg, settings.guidance_scale, settings.guidance_rescale),
            x0,
            schedule.alphas_cumprod().to(device),
            schedule.timesteps(settings.num_steps, settings.start_timestep),
            strength,
            noise=noise,
            generator=generators,
            sampler=settings.sampler,
            prediction_type=schedule.prediction_type,
            eta=settings.eta,
            progress=progress,
        )
        return decode_images(autoencoder, out)


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

    `model` is a zsnr.training.InferenceModel. Its schedule (what it was trained with) is kept; the sampler
    and the spacing come from `settings`. `init_image` ([3, H, W] in [-1, 1], the model's resolution) turns
    on image-to-image for every prompt. A seed fixes x_T and, for stochastic samplers (ddpm, euler_ancestral,
    eta > 0), every later draw (one CPU generator per image): an image does not depend on the batch it is in.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"need one seed per prompt, got {len(prompts)} prompts and {len(seeds)} seeds")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    schedule = replace(model.schedule, sampler=settings.sampler, spacing=settings.spacing)
    batches = range(0, len(prompts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"{len(prompts)} images", unit="batch")
    out = []
    for i in batches:
        p, s = prompts[i : i + batch_size], seeds[i : i + batch_size]
        if init_image is None:
            images = text_to_image(
                model.unet, model.autoencoder, model.text_encoder, model.tokenizer, schedule, p, s,
                model.resolution, num_steps=settings.num_steps, guidance_scale=settings.guidance_scale,
                guidance_rescale=settings.guidance_rescale, negative_prompt=settings.negative_prompt,
                sampler=settings.sampler, eta=settings.eta, progress=progress, dtype=settings.torch_dtype,
                start_timestep=settings.start_timestep,
            )  # fmt: skip
        else:
            init = init_image.unsqueeze(0).expand(len(p), -1, -1, -1)
            images = image_to_image(
                model.unet, model.autoencoder, model.text_encoder, model.tokenizer, schedule, init, p, s,
                strength, settings, progress=progress,
            )  # fmt: skip
        out.append(images.cpu())
    return torch.cat(out)


def resolve_device(device: str) -> torch.device:
    """The torch device for a config value; "auto" is the GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
