"""Samplers: against diffusers and a float64 transcription, known identities, finiteness, errors."""

import numpy as np
import pytest
import torch

from zsnr.diffusion import (
    SPACINGS,
    alphas_cumprod,
    img2img,
    make_betas,
    rescale_zero_terminal_snr,
    sample,
    select_timesteps,
)

ZERO = alphas_cumprod(rescale_zero_terminal_snr(make_betas("scaled_linear")))
FLAWED = alphas_cumprod(make_betas("scaled_linear"))


def toy_model(x, t):
    """A smooth nonlinear stand-in for a network: depends on x and t."""
    return torch.tanh(x) * 0.5 + 0.01 * t.view(-1, *([1] * (x.ndim - 1))).to(x.dtype) / 1000


def _x(seed=0, shape=(2, 4, 8, 8)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _diffusers_loop(scheduler, x, steps):
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        x = scheduler.step(toy_model(x, t.expand(x.shape[0])), t, x).prev_sample
    return x


@pytest.mark.parametrize("zero_snr,abar", [(True, ZERO), (False, FLAWED)])
@pytest.mark.parametrize("spacing", ["trailing", "leading"])
@pytest.mark.parametrize("steps", [10, 50])
def test_ddim_matches_diffusers(zero_snr, abar, spacing, steps):
    from diffusers import DDIMScheduler

    sch = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=zero_snr,
        timestep_spacing=spacing, prediction_type="v_prediction", clip_sample=False,
        set_alpha_to_one=True, steps_offset=0,
    )  # fmt: skip
    x = _x()
    ref = _diffusers_loop(sch, x.clone(), steps)
    ours = sample(toy_model, x, abar, select_timesteps(1000, steps, spacing))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def _ddim_reference_f64(x, abar, ts):
    """Eq. 12 of DDIM (eta = 0) with v-prediction, stepping t_i -> t_{i+1}, in numpy float64."""
    x = x.numpy().astype(np.float64)
    a_all = abar.numpy()
    for i, t in enumerate(ts):
        a = a_all[t]
        n = a_all[ts[i + 1]] if i + 1 < len(ts) else 1.0
        v = toy_model(torch.from_numpy(x), torch.full((x.shape[0],), t)).numpy()
        x0 = np.sqrt(a) * x - np.sqrt(1 - a) * v
        eps = np.sqrt(a) * v + np.sqrt(1 - a) * x
        x = np.sqrt(n) * x0 + np.sqrt(1 - n) * eps
    return torch.from_numpy(x)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_ddim_correct_for_every_spacing(spacing):
    # diffusers 0.42.1 steps "linspace" with a fixed stride T // S and lands off the selected timesteps
    # (0.18 max abs deviation on this model, S = 10); ours steps between the selected timesteps.
    ts = select_timesteps(1000, 10, spacing)
    x = _x(1)
    ref = _ddim_reference_f64(x, ZERO, ts.tolist()).float()
    torch.testing.assert_close(sample(toy_model, x, ZERO, ts), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("steps", [10, 25])
def test_dpmpp_2m_matches_diffusers(steps):
    from diffusers import DPMSolverMultistepScheduler

    kw = dict(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="trailing",
        prediction_type="v_prediction", algorithm_type="dpmsolver++", solver_order=2,
        final_sigmas_type="zero", lower_order_final=True, steps_offset=0,
    )  # fmt: skip
    x = _x(2)
    ts = select_timesteps(1000, steps, "trailing")
    ref = _diffusers_loop(DPMSolverMultistepScheduler(**kw), x.clone(), steps)
    torch.testing.assert_close(sample(toy_model, x, FLAWED, ts, "dpmpp_2m"), ref, rtol=1e-5, atol=1e-5)
    # zero SNR: diffusers replaces abar_T = 0 by 2**-24 to dodge lambda = -inf; we handle it exactly,
    # so the two agree to the size of that substitution (sqrt(2**-24) = 2.4e-4 in x_T's signal share)
    ref0 = _diffusers_loop(DPMSolverMultistepScheduler(rescale_betas_zero_snr=True, **kw), x.clone(), steps)
    ours0 = sample(toy_model, x, ZERO, ts, "dpmpp_2m")
    torch.testing.assert_close(ours0, ref0, rtol=0, atol=5e-3)


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_euler_ancestral_equals_ddim_eta(eta):
    # Euler ancestral in sigma space and DDIM(eta) in VP space are the same update (same noise draws):
    # two different formulas, checked against each other.
    ts = select_timesteps(1000, 10, "trailing")
    x = _x(3)
    a = sample(toy_model, x, ZERO, ts, "euler_ancestral", eta=eta, generator=torch.Generator().manual_seed(7))
    b = sample(toy_model, x, ZERO, ts, "ddim", eta=eta, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_ddpm_equals_ddim_eta_one():
    # The DDPM posterior (x0 form, eq. 20) over skipped steps is DDIM with eta = 1 (Song et al., sec. 4.1).
    ts = select_timesteps(1000, 10, "trailing")
    x = _x(4)
    a = sample(toy_model, x, ZERO, ts, "ddpm", generator=torch.Generator().manual_seed(5))
    b = sample(toy_model, x, ZERO, ts, "ddim", eta=1.0, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


SAMPLER_ETAS = [("ddim", e) for e in (None, 0.5, 1.0)] + [("euler_ancestral", e) for e in (None, 0.0, 0.5)]
SAMPLER_ETAS += [("ddpm", None), ("dpmpp_2m", None)]


@pytest.mark.parametrize("sampler,eta", SAMPLER_ETAS)
@pytest.mark.parametrize("spacing", SPACINGS)
def test_finite_at_zero_snr_with_bf16_model(sampler, eta, spacing):
    def bf16_model(x, t):
        return toy_model(x.to(torch.bfloat16), t).to(torch.bfloat16)

    ts = select_timesteps(1000, 10, spacing)
    out = sample(bf16_model, _x(5), ZERO, ts, sampler, eta=eta, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_first_step_at_zero_snr_ignores_the_noise():
    # At t = T with abar_T = 0 the v -> x0 conversion gives x0 = -v: an ideal model's prediction there does
    # not depend on x_T; with one step (S = 1, trailing: t = 999), the output is exactly -v.
    const = torch.full((2, 3, 4, 4), 0.25)
    out = sample(lambda x, t: -const, _x(6, (2, 3, 4, 4)), ZERO, select_timesteps(1000, 1, "trailing"))
    torch.testing.assert_close(out, const)


def test_model_gets_long_timesteps_of_batch_shape():
    seen = []

    def spy(x, t):
        seen.append((t.dtype, tuple(t.shape), int(t[0])))
        return torch.zeros_like(x)

    sample(spy, _x(0, (3, 2)), ZERO, select_timesteps(1000, 4, "trailing"))
    assert seen == [(torch.long, (3,), t) for t in (999, 749, 499, 249)]


def test_errors():
    ts = select_timesteps(1000, 10, "trailing")
    x = _x()
    with pytest.raises(ValueError, match="v_prediction"):
        sample(toy_model, x, ZERO, ts, prediction_type="epsilon")  # eps says nothing about x0 at SNR 0
    with pytest.raises(ValueError, match="dpmpp_2m"):
        sample(toy_model, x, ZERO, ts, sampler="heun")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sample(toy_model, x, ZERO, ts, eta=1.5)
    with pytest.raises(ValueError, match="no eta"):
        sample(toy_model, x, ZERO, ts, sampler="dpmpp_2m", eta=0.5)
    with pytest.raises(ValueError, match="descending"):
        sample(toy_model, x, ZERO, ts.flip(0))
    with pytest.raises(ValueError, match="0..999"):
        sample(toy_model, x, ZERO, torch.tensor([1000, 10]))


def test_img2img_selects_the_last_steps():
    ts = select_timesteps(1000, 10, "trailing")
    seen = []

    def spy(x, t):
        seen.append(int(t[0]))
        return toy_model(x, t)

    x0, noise = _x(7), _x(8)
    img2img(spy, x0, ZERO, ts, strength=0.5, noise=noise)
    assert seen == ts[5:].tolist()  # as diffusers: int(S * strength) steps, the last ones
    # strength 1 with trailing zero SNR starts from pure noise: the same as sampling from the noise
    out = img2img(toy_model, x0, ZERO, ts, strength=1.0, noise=noise)
    torch.testing.assert_close(out, sample(toy_model, noise, ZERO, ts))
    with pytest.raises(ValueError, match="selects no step"):
        img2img(toy_model, x0, ZERO, ts, strength=0.05, noise=noise)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        img2img(toy_model, x0, ZERO, ts, strength=0.0, noise=noise)


def test_callback_sees_each_step_and_its_x0_prediction():
    """The callback gets (step, t, x_t, x0) before each update, x0 = sqrt(abar) x_t - sqrt(1 - abar) v for
    v-prediction (Salimans & Ho); DDIM (eta 0) ends exactly on the last step's prediction (it steps to abar = 1)."""
    ts = select_timesteps(1000, 5, "trailing")
    seen = []
    out = sample(toy_model, _x(), ZERO, ts, sampler="ddim", callback=seen.append)
    assert [s["step"] for s in seen] == list(range(5)) and [s["t"] for s in seen] == ts.tolist()
    for s in seen:
        a = ZERO[s["t"]].item()
        v = toy_model(s["x"], torch.full((2,), s["t"]))
        torch.testing.assert_close(s["x0"], a**0.5 * s["x"] - (1 - a) ** 0.5 * v, atol=1e-6, rtol=0)
    torch.testing.assert_close(seen[-1]["x0"], out, atol=0, rtol=0)
