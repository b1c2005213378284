"""Loss weights (finite at SNR 0 and inf) and rescaled CFG against diffusers' rescale_noise_cfg."""

import math

import pytest
import torch

from zsnr.diffusion import PREDICTION_TYPES, cfg, loss_weights

SNRS = torch.tensor([0.0, 1e-8, 0.5, 1.0, 5.0, 20.0, 1e8, math.inf], dtype=torch.float64)


@pytest.mark.parametrize("ptype", PREDICTION_TYPES)
def test_plain_is_one(ptype):
    assert torch.equal(loss_weights(SNRS, ptype), torch.ones_like(SNRS))


@pytest.mark.parametrize("ptype", PREDICTION_TYPES)
@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_finite_and_equal_to_x0_space_weight(ptype, gamma):
    w = loss_weights(SNRS, ptype, "min_snr", gamma)
    assert torch.isfinite(w).all() and (w >= 0).all()
    # ||eps err||^2 = SNR ||x0 err||^2 and ||v err||^2 = (SNR + 1) ||x0 err||^2, so the x0-space weight
    # min(SNR, gamma) is w * SNR (eps), w * (SNR + 1) (v), w (x0): check where SNR is finite and > 0
    mid = (SNRS > 0) & torch.isfinite(SNRS)
    factor = {"sample": 1.0, "epsilon": SNRS, "v_prediction": SNRS + 1}[ptype]
    x0_space = (w * factor)[mid] if ptype != "sample" else w[mid]
    torch.testing.assert_close(x0_space, torch.minimum(SNRS, torch.tensor(gamma, dtype=torch.float64))[mid])


def test_min_snr_limits():
    g = 5.0
    eps_w = loss_weights(SNRS, "epsilon", "min_snr", g)
    v_w = loss_weights(SNRS, "v_prediction", "min_snr", g)
    assert eps_w[0] == 1.0 and eps_w[-1] == 0.0  # min(SNR, g)/SNR -> 1 at 0, -> 0 at inf
    assert v_w[0] == 0.0 and v_w[-1] == 0.0  # min(SNR, g)/(SNR + 1) -> 0 at both ends
    assert loss_weights(SNRS, "sample", "min_snr", g)[-1] == g


@pytest.mark.parametrize("ptype", ["sample", "v_prediction"])
def test_min_snr_plus_one_keeps_t_T_trained(ptype):
    g = 5.0
    w = loss_weights(SNRS, ptype, "min_snr_plus_one", g)
    assert torch.isfinite(w).all() and (w >= 0).all()
    # x0-space weight min(SNR + 1, gamma): 1 at SNR = 0 (x0 and v alike, since v err = (SNR + 1) x0 err)
    assert w[0] == 1.0
    factor = {"sample": 1.0, "v_prediction": SNRS + 1}[ptype]
    finite = torch.isfinite(SNRS)
    torch.testing.assert_close(
        (w * factor)[finite], torch.minimum(SNRS + 1, torch.tensor(g).double())[finite]
    )
    assert w[-1] == (g if ptype == "sample" else 0.0)  # SNR = inf: gamma / inf for v
    assert loss_weights(SNRS, "v_prediction", "min_snr", g)[0] == 0.0  # what it replaces: 0 at t = T


def test_min_snr_plus_one_refuses_epsilon():
    with pytest.raises(ValueError, match="v_prediction or sample"):
        loss_weights(SNRS, "epsilon", "min_snr_plus_one", 5.0)


def test_loss_weight_errors():
    with pytest.raises(ValueError, match="min_snr"):
        loss_weights(SNRS, "epsilon", "p2")
    with pytest.raises(ValueError, match="gamma"):
        loss_weights(SNRS, "epsilon", "min_snr", 0.0)


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.7, 1.0])
def test_cfg_against_diffusers(phi):
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    w = 7.5
    x_cfg = neg + w * (pos - neg)
    ref = rescale_noise_cfg(x_cfg, pos, guidance_rescale=phi)
    torch.testing.assert_close(cfg(pos, neg, w, phi), ref, rtol=1e-5, atol=1e-5)


def test_cfg_full_rescale_restores_positive_std_per_sample():
    g = torch.Generator().manual_seed(1)
    pos = torch.randn(4, 3, 6, 6, generator=g) * torch.tensor([0.5, 1, 2, 3]).view(-1, 1, 1, 1)
    neg = torch.randn(4, 3, 6, 6, generator=g)
    out = cfg(pos, neg, 7.5, 1.0)
    torch.testing.assert_close(out.flatten(1).std(1), pos.flatten(1).std(1))


@pytest.mark.parametrize("phi", [-0.1, 1.5])
def test_cfg_rescale_out_of_range(phi):
    x = torch.zeros(1, 4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cfg(x, x, 7.5, phi)
