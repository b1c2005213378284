"""Forward process and parameterisation conversions: closed forms, round trips, finiteness at the ends."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from zsnr.diffusion import PREDICTION_TYPES, add_noise, convert, predict_x0_eps, v_target

abars = st.floats(min_value=1e-6, max_value=1 - 1e-6)
ends = st.sampled_from([0.0, 1.0])
seeds = st.integers(0, 2**31 - 1)


def _pair(seed, shape=(3, 4, 5, 5)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(
        shape, generator=g, dtype=torch.float64
    )


def test_closed_forms_per_sample_abar():
    x0, eps = _pair(0)
    abar = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    a = abar.view(-1, 1, 1, 1)
    torch.testing.assert_close(add_noise(x0, eps, abar), a.sqrt() * x0 + (1 - a).sqrt() * eps)
    v = v_target(x0, eps, abar)
    torch.testing.assert_close(v, a.sqrt() * eps - (1 - a).sqrt() * x0)
    torch.testing.assert_close(v[0], -x0[0])  # abar = 0: v = -x0
    torch.testing.assert_close(v[2], eps[2])  # abar = 1: v = eps
    torch.testing.assert_close(v_target(x0, eps, 0.0), -x0)  # at zero terminal SNR, v = -x0


@settings(max_examples=60, deadline=None)
@given(abar=abars, seed=seeds, src=st.sampled_from(PREDICTION_TYPES), dst=st.sampled_from(PREDICTION_TYPES))
def test_round_trip(abar, seed, src, dst):
    x0, eps = _pair(seed)
    x_t = add_noise(x0, eps, abar)
    truth = {"sample": x0, "epsilon": eps, "v_prediction": v_target(x0, eps, abar)}
    out = convert(truth[src], x_t, abar, src, dst)
    # dividing by sqrt(abar) or sqrt(1 - abar) near the ends amplifies float64 rounding by 1 / that
    scale = 1.0 / min(abar, 1 - abar) ** 0.5
    torch.testing.assert_close(out, truth[dst], rtol=1e-9 * scale, atol=1e-9 * scale)
    back = convert(out, x_t, abar, dst, src)
    torch.testing.assert_close(back, truth[src], rtol=1e-9 * scale, atol=1e-9 * scale)


@settings(max_examples=30, deadline=None)
@given(abar=ends, seed=seeds, dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_v_conversions_exact_and_finite_at_the_ends(abar, seed, dtype):
    x0, eps = (t.to(dtype) for t in _pair(seed))
    x_t = add_noise(x0, eps, abar)
    v = v_target(x0, eps, abar)
    x0_hat, eps_hat = predict_x0_eps(v, x_t, abar, "v_prediction")
    assert torch.isfinite(x0_hat).all() and torch.isfinite(eps_hat).all()
    # eq. 17 / 19 need no division: the identity is exact where it is identifiable
    if abar == 0.0:
        torch.testing.assert_close(x0_hat, x0)  # x0 = -v at SNR 0
        torch.testing.assert_close(eps_hat, x_t)
    else:
        torch.testing.assert_close(x0_hat, x_t)
        torch.testing.assert_close(eps_hat, eps)  # eps = v at SNR inf


@settings(max_examples=30, deadline=None)
@given(abar=ends, seed=seeds, src=st.sampled_from(PREDICTION_TYPES), dst=st.sampled_from(PREDICTION_TYPES))
def test_every_conversion_finite_at_the_ends(abar, seed, src, dst):
    out, x_t = (t.float() for t in _pair(seed))
    assert torch.isfinite(convert(out, x_t, abar, src, dst)).all()


def test_unknown_prediction_type():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="v_prediction"):
        predict_x0_eps(x, x, 0.5, "score")
    with pytest.raises(ValueError, match="v_prediction"):
        convert(x, x, 0.5, "epsilon", "flow")
