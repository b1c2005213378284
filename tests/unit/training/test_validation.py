"""The validation loss: fixed timesteps with T - 1 among them, and the loss against its closed form."""

import math

import pytest
import torch
from training_helpers import TINY_SPEC, ZERO_SNR

from zsnr.training import DiffusionModule, fixed_timesteps


def test_fixed_timesteps_take_each_buckets_last_so_t_minus_one_is_there():
    assert fixed_timesteps(1000, 10) == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert fixed_timesteps(1000, 1) == [999]
    with pytest.raises(ValueError, match="validation buckets"):
        fixed_timesteps(1000, 0)


def test_fixed_timestep_losses_are_the_v_loss_of_the_closed_form():
    module = DiffusionModule(TINY_SPEC, ZERO_SNR)
    g = torch.Generator().manual_seed(3)
    batches = [
        {"latent_mean": torch.randn(2, 4, 16, 16, generator=g), "latent_std": torch.rand(2, 4, 16, 16, generator=g),
         "text_states": torch.randn(2, 77, 32, generator=g)}
        for _ in range(2)
    ]  # fmt: skip
    timesteps = [999, 500, 0]
    sums, counts = module.fixed_timestep_losses(batches, timesteps, seed=7)
    assert counts.tolist() == [4.0, 4.0, 4.0]
    abar = module.schedule.alphas_cumprod().double()
    assert abar[999] == 0  # zero terminal SNR: x_T is the noise, v = -x0
    expected = torch.zeros(3, dtype=torch.float64)
    for i, batch in enumerate(batches):
        g = torch.Generator().manual_seed(7 * 1_000_003 + i)  # keyed on (seed, batch index) only
        x0 = batch["latent_mean"] + batch["latent_std"] * torch.randn(2, 4, 16, 16, generator=g)
        for k, t in enumerate(timesteps):
            noise = torch.randn(2, 4, 16, 16, generator=g)
            a = float(abar[t])
            x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * noise  # the forward process
            v = math.sqrt(a) * noise - math.sqrt(1 - a) * x0  # v (Salimans & Ho), the v-loss target
            with torch.no_grad():
                pred = module.unet(
                    x_t, torch.full((2,), t), encoder_hidden_states=batch["text_states"]
                ).sample
            expected[k] += (pred.double() - v.double()).square().mean(dim=(1, 2, 3)).sum()
    torch.testing.assert_close(sums, expected, rtol=1e-5, atol=1e-6)
    again, _ = module.fixed_timestep_losses(batches, timesteps, seed=7)
    assert torch.equal(again, sums)  # the same numbers every time: a curve across steps
