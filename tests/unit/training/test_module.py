"""The training objective trains on the closed-form target of its diffusion config (diffusers as the reference)."""

import warnings
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDPMScheduler
from torch import nn
from training_helpers import TINY_SPEC, ZERO_SNR, brightness_batch

from zsnr.data import to_model_range
from zsnr.training import DiffusionModule

FLAWED = {"betas": "scaled_linear", "rescale_zero_terminal_snr": False, "prediction_type": "epsilon"}


class ZeroUNet(nn.Module):
    """Predicts 0 and records what it was given, so the loss is the mean square of the target."""

    def forward(self, x, t, encoder_hidden_states):
        self.seen = (x.detach(), t.detach(), encoder_hidden_states.detach())
        return SimpleNamespace(sample=torch.zeros_like(x))


def _step_x0(module, batch):
    """x0 as the last micro_batch_loss drew it: encode_batch with that micro-batch's generator."""
    module.micro_step -= 1
    generator = module._step_generator()
    module.micro_step += 1
    return module.encode_batch(batch, generator)[0]


def _reference_abar(rescale: bool) -> torch.Tensor:
    sched = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=rescale
    )
    return sched, sched.alphas_cumprod.double()


@pytest.mark.parametrize("diffusion", [ZERO_SNR, FLAWED], ids=["v_zero_snr", "eps_flawed"])
def test_loss_is_mse_to_the_closed_form_target(diffusion):
    module = DiffusionModule(TINY_SPEC, diffusion, caption_dropout=0.0)
    module.unet = ZeroUNet()
    batch = brightness_batch(16)
    per_sample, timesteps = module.micro_batch_loss(batch)
    x_t, t, _ = module.unet.seen
    x0 = _step_x0(module, batch)
    sched, abar = _reference_abar(diffusion["rescale_zero_terminal_snr"])
    a = abar[t].view(-1, 1, 1, 1)
    eps = (x_t.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()  # the noise the step drew
    if diffusion["prediction_type"] == "v_prediction":
        target = sched.get_velocity(x0.double(), eps, t)  # diffusers' v = sqrt(a) eps - sqrt(1 - a) x0
        assert torch.allclose(target, a.sqrt() * eps - (1 - a).sqrt() * x0.double())
    else:
        target = eps
    expected = target.square().mean(dim=(1, 2, 3)).float()
    torch.testing.assert_close(per_sample, expected, rtol=2e-3, atol=1e-5)
    torch.testing.assert_close(per_sample.mean(), expected.mean(), rtol=2e-3, atol=1e-5)
    assert torch.equal(timesteps, t) and t.min() >= 0 and t.max() <= 999


def test_last_timestep_is_pure_noise_and_v_is_minus_x0():
    module = DiffusionModule(TINY_SPEC, ZERO_SNR, caption_dropout=0.0)
    assert module._abar[-1] == 0.0  # zero terminal SNR: x_{T-1} carries no signal, v = -x0
    module.unet = ZeroUNet()
    module._abar = torch.zeros_like(module._abar)  # every drawn t behaves like t = T-1
    batch = brightness_batch(8)
    per_sample, _ = module.micro_batch_loss(batch)
    x0 = _step_x0(module, batch)
    torch.testing.assert_close(per_sample, x0.square().mean(dim=(1, 2, 3)))


def test_timesteps_cover_the_whole_range():
    module = DiffusionModule(TINY_SPEC, ZERO_SNR)
    module.unet = ZeroUNet()
    seen = []
    batch = {"latent_mean": torch.zeros(256, 4, 16, 16), "text_states": torch.zeros(256, 77, 32)}
    for _ in range(40):
        module.micro_batch_loss(batch)
        seen.append(module.unet.seen[1])
    t = torch.cat(seen)  # 10240 uniform draws over 1000 values: each appears, T-1 included
    assert t.min() == 0 and t.max() == 999 and t.unique().numel() == 1000


def test_caption_dropout_uses_the_empty_prompt():
    batch = brightness_batch(6)
    for p, expect_empty in ((1.0, True), (0.0, False)):
        module = DiffusionModule(TINY_SPEC, ZERO_SNR, caption_dropout=p)
        module.unet = ZeroUNet()
        module.micro_batch_loss(batch)
        text = module.unet.seen[2]
        empty = module.text_encoder(module.tokenizer([""]))
        captions = module.text_encoder(module.tokenizer(batch["caption"]))
        torch.testing.assert_close(text, (empty.expand_as(captions) if expect_empty else captions))


def test_x0_is_a_posterior_sample_and_the_cache_draws_the_same():
    module = DiffusionModule(TINY_SPEC, ZERO_SNR)
    images = brightness_batch(4)
    pixels = to_model_range(images["image"])

    def generator():
        return torch.Generator().manual_seed(5)

    x0, text = module.encode_batch(images, generator())
    # diffusers draws the same sample from the same generator (SD trains on samples, not on the mean)
    reference = module.autoencoder.vae.encode(pixels).latent_dist.sample(generator=generator()) * 0.18215
    torch.testing.assert_close(x0, reference, rtol=1e-5, atol=1e-6)
    mean, std = module.autoencoder.posterior(pixels)
    z = (x0 - mean) / std  # standard normal if x0 is a posterior sample
    assert abs(float(z.mean())) < 0.1 and 0.9 < float(z.std()) < 1.1
    cached = {"latent_mean": mean, "latent_std": std, "text_states": text, "caption": images["caption"]}
    x0_cached, text_cached = module.encode_batch(cached, generator())
    assert torch.equal(x0_cached, x0) and torch.equal(text_cached, text)  # the encoders were skipped


def test_noise_depends_on_seed_and_micro_step_only():
    a, b = DiffusionModule(TINY_SPEC, ZERO_SNR), DiffusionModule(TINY_SPEC, ZERO_SNR)
    a.unet, b.unet = ZeroUNet(), ZeroUNet()
    batch = brightness_batch(4)
    a.micro_batch_loss(batch)
    b.micro_step = 0
    b.micro_batch_loss(batch)
    assert torch.equal(a.unet.seen[0], b.unet.seen[0])
    a.micro_batch_loss(batch)  # next micro step: new noise
    assert not torch.equal(a.unet.seen[0], b.unet.seen[0])


def test_min_snr_with_zero_terminal_snr_warns_and_names_the_variant():
    with pytest.warns(UserWarning, match="min_snr_plus_one"):
        DiffusionModule(TINY_SPEC, {**ZERO_SNR, "loss_weighting": "min_snr"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the variant, and min_snr on SD's schedule: no warning
        DiffusionModule(TINY_SPEC, {**ZERO_SNR, "loss_weighting": "min_snr_plus_one"})
        DiffusionModule(TINY_SPEC, {**FLAWED, "loss_weighting": "min_snr"})


def test_an_ema_on_the_cpu_stays_out_of_the_module_tree():
    """ema_on_cpu: neither in the state dict (DDP and Lightning see the tree only) nor moved with the module."""
    module = DiffusionModule(TINY_SPEC, ZERO_SNR, ema_on_cpu=True)
    assert not any(k.startswith("ema_unet") for k in module.state_dict())
    assert {n for n, _ in module.named_children()} == {"unet"}
    module.to("meta")  # what Lightning does with the tree when it moves it to an accelerator
    assert next(module.unet.parameters()).is_meta
    assert all(p.device.type == "cpu" for p in module.ema_unet.parameters())
