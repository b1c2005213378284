"""Samplers with one signature: sample(model_fn, x_T, alphas_cumprod, timesteps, ...) -> x_0.

Each step goes from the selected timestep t_i to the next selected one t_{i+1} (whatever the spacing: the
stride is never assumed fixed, unlike diffusers' DDIM under "linspace", #9261, #12633), and the last step
goes to abar = 1, i.e. lands on the x0 prediction. All updates are written through the (x0, eps) pair
obtained division-free from v (paper section 6), so they are finite at zero terminal SNR (abar_T = 0).
Notation per step: a = abar_{t_i}, n = abar_{t_{i+1}} (1 at the end), x = x_{t_i}.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .parameterization import add_noise, check_prediction_type, predict_x0_eps

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict], None]  # sample()'s per-step callback
Generators = torch.Generator | Sequence[torch.Generator] | None
SAMPLERS = ("ddim", "ddpm", "euler_ancestral", "dpmpp_2m")
_DEFAULT_ETA = {"ddim": 0.0, "euler_ancestral": 1.0}


def _noise_like(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    """N(0, I) shaped like x. A sequence of generators (one per image, on their own device) gives image i its
    own stream, so what a stochastic sampler draws for an image does not depend on the batch it is in."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if len(generator) != x.shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {x.shape[0]}: give one per image")
    draws = [torch.randn(x.shape[1:], generator=g, device=g.device, dtype=x.dtype) for g in generator]
    return torch.stack(draws).to(x.device)


def _ratio(a: float, n: float) -> float:
    """q = sigma_n / sigma = exp(-(lambda_n - lambda)) with sigma = sqrt((1 - abar) / abar).

    Written as sqrt(a (1 - n) / (n (1 - a))): 0 when a = 0 (sigma = inf, lambda = -inf) and when n = 1.
    """
    return math.sqrt(a * (1.0 - n) / (n * (1.0 - a)))


def _ddim_step(x, x0, eps, a, n, eta, generator, state):
    """DDIM (Song et al. eq. 12): x_n = sqrt(n) x0 + sqrt(1 - n - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - n)/(1 - a)) sqrt(1 - a/n). The radicand is clamped at 0 (rounding gave NaN
    with eta > 0 at zero SNR elsewhere: diffusers #5969)."""
    sigma = eta * math.sqrt((1.0 - n) / (1.0 - a) * (1.0 - a / n))
    out = math.sqrt(n) * x0 + math.sqrt(max(1.0 - n - sigma**2, 0.0)) * eps
    return out + sigma * _noise_like(x, generator) if sigma > 0 else out


def _ddpm_step(x, x0, eps, a, n, eta, generator, state):
    """DDPM ancestral step in x0 form (paper eq. 20), generalised to skipped steps (alpha' = a / n):
    mu = sqrt(n) beta' / (1 - a) x0 + sqrt(alpha') (1 - n) / (1 - a) x_t, var = (1 - n) / (1 - a) beta'.
    At a = 0: alpha' = 0, beta' = 1, so mu = sqrt(n) x0 and var = 1 - n. No eps is used."""
    alpha = a / n
    beta = 1.0 - alpha
    mean = math.sqrt(n) * beta / (1.0 - a) * x0 + math.sqrt(alpha) * (1.0 - n) / (1.0 - a) * x
    var = (1.0 - n) / (1.0 - a) * beta
    return mean + math.sqrt(var) * _noise_like(x, generator) if var > 0 else mean


def _euler_ancestral_step(x, x0, eps, a, n, eta, generator, state):
    """Euler ancestral (k-diffusion) in sigma space, x_sigma = x_t / sqrt(abar) = x0 + sigma eps:
    sigma_up = min(sigma_n, eta sigma_n sqrt(1 - q^2)), sigma_down = sqrt(sigma_n^2 - sigma_up^2),
    x_sigma' = x_sigma + (sigma_down - sigma) d with d = (x_sigma - x0)/sigma = eps, plus sigma_up z.
    At t = T, sigma = inf and x_sigma is infinite: we take the step through the x0 prediction,
    x_sigma' = x0 + sigma_down eps + sigma_up z (the same expression, with the infinite terms cancelled),
    and map back with x_n = sqrt(n) x_sigma'. q = sigma_n / sigma = 0 there, so the first step from a
    zero-SNR x_T draws sigma_up = eta sigma_n of fresh noise."""
    q = _ratio(a, n)
    sigma_n = math.sqrt((1.0 - n) / n)
    sigma_up = min(sigma_n, eta * sigma_n * math.sqrt(max(1.0 - q * q, 0.0)))
    sigma_down = math.sqrt(max(sigma_n**2 - sigma_up**2, 0.0))
    x_sigma = x0 + sigma_down * eps
    if sigma_up > 0:
        x_sigma = x_sigma + sigma_up * _noise_like(x, generator)
    return math.sqrt(n) * x_sigma


def _log_snr_half(a: float) -> float:
    """lambda = log(sqrt(SNR)) = (log a - log(1 - a)) / 2; -inf at a = 0, +inf at a = 1."""
    if a <= 0.0:
        return -math.inf
    if a >= 1.0:
        return math.inf
    return 0.5 * (math.log(a) - math.log1p(-a))


