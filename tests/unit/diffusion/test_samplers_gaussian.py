"""Samplers are right, not only finite: sampling Gaussian data with its ideal (closed-form) denoiser.

Data x0 ~ N(mu, s^2) i.i.d. per element. With x_t = sqrt(a) x0 + sqrt(1 - a) eps, x_t ~ N(sqrt(a) mu, c^2),
c^2 = a s^2 + 1 - a, and the ideal v-prediction is E[v | x_t] = -sqrt(1 - a) mu + cov / c^2 (x_t - sqrt(a) mu),
cov = Cov(v, x_t) = sqrt(a (1 - a)) (1 - s^2). It is finite at a = 0 (it returns -mu there: the data mean).

The tolerance is derived, not tuned. Every sampler here is linear-Gaussian on this data, so
x_t - sqrt(a) mu stays a zero-mean Gaussian whose variance V follows a scalar recursion (written out
below from the update equations and the closed-form posterior: x0_hat - mu = g (x - sqrt(a) mu) with
g = sqrt(a) s^2 / c^2, eps_hat = e (x - sqrt(a) mu) with e = sqrt(1 - a) / c^2):
  DDIM(eta) family (ddim, ddpm = eta 1, euler_ancestral = DDIM(eta)):
      V_n = (sqrt(n) g + sqrt(1 - n - sig^2) e)^2 V + sig^2,  sig^2 = eta^2 (1 - n)/(1 - a) (1 - a/n)
  DPM-Solver++(2M): x - sqrt(a) mu = k z (deterministic), k_n = sqrt((1-n)/(1-a)) k + sqrt(n)(1-q) d,
      d = g k (first order) or (1 + 1/2r) g k - 1/2r g_prev k_prev, q = exp(-h), r = h_prev / h.
So the output std is s_hat = sqrt(V_final) exactly, and the mean is exactly mu (every step keeps the mean).
The samplers' first-order discretisation makes s_hat < s; that gap |s_hat - s| is the derived bias.
Monte Carlo: with N i.i.d. elements the sample mean has std s_hat/sqrt(N), the sample std s_hat/sqrt(2N).
The test asserts, at 5 Monte Carlo sigmas:  |mean - mu| <= 5 s_hat / sqrt(N),
|std - s_hat| <= 5 s_hat / sqrt(2N)  (the sampler matches its derived law), and so
|std - s| <= |s_hat - s| + 5 s_hat / sqrt(2N)  (the data std within the derived tolerance).
"""

import math

import pytest
import torch

from zsnr.diffusion import alphas_cumprod, make_betas, rescale_zero_terminal_snr, sample, select_timesteps

MU, S_DATA = 0.3, 0.5
ABAR = alphas_cumprod(rescale_zero_terminal_snr(make_betas("scaled_linear")))
N_ROWS, N_COLS = 4000, 16  # N = 64,000 i.i.d. elements


def ideal_v_for(abar, mu, s):
    def ideal_v(x, t):
        a = abar[t].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        var = a * s**2 + 1 - a
        cov = (a * (1 - a)).sqrt() * (1 - s**2)
        return -(1 - a).sqrt() * mu + cov / var * (x - a.sqrt() * mu)

    return ideal_v


ideal_v = ideal_v_for(ABAR, MU, S_DATA)


def _lam(a):
    return -math.inf if a == 0 else (math.inf if a == 1 else 0.5 * math.log(a / (1 - a)))


def predicted_std(sampler: str, ts: list[int], eta: float) -> float:
    s2 = S_DATA**2
    var, k, prev = 1.0, 1.0, None  # x_T = noise: V = 1
    for i, t in enumerate(ts):
        a = ABAR[t].item()
        n = ABAR[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
        c2 = a * s2 + 1 - a
        g, e = math.sqrt(a) * s2 / c2, math.sqrt(1 - a) / c2
        if sampler == "dpmpp_2m":
            h, q = _lam(n) - _lam(a), math.sqrt(a * (1 - n) / (n * (1 - a)))
            d = g * k
            if prev is not None and math.isfinite(h) and math.isfinite(prev[2]):
                r = (_lam(a) - prev[2]) / h
                d = (1 + 0.5 / r) * g * k - 0.5 / r * prev[0] * prev[1]
            prev = (g, k, _lam(a))
            k = math.sqrt((1 - n) / (1 - a)) * k + math.sqrt(n) * (1 - q) * d
            var = k * k
        else:
            sig2 = eta**2 * (1 - n) / (1 - a) * (1 - a / n)
            var = (math.sqrt(n) * g + math.sqrt(max(1 - n - sig2, 0)) * e) ** 2 * var + sig2
    return math.sqrt(var)


CASES = [(s, 50) for s in ("ddim", "ddpm", "euler_ancestral", "dpmpp_2m")] + [("ddim", 10), ("dpmpp_2m", 10)]


@pytest.mark.parametrize("sampler,steps", CASES)
def test_reproduces_data_mean_and_std(sampler, steps):
    eta = {"ddim": 0.0, "ddpm": 1.0, "euler_ancestral": 1.0, "dpmpp_2m": 0.0}[sampler]
    ts = select_timesteps(1000, steps, "trailing")
    g = torch.Generator().manual_seed(steps)
    x_T = torch.randn(N_ROWS, N_COLS, generator=g)
    x = sample(ideal_v, x_T, ABAR, ts, sampler, generator=g)
    n = x.numel()
    s_hat = predicted_std(sampler, ts.tolist(), eta)
    mc_mean, mc_std = 5 * s_hat / math.sqrt(n), 5 * s_hat / math.sqrt(2 * n)
    assert abs(x.mean().item() - MU) <= mc_mean
    assert abs(x.std().item() - s_hat) <= mc_std
    assert abs(x.std().item() - S_DATA) <= abs(s_hat - S_DATA) + mc_std
    # the derived bias itself is small at these step counts (first order: it shrinks like 1/S)
    assert abs(s_hat - S_DATA) / S_DATA < {50: 0.11, 10: 0.25}[steps]


def test_derived_bias_vanishes_with_many_steps():
    for sampler, eta in (("ddim", 0.0), ("ddpm", 1.0), ("dpmpp_2m", 0.0)):
        ts = select_timesteps(1000, 1000, "trailing").tolist()
        assert predicted_std(sampler, ts, eta) == pytest.approx(S_DATA, rel=0.015)


def test_flawed_schedule_loses_the_mean():
    # The paper's flaw, measured with an ideal model: dark data (mean -0.8, std 0.2), SD's schedule
    # (SNR(T) = 0.0047) and leading steps (S = 50). x_T = noise lacks the 0.068 * x0 share the model
    # expects, so samples come out brighter than the data; the rescaled schedule with trailing steps does not.
    mu, s = -0.8, 0.2
    flawed = alphas_cumprod(make_betas("scaled_linear"))
    x_T = torch.randn(N_ROWS, N_COLS, generator=torch.Generator().manual_seed(0))
    x = sample(ideal_v_for(flawed, mu, s), x_T, flawed, select_timesteps(1000, 50, "leading"))
    fixed = sample(ideal_v_for(ABAR, mu, s), x_T, ABAR, select_timesteps(1000, 50, "trailing"))
    mc = 5 * s / math.sqrt(x.numel())
    assert x.mean().item() - mu > 2 * mc  # measured +0.0098 (12 Monte Carlo sigmas): toward grey
    assert abs(fixed.mean().item() - mu) <= mc
