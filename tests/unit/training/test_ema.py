"""EMA update against a hand computation, its warmup, and the same update on sharded (DTensor) parameters."""

import math
import os

import pytest
import torch

from zsnr.training import EMASchedule, ema_decay, ema_update_, window_decay


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


@pytest.mark.parametrize("warmup", [False, True])
def test_every_n_steps_keeps_the_horizon_in_steps(warmup):
    """Weights that jump from 0 to 1 and stay: after s steps the every-step EMA holds 1 - prod(decays of the s
    steps), and so does an EMA updated every N steps with window_decay, at every window boundary."""
    decay, n = 0.9, 4
    every_step = torch.zeros(1)
    every_n = torch.zeros(1)
    schedule = EMASchedule(decay, warmup, every_n_steps=n)
    for s in range(1, 17):
        ema_update_([every_step], [torch.ones(1)], ema_decay(s - 1, decay, warmup))
        window = schedule.step()
        if s % n:
            assert window is None
            continue
        ema_update_([every_n], [torch.ones(1)], window)
        expected = 1 - math.prod(ema_decay(k, decay, warmup) for k in range(s))
        torch.testing.assert_close(every_n, torch.tensor([expected]), rtol=1e-6, atol=0)
        torch.testing.assert_close(every_n, every_step, rtol=1e-6, atol=0)
    assert (schedule.updates, schedule.steps, schedule.pending) == (4, 16, 0)


def test_window_decay_is_the_product_and_the_schedule_resumes_where_it_stopped():
    assert window_decay(0, 3, 0.9) == pytest.approx(0.9**3)
    assert window_decay(8, 2, 0.9999, warmup=True) == pytest.approx((9 / 18) * (10 / 19))
    a, b = EMASchedule(0.99, True, 3), EMASchedule(0.99, True, 3)
    decays = [a.step() for _ in range(7)]
    assert [d is not None for d in decays] == [False, False, True, False, False, True, False]
    for _ in range(4):
        b.step()
    resumed = EMASchedule(0.99, True, 3)
    resumed.load_state_dict(b.state_dict())  # mid-window: one step pending
    assert [resumed.step() for _ in range(3)] == decays[4:]
    old = EMASchedule(0.99)
    old.load_state_dict({"ema_updates": 5})  # a checkpoint from before ema_every_n_steps
    assert (old.updates, old.steps, old.pending) == (5, 5, 0)
    with pytest.raises(ValueError, match="ema_every_n_steps must be an integer >= 1, got 0"):
        EMASchedule(0.99, every_n_steps=0)


@pytest.mark.gpu
def test_an_ema_in_host_memory_takes_in_cuda_weights(monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    import zsnr.training.ema

    monkeypatch.setattr(zsnr.training.ema, "HOST_CHUNK_BYTES", 2_000_000)  # 1.2 MB tensors: 3 chunks
    torch.manual_seed(0)
    params = [torch.randn(1000, 300, device="cuda") for _ in range(3)] + [torch.randn(7, device="cuda")]
    ema = [torch.randn(p.shape) for p in params]  # on the CPU
    expected = [0.9 * e + 0.1 * p.cpu() for e, p in zip(ema, params, strict=True)]
    ema_update_(ema, params, decay=0.9)
    for e, want in zip(ema, expected, strict=True):
        assert e.device.type == "cpu"
        torch.testing.assert_close(e, want)
