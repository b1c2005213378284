"""Schedules and Algorithm 1, against the paper's Table 1, a numpy transcription and diffusers."""

import numpy as np
import pytest
import torch

from zsnr.diffusion import (
    SCHEDULES,
    alphas_cumprod,
    make_betas,
    rescale_zero_terminal_snr,
    shift_snr,
    snr,
)

# Table 1 (arXiv 2305.08891), recomputed in float64: schedule -> (SNR(T), sqrt(abar_T)); SD's SNR(T) follows
# the table's sqrt(abar_T) column, which contradicts the printed 4.928220e-03
TABLE1 = {
    "linear": ("4.035993e-05", "0.006353"),
    "cosine": ("2.4288e-09", "0.000049"),
    "scaled_linear": ("4.6819e-03", "0.068265"),
}


def _half_ulp_of_printed(text: str) -> float:
    """Relative half-unit of the last printed digit: '4.6819e-03' -> 0.5e-4 / 4.6819."""
    mantissa = text.split("e")[0]
    decimals = len(mantissa.split(".")[1])
    return 0.5 * 10**-decimals / float(mantissa)


@pytest.mark.parametrize("kind", sorted(TABLE1))
def test_table1_terminal_snr(kind):
    snr_T, sqrt_abar_T = TABLE1[kind]
    a = alphas_cumprod(make_betas(kind))
    # the table prints 5 to 7 significant digits: agree to the last digit printed
    assert snr(a)[-1].item() == pytest.approx(float(snr_T), rel=_half_ulp_of_printed(snr_T))
    assert a[-1].sqrt().item() == pytest.approx(float(sqrt_abar_T), abs=5e-7)


def test_table1_linear_to_1e6_relative():
    # the one value Table 1 gives to 7 digits
    assert snr(alphas_cumprod(make_betas("linear")))[-1].item() == pytest.approx(4.035993e-05, rel=1e-6)


def test_sd_terminal_mix():
    # the paper (section 3, on Table 1): with the SD schedule, x_T = 0.068265 x0 + 0.997667 eps
    a = alphas_cumprod(make_betas("scaled_linear"))[-1]
    assert (1 - a).sqrt().item() == pytest.approx(0.997667, abs=5e-7)


def test_betas_are_float64_and_in_range():
    for kind in SCHEDULES:
        b = make_betas(kind, 1000)
        assert b.dtype == torch.float64 and b.shape == (1000,)
        assert (b > 0).all() and (b <= 1).all()


def test_cosine_clip_and_unclipped():
    assert make_betas("cosine")[-1].item() == pytest.approx(0.999)
    b = make_betas("cosine_unclipped")
    assert b[-1].item() == 1.0
    assert alphas_cumprod(b)[-1].item() == 0.0
    assert torch.equal(b[:-1], make_betas("cosine")[:-1])  # only the clipped last beta differs


def test_unknown_kind_lists_valid_ones():
    with pytest.raises(ValueError, match="scaled_linear"):
        make_betas("quadratic")


def _algorithm1_numpy(betas: np.ndarray) -> np.ndarray:
    """Independent transcription of the paper's Algorithm 1 (numpy, float64)."""
    alphas_bar_sqrt = np.sqrt(np.cumprod(1.0 - betas))
    a0, aT = alphas_bar_sqrt[0].copy(), alphas_bar_sqrt[-1].copy()
    alphas_bar_sqrt -= aT
    alphas_bar_sqrt *= a0 / (a0 - aT)
    alphas_bar = alphas_bar_sqrt**2
    alphas = alphas_bar[1:] / alphas_bar[:-1]
    alphas = np.concatenate([alphas_bar[0:1], alphas])
    return 1 - alphas


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine"])
def test_algorithm1_against_numpy(kind):
    b = make_betas(kind)
    ours = rescale_zero_terminal_snr(b).numpy()
    np.testing.assert_allclose(ours, _algorithm1_numpy(b.numpy()), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kind", ["linear", "scaled_linear"])
def test_algorithm1_against_diffusers(kind):
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as ref

    b = make_betas(kind)
    # diffusers computes in the dtype it is given; hand it float64. beta = 1 - ratio cancels for the
    # smallest betas (1e-4), so a different order of float64 operations differs by ~1e-12 relative there.
    np.testing.assert_allclose(rescale_zero_terminal_snr(b).numpy(), ref(b.clone()).numpy(), rtol=1e-10)


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine"])
def test_rescaled_properties(kind):
    b = make_betas(kind)
    r = rescale_zero_terminal_snr(b)
    a, ar = alphas_cumprod(b), alphas_cumprod(r)
    assert r[-1].item() == pytest.approx(1.0)
    assert ar[-1].item() == pytest.approx(0.0, abs=1e-30)
    assert snr(ar)[-1].item() == pytest.approx(0.0, abs=1e-30)
    assert ar[0].item() == pytest.approx(a[0].item(), rel=1e-12)  # sqrt(abar_1) kept
    assert (ar[1:] < ar[:-1]).all()  # still decreasing
    # sqrt(abar) is an affine map of the original: (s - s_T) s_1 / (s_1 - s_T)
    s, sT, s0 = a.sqrt(), a[-1].sqrt(), a[0].sqrt()
    torch.testing.assert_close(ar.sqrt(), (s - sT) * s0 / (s0 - sT), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("factor", [0.25, 4.0, 16.0])
def test_shift_snr_multiplies_snr_at_every_t(factor):
    b = make_betas("scaled_linear")
    a = alphas_cumprod(b).numpy()
    expected = factor * a / (1 - a)  # SNR'(t) = factor SNR(t), from abar in numpy
    shifted = alphas_cumprod(shift_snr(b, factor)).numpy()
    np.testing.assert_allclose(shifted / (1 - shifted), expected, rtol=1e-10)
    assert torch.equal(shift_snr(b, 1.0), b)
    with pytest.raises(ValueError, match="> 0"):
        shift_snr(b, 0.0)


def test_shift_16_gives_16px_the_image_mean_snr_of_sds_64px_latents():
    # the mean of n i.i.d. noise pixels has variance 1/n: the image mean is seen at SNR n * SNR(t)
    sd = snr(alphas_cumprod(make_betas("scaled_linear")))[-1].item()
    shifted = snr(alphas_cumprod(shift_snr(make_betas("scaled_linear"), 16.0)))[-1].item()
    assert 16 * 16 * shifted == pytest.approx(64 * 64 * sd, rel=1e-10)  # 19.18 both
    # Algorithm 1 after the shift: SNR(T) = 0, abar_1 of the shifted schedule kept
    r = alphas_cumprod(rescale_zero_terminal_snr(shift_snr(make_betas("scaled_linear"), 16.0)))
    assert r[-1].item() == pytest.approx(0.0, abs=1e-30)
    assert r[0].item() == pytest.approx(
        alphas_cumprod(shift_snr(make_betas("scaled_linear"), 16.0))[0].item()
    )
