"""train_step clips by the gradient norm it measured for the skip decision: the same gradients as torch's
clip_grad_norm_ (the reference), from one pass over them."""

import copy

import pytest
import torch
from training_helpers import TINY_SPEC, ZERO_SNR

from zsnr.training import DiffusionModule
from zsnr.training.step import clip_, grad_norm


@pytest.mark.parametrize("max_norm", [1e-3, 1e6])  # clipped, and left alone
def test_clipping_matches_clip_grad_norm(max_norm):
    module = DiffusionModule(TINY_SPEC, ZERO_SNR)
    g = torch.Generator().manual_seed(0)
    for p in module.unet.parameters():
        p.grad = torch.randn(p.shape, generator=g)
    reference = copy.deepcopy(module.unet)
    for ref, p in zip(reference.parameters(), module.unet.parameters(), strict=True):
        ref.grad = p.grad.clone()
    norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm)
    expected = [p.grad for p in reference.parameters()]
    params = list(module.unet.parameters())
    measured = grad_norm(params)
    clip_(params, max_norm, measured)
    assert float(measured) == pytest.approx(float(norm), rel=1e-6)
    for got, want in zip((p.grad for p in module.unet.parameters()), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