def _dpmpp_2m_step(x, x0, eps, a, n, eta, generator, state):
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) in VP form with data prediction D = x0:
    x_n = (sigma_n / sigma) x - alpha_n (e^{-h} - 1) D', h = lambda_n - lambda, where sigma = sqrt(1 - abar),
    alpha = sqrt(abar), e^{-h} = q, and D' = (1 + 1/(2r)) D - 1/(2r) D_prev with r = h_prev / h.
    Infinite log-SNR is handled explicitly: at t = T (lambda = -inf, q = 0) the step is x_n =
    sqrt(1 - n) x + sqrt(n) D, exact first order; the step after it has h_prev = inf (r = inf, so the
    correction vanishes) and uses first order, as does the last step (lambda_n = +inf, lands on D)."""
    q = _ratio(a, n)
    lam, lam_n = _log_snr_half(a), _log_snr_half(n)
    h = lam_n - lam
    d = x0
    prev = state.get("prev")
    if prev is not None and math.isfinite(h) and math.isfinite(prev[1]):
        r = (lam - prev[1]) / h
        d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * prev[0]
    state["prev"] = (x0, lam)
    return math.sqrt((1.0 - n) / (1.0 - a)) * x + math.sqrt(n) * (1.0 - q) * d


_STEPS = {
    "ddim": _ddim_step,
    "ddpm": _ddpm_step,
    "euler_ancestral": _euler_ancestral_step,
    "dpmpp_2m": _dpmpp_2m_step,
}


def _resolve_eta(sampler: str, eta: float | None) -> float:
    if sampler not in _STEPS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    if sampler not in _DEFAULT_ETA:
        if eta not in (None, 0.0):
            raise ValueError(
                f"sampler {sampler!r} takes no eta (got {eta}); eta is for ddim and euler_ancestral"
            )
        return 0.0
    eta = _DEFAULT_ETA[sampler] if eta is None else float(eta)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    return eta


def _check_timesteps(timesteps: torch.Tensor, T: int) -> list[int]:
    ts = [int(t) for t in torch.as_tensor(timesteps).flatten()]
    if not ts:
        raise ValueError("timesteps is empty")
    if any(b >= a for a, b in zip(ts, ts[1:], strict=False)):
        raise ValueError(f"timesteps must be strictly descending, got {ts}")
    if ts[0] > T - 1 or ts[-1] < 0:
        raise ValueError(f"timesteps must lie in 0..{T - 1} (the schedule's length), got {ts[0]}..{ts[-1]}")
    return ts


@torch.no_grad()
def sample(
    model_fn: ModelFn,
    x_T: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: torch.Tensor,
    sampler: str = "ddim",
    prediction_type: str = "v_prediction",
    eta: float | None = None,
    generator: Generators = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Run a sampler from x at timesteps[0] down to x0; returns x0 in float32 (or x_T's wider dtype).

    model_fn(x, t) gets x in the working dtype and t as a LongTensor of shape [batch]; its output may be
    of any float dtype (bfloat16 included) and is cast up. Samplers: ``ddim`` (eta in [0, 1], default 0),
    ``ddpm`` (x0-form posterior, eq. 20), ``euler_ancestral`` (eta default 1; with eta it coincides with
    DDIM(eta), a known identity the tests check), ``dpmpp_2m``. ``eta=None`` means the sampler's default.
    ``timesteps`` is any strictly descending subset of 0..T-1 (see select_timesteps). ``generator``: one
    torch.Generator for the batch, or one per image (then image i is the same in any batch). ``callback``, as
    in k-diffusion, is called after each model evaluation with a dict: ``step`` (0-based), ``t`` (the
    timestep), ``x`` (x_t, the model's input) and ``x0`` (its x0 prediction, in x's dtype), before the update;
    a progress bar or the paper's Figure 5 (the x0 predictions along the steps) need nothing else.
    """
    check_prediction_type(prediction_type)
    eta = _resolve_eta(sampler, eta)
    abar = alphas_cumprod.to(torch.float64).cpu()
    ts = _check_timesteps(timesteps, abar.numel())
    if prediction_type == "epsilon" and abar[ts[0]] == 0.0:
        raise ValueError(
            f"epsilon prediction at t={ts[0]} where abar_t = 0 (zero terminal SNR): x_t is pure noise, so eps"
            " reveals nothing about x0. Train and sample with prediction_type='v_prediction' (the paper's fix)."
        )
    step = _STEPS[sampler]
    x = x_T.to(torch.promote_types(x_T.dtype, torch.float32))
    state: dict = {}
    for i in range(len(ts)):
        a = float(abar[ts[i]])
        n = float(abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        t = torch.full((x.shape[0],), ts[i], dtype=torch.long, device=x.device)
        out = model_fn(x, t).to(x.dtype)
        x0, eps = predict_x0_eps(out, x, a, prediction_type)
        if callback is not None:
            callback({"step": i, "t": ts[i], "x": x, "x0": x0})
        x = step(x, x0, eps, a, n, eta, generator, state)
    return x


def img2img(
    model_fn: ModelFn,
    x0: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: torch.Tensor,
    strength: float,
    noise: torch.Tensor | None = None,
    generator: Generators = None,
    **sample_kwargs,
) -> torch.Tensor:
    """Start from a given image: noise x0 to the timestep that ``strength`` selects, then sample.

    As in SDEdit / diffusers: of the S timesteps, the last round(S * strength) (floored, at least one) are
    run; strength = 1 starts at timesteps[0] (pure noise with a zero-SNR schedule and trailing spacing).
    """
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    ts = torch.as_tensor(timesteps)
    keep = min(int(len(ts) * strength), len(ts))
    if keep < 1:
        raise ValueError(f"strength {strength} with {len(ts)} steps selects no step; raise strength or steps")
    ts = ts[len(ts) - keep :]
    if noise is None:
        noise = _noise_like(x0.to(torch.promote_types(x0.dtype, torch.float32)), generator)
    abar = alphas_cumprod.to(torch.float64)
    x_t = add_noise(x0.to(noise.dtype), noise, abar[int(ts[0])].item())
    return sample(model_fn, x_t, alphas_cumprod, ts, generator=generator, **sample_kwargs)
