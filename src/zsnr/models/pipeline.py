"""Text-to-image with classifier-free guidance (rescaled, the paper's Algorithm 2) on any zsnr model parts.

Precision: `dtype` float32 runs everything in float32; bfloat16 / float16 run the text encoder, the UNet and
the VAE decoder under torch.autocast (their matmuls and convolutions in half precision, over float32 weights,
so the EMA of a training run can be sampled as it is), while the sampler's updates and the guidance stay in
float32 (zsnr.diffusion casts the UNet's output up). tests/integration/test_sample.py bounds the difference
to float32 images.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from zsnr.diffusion import cfg, sample
from zsnr.models.schedule import Schedule
from zsnr.models.text import Tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The VAE decodes this many images at a time, so a large sampling batch (the UNet's) does not set the decoder's
# memory: at 512 px in bf16 it holds 0.72 GiB of activations for one image, 5.1 GiB for 8 (README, Sampling).
DECODE_BATCH = 8
# Rec. 601 luma weights: an image's brightness is the mean of 0.299 R + 0.587 G + 0.114 B.
LUMA = (0.299, 0.587, 0.114)


def mean_brightness(images: torch.Tensor) -> torch.Tensor:
    """Per-image mean luma of RGB images [N, 3, H, W], in the images' own units ([-1, 1] here)."""
    w = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * w).sum(1).mean(dim=(1, 2))


def resolve_dtype(name: str, device: torch.device | str) -> str:
    """The compute dtype's name (a DTYPES key) for a config value: "auto" is bfloat16 on CUDA (tensor cores;
    float32's exponent range, so nothing overflows in the VAE) and float32 elsewhere (bf16 autocast ran ~10x
    slower than float32 on the tiny model on a CPU without bf16 units)."""
    if name == "auto":
        return "bfloat16" if torch.device(device).type == "cuda" else "float32"
    if name not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {name!r}")
    return name


@contextlib.contextmanager
def autocast(device: torch.device | str, dtype: torch.dtype) -> Iterator[None]:
    """torch.autocast to `dtype` on `device`'s type; float32 turns it off (and any autocast around it)."""
    with torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32):
        yield


def prompt_states(
    text_encoder: nn.Module, tokenizer: Tokenizer, prompts: list[str], negative_prompt: str, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text states of the prompts and of the negative prompt (one row per prompt): CFG's two branches. The
    negative prompt is encoded once for the batch (diffusers' pipeline encodes one copy per prompt)."""
    pos = text_encoder(tokenizer(prompts).to(device))
    neg = text_encoder(tokenizer([negative_prompt]).to(device)).expand_as(pos)
    return pos, neg


def decode_images(autoencoder: nn.Module, x0: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (float32) from x0, DECODE_BATCH at a time, in the autoencoder's weight dtype."""
    x0 = x0.to(next(autoencoder.parameters(), x0).dtype)
    parts = [autoencoder.decode(chunk).float() for chunk in x0.split(DECODE_BATCH)]
    return torch.cat(parts).clamp(-1, 1)


def image_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per image, seeded with its seed: x_T is its first draw, then every draw a stochastic
    sampler makes for that image, so an image depends on its seed alone, on any device and in any batch."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def initial_noise(
    generators: list[torch.Generator], shape: tuple[int, ...], device: torch.device | str
) -> torch.Tensor:
    """x_T, one image per generator (image_generators), drawn on the CPU: the same start on every device."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


def guided_denoiser(
    unet: nn.Module, pos: torch.Tensor, neg: torch.Tensor, guidance_scale: float, guidance_rescale: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """model_fn(x, t) for zsnr.diffusion's samplers: one batched UNet call on [x, x] with [pos, neg] text
    states, combined by cfg(pos, neg, w, phi); with w = 1 only the conditional pass runs."""
    both = torch.cat([pos, neg]) if guidance_scale != 1.0 else pos  # once, not at every step

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if guidance_scale == 1.0:
            return unet(x, t, encoder_hidden_states=pos).sample
        out = unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=both).sample
        out_pos, out_neg = out.chunk(2)
        return cfg(out_pos, out_neg, guidance_scale, guidance_rescale)

    return model_fn


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
    num_steps: int = 25,
    guidance_scale: float = 7.5,
    guidance_rescale: float | None = None,
    negative_prompt: str = "",
    sampler: str | None = None,
    eta: float | None = None,
    progress: bool = False,
    dtype: torch.dtype = torch.float32,
    start_timestep: int | None = None,
) -> torch.Tensor:
    """One image per (prompt, seed) pair; returns images in [-1, 1] (float32, [N, 3, H, W]).

    `guidance_rescale` (phi) and `sampler` default to the schedule's; guidance_scale 1 skips the negative pass.
    `dtype`: the compute dtype of the networks (see the module's docstring).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"need one seed per prompt, got {len(prompts)} prompts and {len(seeds)} seeds")
    device = next(unet.parameters()).device
    phi = schedule.guidance_rescale if guidance_rescale is None else guidance_rescale
    size = resolution // autoencoder.downsample
    generators = image_generators(seeds)
    x_T = initial_noise(generators, (autoencoder.latent_channels, size, size), device)
    with autocast(device, dtype):
        pos, neg = prompt_states(text_encoder, tokenizer, prompts, negative_prompt, device)
        x0 = sample(
            guided_denoiser(unet, pos, neg, guidance_scale, phi),
            x_T,
            schedule.alphas_cumprod().to(device),
            schedule.timesteps(num_steps, start_timestep),
            sampler=sampler or schedule.sampler,
            prediction_type=schedule.prediction_type,
            eta=eta,
            generator=generators,
            progress=progress,
        )
        return decode_images(autoencoder, x0)
