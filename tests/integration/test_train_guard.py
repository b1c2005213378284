"""A non-finite loss or gradient never reaches the weights, and a skipped step is not a step: no optimizer,
LR-scheduler or EMA update, global_step stays, the run still makes max_steps real updates; K in a row stop it."""

import pytest
import pytorch_lightning as pl
import torch
from training_helpers import TINY_SPEC, ZERO_SNR

from zsnr.data.datamodule import Windows
from zsnr.training import AtomicCheckpoint, DiffusionModule

NAN = float("nan")


class Sequence(torch.utils.data.IterableDataset):
    """Latent batches filled with values[i] (then the last value forever); counts what was taken."""

    def __init__(self, values: list[float]) -> None:
        self.values, self.taken = values, 0

    def __iter__(self):
        while True:
            value = self.values[min(self.taken, len(self.values) - 1)]
            self.taken += 1
            yield {"latent_mean": torch.full((2, 4, 16, 16), value), "text_states": torch.zeros(2, 77, 32)}


def _fit(values, steps, accumulate=1, callbacks=(), **module_kwargs):
    module = DiffusionModule(TINY_SPEC, ZERO_SNR, warmup_steps=10, **module_kwargs)
    before = [p.detach().clone() for p in module.unet.parameters()]
    data = Sequence(values)
    trainer = pl.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
    )  # fmt: skip
    error = None
    try:
        trainer.fit(module, Windows(torch.utils.data.DataLoader(data, batch_size=None), accumulate))
    except RuntimeError as exn:
        error = exn
    changed = any(not torch.equal(a, b) for a, b in zip(before, module.unet.parameters(), strict=True))
    return module, trainer, data.taken, changed, error


def _adam_steps(trainer):
    return {int(s["step"]) for s in trainer.optimizers[0].state.values()}


def test_skipped_steps_are_not_steps_and_the_run_still_makes_max_steps_updates():
    clean, clean_trainer, _, _, _ = _fit([0.5], steps=3)
    module, trainer, taken, changed, error = _fit([0.5, NAN, NAN, 0.5], steps=3)
    assert error is None and changed
    assert trainer.global_step == clean_trainer.global_step == 3
    assert taken >= 5  # 3 real steps needed 5 batches (Lightning may prefetch one more)
    assert module.skips.skipped == 2 and module.skips.consecutive == 0
    assert module.ema.schedule.updates == clean.ema.schedule.updates == 3
    assert _adam_steps(trainer) == _adam_steps(clean_trainer) == {3}
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.last_epoch == 3  # the warmup counts real updates only
    assert trainer.optimizers[0].param_groups[0]["lr"] == clean_trainer.optimizers[0].param_groups[0]["lr"]


def test_a_bad_micro_batch_skips_its_whole_accumulation_window():
    module, trainer, taken, changed, error = _fit([NAN, 0.5], steps=1, accumulate=2)
    assert error is None and changed
    assert trainer.global_step == 1 and module.skips.skipped == 1 and module.ema.schedule.updates == 1
    assert taken >= 4  # window 1 (nan, good) skipped, window 2 (good, good) applied
    assert _adam_steps(trainer) == {1}


def test_nan_loss_stops_after_k_skipped_steps_in_a_row_with_the_weights_untouched():
    module, trainer, _, changed, error = _fit([NAN], steps=10, max_consecutive_skips=3)
    assert error is not None and "3 optimizer steps in a row had a non-finite loss" in str(error)
    assert not changed and module.skips.skipped == 3 and module.ema.schedule.updates == 0
    assert trainer.global_step == 0 and not trainer.optimizers[0].state


def test_non_finite_gradients_are_dropped_before_the_optimizer():
    module = DiffusionModule(TINY_SPEC, ZERO_SNR, max_consecutive_skips=4)
    module.unet.conv_out.bias.register_hook(lambda g: g * float("inf"))  # finite loss, infinite gradient
    before = [p.detach().clone() for p in module.unet.parameters()]
    trainer = pl.Trainer(max_steps=10, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    with pytest.raises(RuntimeError, match="4 optimizer steps in a row"):
        trainer.fit(module, torch.utils.data.DataLoader(Sequence([0.5]), batch_size=None))
    assert module.skips.skipped == 4 and float(module.last_step.grad_norm) == float("inf")
    for a, b in zip(before, module.unet.parameters(), strict=True):
        assert torch.equal(a, b)


def test_checkpoints_are_written_for_real_steps_only_with_current_skip_counts(tmp_path):
    checkpoints = AtomicCheckpoint(tmp_path, every_n_steps=1, keep_last=None)
    _, trainer, _, _, error = _fit([0.5, NAN, 0.5], steps=2, callbacks=[checkpoints])
    assert error is None and trainer.global_step == 2
    assert sorted(p.name for p in tmp_path.glob("step=*.ckpt")) == ["step=000001.ckpt", "step=000002.ckpt"]
    saved = torch.load(tmp_path / "step=000002.ckpt", weights_only=False)["zsnr"]
    assert saved["skipped_steps"] == 1 and saved["ema_updates"] == 2 and saved["consecutive_skips"] == 0
