"""Per-sample loss weights lambda_t for the diffusion MSE, finite at SNR 0 and SNR inf."""

from __future__ import annotations

import torch

from .parameterization import check_prediction_type

WEIGHTINGS = ("plain", "min_snr", "min_snr_plus_one")


def loss_weights(
    snr: torch.Tensor, prediction_type: str, scheme: str = "plain", gamma: float = 5.0
) -> torch.Tensor:
    """Weights for ||target - prediction||^2 in the model's own parameterisation.

    ``plain``: lambda_t = 1 (the paper trains v-prediction with plain v-loss).
    ``min_snr`` (Hang et al. 2023): the x0-space weight min(SNR, gamma), moved into the model's space:
      - sample:        min(SNR, gamma)
      - epsilon:       min(SNR, gamma) / SNR      = min(1, gamma / SNR)
      - v_prediction:  min(SNR, gamma) / (SNR + 1) = min(SNR / (SNR + 1), gamma / (SNR + 1))
    written so that SNR = 0 and SNR = inf give finite values (no 0/0, no inf/inf; cf. diffusers #5096,
    sd-scripts #673). With v-prediction that weight is exactly 0 at SNR = 0: under zero terminal SNR the
    step t = T, the one the fix exists for, is never trained (sd-scripts #673: a zero-SNR model that stopped
    learning pure black).
    ``min_snr_plus_one`` (diffusers' train_text_to_image for v-prediction: "add one to SNR"): the x0-space
    weight min(SNR + 1, gamma), i.e. min(SNR + 1, gamma) / (SNR + 1) for v (1 at SNR = 0 when gamma >= 1,
    -> 0 at SNR = inf) and min(SNR + 1, gamma) for x0. It keeps t = T trained: the variant to use with zero
    terminal SNR. Not for epsilon, whose error carries no x0 signal at SNR = 0 whatever the weight.
    ``snr`` must come from the schedule actually trained with (the rescaled one): weights from the
    un-rescaled SNR are a known bug (sd-scripts #934).
    """
    check_prediction_type(prediction_type)
    s = snr.to(torch.float64)
    if scheme == "plain":
        return torch.ones_like(s)
    if scheme not in WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {scheme!r}; valid: {', '.join(WEIGHTINGS)}")
    if not gamma > 0:
        raise ValueError(f"min_snr gamma must be > 0, got {gamma}")
    g = torch.full_like(s, gamma)
    if scheme == "min_snr_plus_one":
        if prediction_type == "epsilon":
            raise ValueError("min_snr_plus_one is for v_prediction or sample; with epsilon use min_snr")
        x0_weight = torch.minimum(s + 1.0, g)
        if prediction_type == "sample":
            return x0_weight
        return torch.where(torch.isinf(s), torch.zeros_like(s), x0_weight / (s + 1.0))  # gamma / inf = 0
    if prediction_type == "sample":
        return torch.minimum(s, g)
    if prediction_type == "epsilon":
        return torch.minimum(torch.ones_like(s), g / s)  # gamma / 0 = inf -> 1; gamma / inf = 0
    return torch.minimum(1.0 / (1.0 + 1.0 / s), g / (s + 1.0))  # 1/(1 + 1/0) = 0, 1/(1 + 0) = 1
