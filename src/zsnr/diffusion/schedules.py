"""Noise schedules (betas), the zero-terminal-SNR rescale (Algorithm 1) and SNR.

Everything is computed in float64; cast to float32 at the point of use.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "scaled_linear", "cosine", "cosine_unclipped")


def make_betas(kind: str, num_timesteps: int = 1000) -> torch.Tensor:
    """Betas of a named schedule, float64, shape [T].

    - ``linear`` (DDPM): beta linear from 1e-4 to 0.02. Paper Table 1: SNR(T) = 4.035993e-05.
    - ``scaled_linear`` (Stable Diffusion): beta = linspace(sqrt(0.00085), sqrt(0.012), T)^2.
      sqrt(abar_T) = 0.068265, SNR(T) = 4.6819e-03 (Table 1 prints 4.928220e-03 for SNR(T), which its own
      sqrt(abar_T) column contradicts: 0.068265^2 / (1 - 0.068265^2) = 4.6819e-03).
    - ``cosine`` (iDDPM): abar(t) = f(t)/f(0), f(t) = cos^2(((t/T) + s)/(1 + s) * pi/2), s = 0.008,
      beta_t = min(1 - abar(t)/abar(t-1), 0.999). SNR(T) = 2.4288e-09.
    - ``cosine_unclipped``: the same without the 0.999 clip, so beta_T = 1 and SNR(T) = 0 (the paper's
      fix for cosine: no rescale needed).
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    T = num_timesteps
    if kind == "linear":
        return torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float64) ** 2
    if kind in ("cosine", "cosine_unclipped"):
        s = 0.008
        t = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        f[-1] = 0.0  # cos(pi/2) is 6e-17 in floating point; the schedule's own value is exactly 0
        betas = 1 - f[1:] / f[:-1]
        return betas.clamp(0.0, 0.999) if kind == "cosine" else betas.clamp(0.0, 1.0)
    raise ValueError(f"unknown schedule kind {kind!r}; valid kinds: {', '.join(SCHEDULES)}")


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    r"""$\bar\alpha_t = \prod_{s \le t} (1 - \beta_s)$, computed in float64."""
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    r"""$\mathrm{SNR}(t) = \bar\alpha_t / (1 - \bar\alpha_t)$; 0 where abar_t = 0, inf where abar_t = 1."""
    a = alphas_cumprod.to(torch.float64)
    return a / (1.0 - a)


def shift_snr(betas: torch.Tensor, factor: float) -> torch.Tensor:
    r"""Multiply SNR(t) by `factor` at every t (float64): the same schedule for images of another size.

    $$\mathrm{SNR}'(t) = k\, \mathrm{SNR}(t) \iff \bar\alpha'_t = \frac{k\, \bar\alpha_t}{1 + (k - 1)\, \bar\alpha_t}, \qquad k = \text{factor}$$

    What a noise level hides depends on how many pixels share a frequency: the image mean of n pixels per
    channel is seen at SNR n * SNR(t). Hoogeboom et al. ("simple diffusion", arXiv 2301.11093) shift a
    schedule made for d0 px to d px by factor (d0 / d)^2 so the low frequencies keep their SNR. Stable
    Diffusion's SNR(T) = 0.0047 is that of 64 x 64 latents: 16 x 16 pixels see SD's terminal SNR of the image
    mean at factor 16 (the paper's section 3.1 leak, at the strength SD has it). factor 1 returns `betas`.
    """
    if not factor > 0:
        raise ValueError(f"the SNR shift factor must be > 0, got {factor}")
    if factor == 1:
        return betas.to(torch.float64)
    a = alphas_cumprod(betas)
    a = factor * a / (1.0 + (factor - 1.0) * a)
    return 1.0 - torch.cat([a[:1], a[1:] / a[:-1]])


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    r"""Rescale a schedule so that SNR(T) = 0 (the paper's Algorithm 1), float64.

    In sqrt(abar) space: keep sqrt(abar_1), shift so sqrt(abar_T) = 0, scale so sqrt(abar_1) is unchanged:

    $$s_t = \sqrt{\bar\alpha_t}, \qquad s'_t = (s_t - s_T)\, \frac{s_1}{s_1 - s_T}, \qquad
    \bar\alpha'_t = s_t'^2, \qquad \beta'_t = 1 - \frac{\bar\alpha'_t}{\bar\alpha'_{t-1}} \;(\beta'_1 = 1 - \bar\alpha'_1)$$

    so beta'_T = 1.
    """
    s = alphas_cumprod(betas).sqrt()
    s0, sT = s[0].clone(), s[-1].clone()
    if not s0 > sT:
        raise ValueError(f"schedule must decrease: sqrt(abar_1)={s0.item()} <= sqrt(abar_T)={sT.item()}")
    s = (s - sT) * s0 / (s0 - sT)
    abar = s**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas
