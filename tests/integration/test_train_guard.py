"""A non-finite loss or gradient never reaches the weights; K bad batches in a row stop training."""

import pytest
import pytorch_lightning as pl
import torch
from training_helpers import TINY_SPEC, ZERO_SNR, RepeatedBatch

from zsnr.training import DiffusionModule, NonFiniteGuard


class LatentBatches(pl.LightningDataModule):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.batch = {"latent_mean": torch.full((2, 4, 16, 16), value), "text_states": torch.zeros(2, 77, 32)}

    def train_dataloader(self):
        return torch.utils.data.DataLoader(RepeatedBatch(self.batch), batch_size=None)


def _fit(module, data, guard, steps):
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[guard],
    )  # fmt: skip
    trainer.fit(module, datamodule=data)


def _weights(module):
    return [p.detach().clone() for p in module.unet.parameters()]


def test_nan_loss_is_skipped_and_stops_after_k_in_a_row():
    module = DiffusionModule(TINY_SPEC, ZERO_SNR)
    before = _weights(module)
    guard = NonFiniteGuard(max_consecutive=3)
    with pytest.raises(RuntimeError, match="3 batches in a row had a non-finite loss or gradient"):
        _fit(module, LatentBatches(float("nan")), guard, steps=10)
    assert guard.skipped == 3
    for a, b in zip(before, _weights(module), strict=True):
        assert torch.equal(a, b)


def test_non_finite_gradients_are_dropped_before_the_optimizer():
    module = DiffusionModule(TINY_SPEC, ZERO_SNR)
    module.unet.conv_out.bias.register_hook(lambda g: g * float("inf"))  # finite loss, infinite gradient
    before = _weights(module)
    guard = NonFiniteGuard(max_consecutive=100)
    _fit(module, LatentBatches(0.5), guard, steps=4)
    assert guard.skipped == 4 and guard.consecutive == 4
    for a, b in zip(before, _weights(module), strict=True):
        assert torch.equal(a, b)
