"""Brightness statistics against numpy / scipy and hand-computed values."""

import numpy as np
import pytest
import scipy.stats
import torch

from zsnr.data import to_model_range
from zsnr.evaluation.brightness import brightness_stats, mean_brightness, wasserstein_1d
from zsnr.evaluation.images import to_uint8


@pytest.mark.parametrize("sizes", [(7, 7), (50, 13), (1, 40)])
def test_wasserstein_matches_scipy(sizes):
    rng = np.random.default_rng(sum(sizes))
    u = rng.normal(0.2, 0.5, sizes[0])
    v = rng.uniform(-1, 1, sizes[1])
    assert wasserstein_1d(u, v) == pytest.approx(scipy.stats.wasserstein_distance(u, v), rel=1e-12, abs=1e-15)


def test_wasserstein_closed_forms():
    u = np.array([-0.5, 0.1, 0.3])
    assert wasserstein_1d(u, u + 0.25) == pytest.approx(0.25)  # a shift moves every quantile by 0.25
    assert wasserstein_1d(u, u) == 0.0
    assert wasserstein_1d([0.0], [1.0, -1.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="non-empty"):
        wasserstein_1d([], [1.0])


def test_stats_match_numpy():
    rng = np.random.default_rng(0)
    b = np.clip(rng.normal(0.0, 0.6, 101), -1, 1)
    ref = rng.uniform(-1, 1, 37)
    s = brightness_stats(torch.from_numpy(b), torch.from_numpy(ref), dark=-0.7, bright=0.5, bins=8)
    assert s["mean"] == pytest.approx(b.mean()) and s["std"] == pytest.approx(b.std(ddof=1))
    assert s["p05"] == pytest.approx(np.percentile(b, 5)) and s["p95"] == pytest.approx(np.percentile(b, 95))
    assert s["frac_dark"] == pytest.approx((b < -0.7).mean()) and s["frac_bright"] == pytest.approx(
        (b > 0.5).mean()
    )
    counts, edges = np.histogram(b, bins=8, range=(-1, 1))
    assert s["histogram"]["counts"] == counts.tolist()
    np.testing.assert_allclose(s["histogram"]["edges"], edges)
    assert s["wasserstein_to_reference"] == pytest.approx(scipy.stats.wasserstein_distance(b, ref))
    assert s["reference"]["mean"] == pytest.approx(ref.mean()) and s["reference"]["n"] == 37
    with pytest.raises(ValueError, match="dark < bright"):
        brightness_stats(torch.from_numpy(b), dark=0.5, bright=0.5)


def test_mean_brightness_is_rec601_luma_and_survives_png_rounding():
    rgb = torch.tensor([1.0, -1.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert mean_brightness(rgb).item() == pytest.approx(0.299 - 0.587)
    black = -torch.ones(2, 3, 8, 8)
    assert to_uint8(black).max() == 0 and mean_brightness(to_model_range(to_uint8(black))).tolist() == [
        -1,
        -1,
    ]
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    assert (to_model_range(to_uint8(x)) - x).abs().max() <= 1 / 127.5 / 2 + 1e-6
