"""parallelize_unet on one process: what gets sharded (per block, UNet and EMA alike, never the frozen parts),
bf16 compute over float32 shards, per-block compile keeping parameter names; the trainer configs' strategies."""

import pytest
import torch
import torch.distributed as dist
from hydra.utils import instantiate
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, init_device_mesh
from training_helpers import TINY_SPEC, ZERO_SNR, compose

from zsnr.models import build_components
from zsnr.training import DiffusionModule, ema_update_
from zsnr.training.parallel import FSDP2Strategy, parallelize_unet, unet_blocks


@pytest.fixture
def mesh(tmp_path):
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,))
    if created:
        dist.destroy_process_group()


def tiny_unet():
    return build_components(TINY_SPEC).unet


def unet_inputs(unet, batch=2):
    g = torch.Generator().manual_seed(0)
    c = unet.config
    x = torch.randn(batch, c.in_channels, c.sample_size, c.sample_size, generator=g)
    text = torch.randn(batch, 77, c.cross_attention_dim, generator=g)
    return x, torch.tensor([10, 990]), text


def test_without_a_mesh_nothing_is_wrapped_and_compile_keeps_names():
    unet = tiny_unet()
    names = [n for n, _ in unet.named_parameters()]
    assert parallelize_unet(unet) is unet
    assert not any(isinstance(p, DTensor) for p in unet.parameters())
    parallelize_unet(unet, compile=True)  # compiled lazily: nothing runs here
    blocks = unet_blocks(unet)
    assert len(blocks) == len(unet.down_blocks) + 1 + len(unet.up_blocks)
    assert all(b._compiled_call_impl is not None for b in blocks)
    assert [n for n, _ in unet.named_parameters()] == names  # checkpoints keep their keys


def test_a_module_that_is_not_a_unet_is_refused(mesh):
    with pytest.raises(TypeError, match="down_blocks"):
        parallelize_unet(torch.nn.Linear(2, 2), mesh)


def test_configure_model_shards_unet_and_ema_per_block_but_not_the_frozen_parts(mesh, monkeypatch):
    module = DiffusionModule(TINY_SPEC, ZERO_SNR)
    two_d = init_device_mesh("cpu", (1, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
    monkeypatch.setattr(
        DiffusionModule, "device_mesh", property(lambda self: two_d)
    )  # what the strategy gives
    module.configure_model()
    module.configure_model()  # Lightning may call it again: a no-op
    for unet in (module.unet, module.ema_unet):
        assert isinstance(unet, FSDPModule)
        assert all(isinstance(b, FSDPModule) for b in unet_blocks(unet))
        assert all(isinstance(p, DTensor) and p.dtype == torch.float32 for p in unet.parameters())
    for part in (module.autoencoder, module.text_encoder):
        assert not isinstance(part, FSDPModule) and not any(isinstance(p, DTensor) for p in part.parameters())
    # the EMA pairs each shard with the UNet's shard of the same tensor
    with torch.no_grad():
        for p in module.unet.parameters():
            p.add_(1.0)
    before = [e.full_tensor().clone() for e in module.ema_unet.parameters()]
    ema_update_(module.ema_unet.parameters(), module.unet.parameters(), 0.75)
    for b, e, p in zip(before, module.ema_unet.parameters(), module.unet.parameters(), strict=True):
        torch.testing.assert_close(e.full_tensor(), 0.75 * b + 0.25 * p.full_tensor())


def test_bf16_mixed_computes_in_bfloat16_over_float32_shards(mesh):
    reference, unet = tiny_unet(), tiny_unet()
    parallelize_unet(unet, mesh, precision="bf16-mixed")
    assert all(p.dtype == torch.float32 for p in unet.parameters())  # the master weights
    x, t, text = unet_inputs(reference)
    out = unet(x, t, encoder_hidden_states=text).sample
    assert out.dtype == torch.bfloat16
    want = reference(x, t, encoder_hidden_states=text).sample
    assert (out.float() - want).abs().max() < 0.05 * want.abs().max()  # bf16 has 8 bits of mantissa
    out.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in unet.parameters())


def test_32_true_matches_the_plain_unet(mesh):
    reference, unet = tiny_unet(), tiny_unet()
    parallelize_unet(unet, mesh, precision="32-true")
    x, t, text = unet_inputs(reference)
    torch.testing.assert_close(
        unet(x, t, encoder_hidden_states=text).sample, reference(x, t, encoder_hidden_states=text).sample
    )


@pytest.mark.parametrize(("choice", "kind"), [("ddp", "DDPStrategy"), ("fsdp", "FSDP2Strategy")])
def test_trainer_configs_choose_the_strategy(choice, kind):
    cfg = compose("train", [f"trainer={choice}", "trainer.devices=2"])
    strategy = instantiate(cfg.trainer.strategy)
    assert type(strategy).__name__ == kind
    if kind == "FSDP2Strategy":
        assert isinstance(strategy, FSDP2Strategy) and strategy._save_distributed_checkpoint
        assert strategy._tensor_parallel_size == 1  # pure data parallel: every process is one shard


def test_gradient_checkpointing_composes_with_sharding(mesh):
    plain = parallelize_unet(tiny_unet(), mesh)
    spec = {**TINY_SPEC, "gradient_checkpointing": True}
    checkpointed = parallelize_unet(build_components(spec).unet.train(), mesh)
    assert checkpointed.is_gradient_checkpointing and not plain.is_gradient_checkpointing
    x, t, text = unet_inputs(plain)
    for unet in (plain.train(), checkpointed):
        unet(x, t, encoder_hidden_states=text).sample.square().mean().backward()
    for a, b in zip(plain.parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad.full_tensor(), b.grad.full_tensor(), rtol=1e-5, atol=1e-7)
