"""The noise schedule and parameterisation a model is trained and sampled with (a `diffusion=` config).

It is part of a model's saved configuration: a checkpoint samples with the schedule it was trained with.
The maths lives in `zsnr.diffusion`; this only records the choices and hands out tensors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from zsnr.diffusion import (
    alphas_cumprod,
    make_betas,
    rescale_zero_terminal_snr,
    select_timesteps,
    shift_snr,
)


@dataclass(frozen=True)
class Schedule:
    betas: str = "scaled_linear"  # zsnr.diffusion.make_betas kind
    num_timesteps: int = 1000
    snr_shift: float = 1.0  # SNR(t) x this (zsnr.diffusion.shift_snr): the schedule for another image size
    rescale_zero_terminal_snr: bool = True  # fix 1 (after the shift)
    prediction_type: str = "v_prediction"  # fix 2 (with loss_weighting "plain": the v-loss)
    loss_weighting: str = "plain"  # or "min_snr" (zsnr.diffusion.loss_weights)
    min_snr_gamma: float = 5.0
    offset_noise: float = 0.0  # the older workaround: eps + offset * N(0, 1) per sample and channel
    spacing: str = "trailing"  # fix 3: which S of the T timesteps a sampler visits
    sampler: str = "ddim"
    guidance_rescale: float = 0.7  # fix 4: default phi for sampling with CFG

    def make_betas(self) -> torch.Tensor:
        """float64 [T]."""
        betas = shift_snr(make_betas(self.betas, self.num_timesteps), self.snr_shift)
        return rescale_zero_terminal_snr(betas) if self.rescale_zero_terminal_snr else betas

    def alphas_cumprod(self) -> torch.Tensor:
        """float64 [T]."""
        return alphas_cumprod(self.make_betas())

    def timesteps(self, num_steps: int, start: int | None = None) -> torch.Tensor:
        """The descending timesteps a sampler with `num_steps` steps visits (the first capped at `start`)."""
        return select_timesteps(self.num_timesteps, num_steps, self.spacing, start)

    def to_dict(self) -> dict:
        return asdict(self)
