"""Autoencoders between images in [-1, 1] and the diffusion space the UNet works in.

Both classes share one small interface, in the diffusion space (already multiplied by `scaling_factor`):
`posterior(images) -> (mean, std)`, `encode(images) -> mean`, `decode(x0) -> images`, and `latent_channels` /
`downsample`. Training draws x0 = mean + std * eps (`sample_posterior`) with each step's generator, as Stable
Diffusion was trained (a fresh posterior sample every step); img2img starts from the mean.

- `KLAutoencoder` wraps diffusers' `AutoencoderKL` (SD 2.x: 4 channels, 8x down, scaling factor 0.18215).
- `IdentityAutoencoder` is pixel space: no weights, scaling factor 1. With `patch_size` p > 1 it folds p x p
  pixel patches into channels (`pixel_unshuffle`), a permutation of the pixels, so Gaussian noise there is
  Gaussian noise on the pixels and the diffusion is still exactly pixel-space diffusion, only the UNet sees
  fewer, wider positions (cheap on a CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zsnr.models.sd21 import SD_SCALING_FACTOR


def sample_posterior(
    mean: torch.Tensor, std: torch.Tensor | None, generator: torch.Generator | None
) -> torch.Tensor:
    """x0 = mean + std * eps, eps ~ N(0, I) from `generator` (float32); the mean itself where std is None."""
    if std is None:
        return mean.float()
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=torch.float32)
    return mean.float() + std.float() * noise


class IdentityAutoencoder(nn.Module):
    scaling_factor = 1.0

    def __init__(self, channels: int = 3, patch_size: int = 1) -> None:
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.channels = channels
        self.patch_size = patch_size

    @property
    def latent_channels(self) -> int:
        return self.channels * self.patch_size**2

    @property
    def downsample(self) -> int:
        return self.patch_size

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.encode(images), None  # no noise: pixel space is exact

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images, self.patch_size) if self.patch_size > 1 else images

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(x0, self.patch_size) if self.patch_size > 1 else x0


class KLAutoencoder(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae  # diffusers AutoencoderKL, kept reachable for export

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def posterior(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.vae.encode(images).latent_dist  # log-variance clamped to [-30, 20] by diffusers
        return dist.mean * self.scaling_factor, dist.std * self.scaling_factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images).latent_dist.mean * self.scaling_factor

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(x0 / self.scaling_factor).sample


def tiny_kl_autoencoder(
    block_out_channels: tuple[int, ...] = (16, 32), latent_channels: int = 4
) -> KLAutoencoder:
    """A randomly initialised AutoencoderKL with SD's layout, small enough for CPU tests."""
    from diffusers import AutoencoderKL

    n = len(block_out_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=min(8, block_out_channels[0]),
        scaling_factor=SD_SCALING_FACTOR,
    )
    return KLAutoencoder(vae)
