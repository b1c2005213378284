"""configure_unet's layout switch: channels_last changes the memory layout only, never the numbers."""

import torch
from training_helpers import TINY_SPEC, ZERO_SNR, brightness_batch

from zsnr.models import build_components, configure_unet
from zsnr.models.unet import input_memory_format
from zsnr.training import DiffusionModule


def _conv_weights(unet):
    return [p for p in unet.parameters() if p.dim() == 4]


def test_switches_flip_both_ways_and_keep_the_output():
    unet = build_components(TINY_SPEC).unet
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([3, 900])
    text = torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        reference = unet(x, t, encoder_hidden_states=text).sample
    configure_unet(unet, "eager", gradient_checkpointing=True, channels_last=True)
    assert unet.is_gradient_checkpointing and input_memory_format(unet) == torch.channels_last
    # (1x1 kernels are both layouts at once; every kernel is NHWC)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in _conv_weights(unet))
    with torch.no_grad():
        nhwc = unet(x.contiguous(memory_format=torch.channels_last), t, encoder_hidden_states=text).sample
    torch.testing.assert_close(nhwc, reference, rtol=1e-4, atol=1e-5)
    configure_unet(unet, "sdpa")
    assert not unet.is_gradient_checkpointing and input_memory_format(unet) == torch.contiguous_format
    assert all(w.is_contiguous() for w in _conv_weights(unet))


def test_training_step_feeds_the_unet_its_own_layout():
    batch = brightness_batch(4)
    losses, layouts = [], []
    for channels_last in (False, True):
        module = DiffusionModule({**TINY_SPEC, "channels_last": channels_last}, ZERO_SNR)
        seen = []
        module.unet.conv_in.register_forward_pre_hook(lambda m, args, seen=seen: seen.append(args[0]))
        losses.append(module.micro_batch_loss(batch)[0].mean().detach())
        x_t = seen[0]
        layouts.append(x_t.is_contiguous(memory_format=torch.channels_last) and not x_t.is_contiguous())
    assert layouts == [False, True]
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-6)  # same seed, same weights
