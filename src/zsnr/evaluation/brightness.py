"""Brightness statistics of an image set: what the zero-terminal-SNR fix changes.

An image's brightness is its mean luma (Rec. 601, `zsnr.sampling.mean_brightness`) in [-1, 1] units.
A model with SNR(T) > 0 keeps its outputs near medium brightness (the paper's section 3): narrow spread, few
images below -0.7 (near black) or above +0.7 (near white), and a large Wasserstein distance to the data's
brightness distribution.
"""

from __future__ import annotations

import numpy as np
import torch

from zsnr.sampling import mean_brightness

__all__ = ["brightness_stats", "mean_brightness", "wasserstein_1d"]


def wasserstein_1d(u: np.ndarray | torch.Tensor, v: np.ndarray | torch.Tensor) -> float:
    """Wasserstein-1 distance between two empirical 1-D distributions: the integral of |F_u(x) - F_v(x)| dx,
    with F the empirical CDFs (each sample weighs 1/n). Equals scipy.stats.wasserstein_distance(u, v)."""
    u = np.sort(np.asarray(u, dtype=np.float64).ravel())
    v = np.sort(np.asarray(v, dtype=np.float64).ravel())
    if u.size == 0 or v.size == 0:
        raise ValueError(f"wasserstein_1d needs two non-empty samples, got sizes {u.size} and {v.size}")
    grid = np.sort(np.concatenate([u, v]))
    cdf_u = np.searchsorted(u, grid[:-1], side="right") / u.size
    cdf_v = np.searchsorted(v, grid[:-1], side="right") / v.size
    return float(np.sum(np.abs(cdf_u - cdf_v) * np.diff(grid)))


def brightness_stats(
    brightness: torch.Tensor,
    reference: torch.Tensor | None = None,
    dark: float = -0.7,
    bright: float = 0.7,
    bins: int = 20,
) -> dict:
    """Summary of per-image brightness values (from mean_brightness) in [-1, 1] units.

    Returns mean, std (unbiased), p05 / p95 (linear interpolation, as numpy.percentile), the fraction of
    images below `dark` and above `bright`, a histogram of `bins` equal bins on [-1, 1] (values outside are
    counted in the end bins), and with `reference` the 1-D Wasserstein-1 distance to the reference set's
    brightness and the reference's own mean / std / fractions.
    """
    if not dark < bright:
        raise ValueError(f"brightness thresholds need dark < bright, got dark={dark}, bright={bright}")
    b = torch.as_tensor(brightness, dtype=torch.float64).flatten()
    if b.numel() < 2:
        raise ValueError(f"brightness statistics need at least 2 images, got {b.numel()}")
    counts = torch.histc(b.clamp(-1.0, 1.0), bins=bins, min=-1.0, max=1.0)
    out = {
        "n": b.numel(),
        "mean": b.mean().item(),
        "std": b.std().item(),
        "p05": torch.quantile(b, 0.05).item(),
        "p95": torch.quantile(b, 0.95).item(),
        "dark_threshold": dark,
        "bright_threshold": bright,
        "frac_dark": (b < dark).double().mean().item(),
        "frac_bright": (b > bright).double().mean().item(),
        "histogram": {
            "edges": torch.linspace(-1.0, 1.0, bins + 1, dtype=torch.float64).tolist(),
            "counts": [int(c) for c in counts.tolist()],
        },
    }
    if reference is not None:
        r = torch.as_tensor(reference, dtype=torch.float64).flatten()
        out["wasserstein_to_reference"] = wasserstein_1d(b.numpy(), r.numpy())
        out["reference"] = {
            "n": r.numel(),
            "mean": r.mean().item(),
            "std": r.std().item() if r.numel() > 1 else 0.0,
            "frac_dark": (r < dark).double().mean().item(),
            "frac_bright": (r > bright).double().mean().item(),
        }
    return out
