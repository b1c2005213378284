"""`make paper`'s measures (zsnr.experiments.paper_measures) against closed forms and against the sampling code itself."""

import pytest
import torch
from tiny_checkpoint import shared_tiny_checkpoint

from zsnr.experiments.paper_measures import saturated_fraction, spread_at_T, x0_trajectory
from zsnr.sampling import SamplingSettings, generate, load_for_inference


def test_spread_at_T_closed_form():
    # 2 prompts x 3 seeds of constant images: prompt p is 0.5 * (2p - 1) (-0.5, +0.5), seed s adds 0.1 * (s - 1)
    values = torch.tensor([0.5 * (2 * p - 1) + 0.1 * (s - 1) for p in range(2) for s in range(3)])
    first = values.view(6, 1, 1, 1).expand(6, 3, 4, 4)
    out = spread_at_T(first, num_prompts=2)
    assert out["across_noise"] == pytest.approx(0.1)  # std of (-0.1, 0, 0.1), unbiased
    assert out["across_prompts"] == pytest.approx(2**0.5 * 0.5)  # std of (-0.5, +0.5), unbiased
    assert out["ratio"] == pytest.approx(0.1 / (2**0.5 * 0.5))


def test_saturated_fraction_counts_both_ends():
    images = torch.tensor([0, 3, 4, 128, 251, 252, 255, 200], dtype=torch.uint8).view(1, 1, 2, 4)
    assert saturated_fraction(images) == pytest.approx(4 / 8)  # 0, 3, 252, 255
    with pytest.raises(ValueError, match="uint8"):
        saturated_fraction(images.float())


def test_x0_trajectory_ends_at_the_sampled_image(tmp_path_factory):
    """DDIM (eta 0) ends with x = x0 predicted at its last step: the trajectory's last entry is the image the
    sampler returns, for the same prompts, seeds and guidance."""
    model = load_for_inference(shared_tiny_checkpoint(tmp_path_factory))
    settings = SamplingSettings(num_steps=4, guidance_scale=3.0, guidance_rescale=0.7)
    prompts, seeds = ["a black background", "a red circle"], [3, 5]
    x0 = x0_trajectory(model, prompts, seeds, settings)
    assert x0.shape == (4, 2, 3, 32, 32)
    images = generate(model, prompts, seeds, settings, progress=False)
    torch.testing.assert_close(x0[-1], images, atol=1e-5, rtol=0)
    assert not torch.allclose(x0[0], x0[-1], atol=1e-3)  # the prediction moves along the steps
