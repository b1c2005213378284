"""Classifier-free guidance with the paper's rescale (Algorithm 2)."""

from __future__ import annotations

import torch


def cfg(pos: torch.Tensor, neg: torch.Tensor, scale: float, rescale: float = 0.0) -> torch.Tensor:
    r"""Guided prediction, optionally rescaled (the paper's Algorithm 2, w = scale, phi = rescale).

    $$x_\text{cfg} = x_\text{neg} + w\,(x_\text{pos} - x_\text{neg}), \qquad
    x_\text{final} = \phi\, x_\text{cfg}\,\frac{\sigma_\text{pos}}{\sigma_\text{cfg}} + (1 - \phi)\, x_\text{cfg}$$

    with sigma_pos = std(x_pos), sigma_cfg = std(x_cfg), per sample over all non-batch dims. phi = 0 is plain CFG; the paper uses w = 7.5, phi = 0.7. Computed in float32 at least.
    """
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"guidance rescale (phi) must be in [0, 1], got {rescale}")
    dtype = torch.promote_types(pos.dtype, torch.float32)
    pos, neg = pos.to(dtype), neg.to(dtype)
    x_cfg = neg + scale * (pos - neg)
    if rescale == 0.0:
        return x_cfg
    dims = list(range(1, pos.ndim))
    std_pos = pos.std(dim=dims, keepdim=True)
    std_cfg = x_cfg.std(dim=dims, keepdim=True)
    factor = rescale * std_pos / std_cfg.clamp_min(1e-12) + (1.0 - rescale)
    return x_cfg * factor
