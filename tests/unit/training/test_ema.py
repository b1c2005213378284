"""EMA update against a hand computation, its warmup, and the same update on sharded (DTensor) parameters."""

import os

import pytest
import torch

from zsnr.training import ema_decay, ema_update_


def test_update_matches_hand_computation():
    ema = [torch.tensor([1.0, 2.0]), torch.tensor([[0.0]])]
    params = [torch.tensor([3.0, 5.0]), torch.tensor([[10.0]])]
    ema_update_(ema, params, decay=0.9)
    # 0.9 * 1 + 0.1 * 3 = 1.2 ; 0.9 * 2 + 0.1 * 5 = 2.3 ; 0.9 * 0 + 0.1 * 10 = 1.0
    torch.testing.assert_close(ema[0], torch.tensor([1.2, 2.3]))
    torch.testing.assert_close(ema[1], torch.tensor([[1.0]]))
    assert torch.equal(params[0], torch.tensor([3.0, 5.0]))  # the model is untouched


def test_update_keeps_float32_for_low_precision_params():
    ema = [torch.zeros(3, dtype=torch.float32)]
    ema_update_(ema, [torch.full((3,), 1.0, dtype=torch.bfloat16)], decay=0.9999)
    assert ema[0].dtype == torch.float32
    torch.testing.assert_close(ema[0], torch.full((3,), 1e-4), rtol=1e-4, atol=0)


def test_decay_and_warmup():
    assert ema_decay(0, 0.9999) == 0.9999
    assert ema_decay(0, 0.9999, warmup=True) == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    assert ema_decay(8, 0.9999, warmup=True) == pytest.approx(0.5)  # 9 / 18
    assert ema_decay(10**7, 0.9999, warmup=True) == 0.9999
    with pytest.raises(ValueError, match="decay"):
        ema_decay(0, 1.5)


def test_mismatched_lists_are_refused():
    with pytest.raises(ValueError, match="must match"):
        ema_update_([torch.zeros(1)], [torch.zeros(1), torch.zeros(1)], 0.9)
    with pytest.raises(ValueError, match="shape"):
        ema_update_([torch.zeros(2)], [torch.zeros(3)], 0.9)


def test_update_on_dtensor_shards():
    """FSDP2 parameters are DTensors; the update works on each rank's local shard (one-process gloo mesh)."""
    import torch.distributed as dist
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    created = not dist.is_initialized()
    if created:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        ema = distribute_tensor(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), mesh, [Shard(0)])
        param = distribute_tensor(torch.tensor([[11.0, 12.0], [13.0, 14.0]]), mesh, [Shard(0)])
        ema_update_([ema], [param], decay=0.5)
        torch.testing.assert_close(ema.full_tensor(), torch.tensor([[6.0, 7.0], [8.0, 9.0]]))
    finally:
        if created:
            dist.destroy_process_group()
