"""Forward process and the conversions between model outputs: epsilon, sample (x0) and v_prediction.

Notation: a = abar_t, x_t = sqrt(a) x0 + sqrt(1 - a) eps, v = sqrt(a) eps - sqrt(1 - a) x0.
``abar`` is a per-sample tensor of shape [B] (or a scalar); it is broadcast over the other dims of x.
The v forms need no division (the paper's eq. 17 and 19), so they hold at a = 0 (zero terminal SNR) and
a = 1. The epsilon and sample forms must divide by sqrt(a) or sqrt(1 - a); those denominators are clamped
to ``TINY`` so the result is finite, and the docstrings say where the value carries no information.
"""

from __future__ import annotations

import torch

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TINY = 1e-12


def _coeffs(abar: torch.Tensor | float, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(a) and sqrt(1 - a), computed in float64, shaped [B, 1, ..., 1] and cast to like's dtype."""
    a = torch.as_tensor(abar, dtype=torch.float64, device=like.device)
    if a.ndim == 1:
        a = a.reshape(-1, *([1] * (like.ndim - 1)))
    a = a.clamp(0.0, 1.0)
    return a.sqrt().to(like.dtype), (1.0 - a).sqrt().to(like.dtype)


def check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; valid: {', '.join(PREDICTION_TYPES)}")


def add_noise(x0: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor | float) -> torch.Tensor:
    r"""Forward process q(x_t | x0): $x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon$."""
    sa, s1a = _coeffs(abar, x0)
    return sa * x0 + s1a * noise


def v_target(x0: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor | float) -> torch.Tensor:
    r"""The v-prediction target (paper section 3.2): $v_t = \sqrt{\bar\alpha_t}\, \epsilon - \sqrt{1 - \bar\alpha_t}\, x_0$.

    At zero terminal SNR (abar_T = 0) it equals -x0, so the model learns the data mean there.
    """
    sa, s1a = _coeffs(abar, x0)
    return sa * noise - s1a * x0


def predict_x0_eps(
    output: torch.Tensor, x_t: torch.Tensor, abar: torch.Tensor | float, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""(x0, eps) implied by a model output at x_t (a = abar_t).

    - v_prediction (eq. 17, 19): $x_0 = \sqrt{a}\, x_t - \sqrt{1 - a}\, v$, $\epsilon = \sqrt{a}\, v + \sqrt{1 - a}\, x_t$.
      Division-free: exact at a = 0 and a = 1.
    - epsilon: x0 = (x_t - sqrt(1 - a) eps) / sqrt(a). At a = 0 x_t holds no signal and x0 is not
      identifiable: the clamped division returns a finite but meaningless value (samplers refuse this case).
    - sample: eps = (x_t - sqrt(a) x0) / sqrt(1 - a); at a = 1 eps is not identifiable (same treatment).
    """
    check_prediction_type(prediction_type)
    sa, s1a = _coeffs(abar, x_t)
    if prediction_type == "v_prediction":
        return sa * x_t - s1a * output, sa * output + s1a * x_t
    if prediction_type == "epsilon":
        return (x_t - s1a * output) / sa.clamp_min(TINY), output
    return output, (x_t - sa * output) / s1a.clamp_min(TINY)


def convert(
    output: torch.Tensor, x_t: torch.Tensor, abar: torch.Tensor | float, src: str, dst: str
) -> torch.Tensor:
    """Convert a model output from one parameterisation to another (v = sqrt(a) eps - sqrt(1 - a) x0)."""
    check_prediction_type(dst)
    if src == dst:
        check_prediction_type(src)
        return output
    x0, eps = predict_x0_eps(output, x_t, abar, src)
    if dst == "sample":
        return x0
    if dst == "epsilon":
        return eps
    return v_target(x0, eps, abar)
