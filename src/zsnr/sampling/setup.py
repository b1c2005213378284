"""The sampling setup every entry point shares (text-to-image, image-to-image, the x0 trajectory): per-image
generators, x_T, the prompts' text states, the guided denoiser, the timesteps, and the decoder. `prepare`
makes them once; `Setup.sample` / `Setup.img2img` run zsnr.diffusion's sampler on them.

Precision: `SamplingSettings.dtype` float32 runs everything in float32; bfloat16 / float16 run the text encoder,
the UNet and the VAE decoder under torch.autocast (their matmuls and convolutions in half precision, over float32
weights, so the EMA of a training run can be sampled as it is), while the sampler's updates and the guidance
stay in float32 (zsnr.diffusion casts the UNet's output up). tests/integration/test_sample.py bounds the
difference to float32 images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from zsnr.diffusion import cfg, img2img, sample
from zsnr.diffusion.samplers import Callback, ModelFn
from zsnr.models.schedule import Schedule
from zsnr.models.text import Tokenizer
from zsnr.sampling.settings import SamplingSettings

# The VAE decodes this many images at a time, so a large sampling batch (the UNet's) does not set the decoder's
# memory: at 512 px in bf16 it holds 0.72 GiB of activations for one image, 5.1 GiB for 8 (README, Sampling).
DECODE_BATCH = 8
# Rec. 601 luma weights: an image's brightness is the mean of 0.299 R + 0.587 G + 0.114 B.
LUMA = (0.299, 0.587, 0.114)


def mean_brightness(images: torch.Tensor) -> torch.Tensor:
    """Per-image mean luma of RGB images [N, 3, H, W], in the images' own units ([-1, 1] here)."""
    w = torch.tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * w).sum(1).mean(dim=(1, 2))


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


def latent_shape(autoencoder: nn.Module, resolution: int) -> tuple[int, int, int]:
    """The shape of one x_T for images of `resolution` px."""
    size = resolution // autoencoder.downsample
    return (autoencoder.latent_channels, size, size)


@dataclass
class Setup:
    """What a sampling run needs besides the image it starts from: made by `prepare`."""

    model_fn: ModelFn  # the guided denoiser
    x_T: torch.Tensor  # one start per seed (image-to-image: the noise added to the init image)
    generators: list[torch.Generator]  # one per image, for every later draw
    alphas_cumprod: torch.Tensor  # on the UNet's device
    timesteps: torch.Tensor
    settings: SamplingSettings
    prediction_type: str
    progress: bool = False

    def sample(self, callback: Callback | None = None) -> torch.Tensor:
        """x0 sampled from x_T (zsnr.diffusion.sample); `callback` gets each step's dict."""
        run = partial(sample, self.model_fn, self.x_T, self.alphas_cumprod, self.timesteps, **self._options())
        return self._run(run, callback, total=len(self.timesteps))

    def img2img(self, x0: torch.Tensor, strength: float, callback: Callback | None = None) -> torch.Tensor:
        """x0 sampled from `x0` noised with x_T to the timestep `strength` selects (zsnr.diffusion.img2img)."""
        run = partial(img2img, self.model_fn, x0, self.alphas_cumprod, self.timesteps, strength, noise=self.x_T,
                      **self._options())  # fmt: skip
        return self._run(run, callback, total=None)

    def _options(self) -> dict:
        s = self.settings
        return {"sampler": s.sampler, "prediction_type": self.prediction_type, "eta": s.eta,
                "generator": self.generators}  # fmt: skip

    def _run(
        self, run: Callable[..., torch.Tensor], callback: Callback | None, total: int | None
    ) -> torch.Tensor:
        """run(callback=callback), with a progress bar advanced by the sampler's callback when asked for."""
        if not self.progress:
            return run(callback=callback)
        from tqdm.auto import tqdm  # optional, kept out of the import path of the library

        desc = f"{self.settings.sampler} S={self.settings.num_steps}"
        with tqdm(total=total, desc=desc, leave=False) as bar:

            def advance(info: dict) -> None:
                bar.update()
                if callback is not None:
                    callback(info)

            return run(callback=advance)


def prepare(
    unet: nn.Module,
    text_encoder: nn.Module,
    tokenizer: Tokenizer,
    schedule: Schedule,
    prompts: list[str],
    seeds: list[int],
    shape: tuple[int, ...],
    settings: SamplingSettings,
    progress: bool = False,
) -> Setup:
    """The setup for one image per (prompt, seed) pair with latents of `shape`; call it under
    autocast(device, settings.torch_dtype), as the text encoder runs here."""
    if len(prompts) != len(seeds):
        raise ValueError(f"need one seed per prompt, got {len(prompts)} prompts and {len(seeds)} seeds")
    device = next(unet.parameters()).device
    generators = image_generators(seeds)
    x_T = initial_noise(generators, shape, device)
    pos, neg = prompt_states(text_encoder, tokenizer, prompts, settings.negative_prompt, device)
    return Setup(
        model_fn=guided_denoiser(unet, pos, neg, settings.guidance_scale, settings.guidance_rescale),
        x_T=x_T,
        generators=generators,
        alphas_cumprod=schedule.alphas_cumprod().to(device),
        timesteps=settings.timesteps(schedule),
        settings=settings,
        prediction_type=schedule.prediction_type,
        progress=progress,
    )
