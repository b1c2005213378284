"""Host syncs of a training run, counted: at most one device-to-host read per optimizer step (the skip
decision), none per micro-batch, the rest on the steps that log.

Counted over launch/train.py's own train() (tiny model, 8 steps, accumulation 2, metrics every 4 steps) with a
TorchDispatchMode that sees every `aten._local_scalar_dense` (what .item(), float(), bool() of a tensor run),
`aten.is_nonzero`, `aten.nonzero` and `aten.equal`. On the CPU every read looks alike; what would be a device
sync on a GPU is told apart by the tensor read: AdamW's default (foreach) implementation reads each
parameter's step counter with .item(), and those counters live on the host even when the parameters are on a
GPU, so they cost Python work but no sync. module.fused_adamw=true reads none.
"""

import pytest
import pytorch_lightning as pl
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from training_helpers import compose, tiny_run, train_with

READS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.equal.default,
}
STEPS, EVERY = 8, 4


class CountReads(TorchDispatchMode):
    """The address of every tensor read back to the host since the last take()."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[int] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in READS:
            self.reads.append(args[0].data_ptr())
        return func(*args, **(kwargs or {}))

    def take(self) -> list[int]:
        reads, self.reads = self.reads, []
        return reads


class PerStep(pl.Callback):
    """(device syncs, step-counter reads) per optimizer step. Runs after the run's own callbacks, so a step's
    logging counts in that step."""

    def __init__(self, counter: CountReads) -> None:
        self.counter, self.rows = counter, {}

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        counters = {s["step"].data_ptr() for s in trainer.optimizers[0].state.values() if "step" in s}
        reads = self.counter.take()
        host = sum(1 for r in reads if r in counters)
        self.rows[trainer.global_step] = (len(reads) - host, host)


def _count(tmp_path, data_root, fused: bool) -> dict[int, tuple[int, int]]:
    overrides = [*tiny_run(tmp_path / "run", data_root, steps=STEPS), "global_batch_size=8", "micro_batch_size=4",
                 f"metrics.every_n_steps={EVERY}", "validation.every_n_steps=0", "samples.every_n_steps=0",
                 f"module.fused_adamw={str(fused).lower()}"]  # fmt: skip
    cfg = compose("train", overrides)
    counter = CountReads()
    per_step = PerStep(counter)
    with counter:
        out = train_with(cfg, per_step)
    assert out["trainer"].global_step == STEPS and out["trainer"].datamodule.micro_batches_per_step == 2
    return per_step.rows


@pytest.mark.parametrize("fused", [False, True], ids=["foreach_adamw", "fused_adamw"])
def test_one_device_sync_per_optimizer_step_and_none_per_micro_batch(tmp_path, data_root, fused):
    rows = _count(tmp_path, data_root, fused)
    assert sorted(rows) == list(range(1, STEPS + 1))
    # step 1 also counts the setup before it (the model's construction, the data's first shards)
    quiet = {step: device for step, (device, _) in rows.items() if step % EVERY and step > 1}
    assert quiet == {step: 1 for step in quiet}, rows  # the skip decision; 2 per step if per micro-batch
    logging = [device for step, (device, _) in rows.items() if step % EVERY == 0]
    assert max(logging) <= 2, rows  # the decision and the metrics line's gradient norm
    host = {step: h for step, (_, h) in rows.items() if step > 1}
    if fused:
        assert set(host.values()) == {0}, rows
    else:  # one step-counter read per parameter tensor per step (208 for the tiny UNet)
        params = sum(1 for _ in out_params())
        assert set(host.values()) == {params}, (rows, params)


def out_params():
    from training_helpers import TINY_SPEC, ZERO_SNR

    from zsnr.training import DiffusionModule

    return DiffusionModule(TINY_SPEC, ZERO_SNR).unet.parameters()
