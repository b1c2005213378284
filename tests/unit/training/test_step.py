"""train_step against the update written out with torch's own pieces (backward of loss / A per micro-batch,
clip_grad_norm_, AdamW, LambdaLR, lerp for the EMA), and what a skipped step leaves untouched."""

import copy

import pytest
import torch
from torch import nn

from zsnr.training.ema import EMA, EMASchedule
from zsnr.training.step import SkipCounter, Update, every_n_steps, train_step

DECAY = 0.9


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _window(n: int, seed: int, bad: int | None = None) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    window = [{"x": torch.randn(5, 4, generator=g), "y": torch.randn(5, 1, generator=g)} for _ in range(n)]
    if bad is not None:
        window[bad]["y"][0] = float("nan")
    return window


def _objective(model: nn.Module):
    def objective(batch):
        per_sample = (model(batch["x"]) - batch["y"]).square().mean(dim=1)
        return per_sample, torch.zeros(len(per_sample), dtype=torch.long)

    return objective


def _parts(model: nn.Module, max_grad_norm: float = 0.05):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (s + 1) / 4)
    average = copy.deepcopy(model).requires_grad_(False)
    ema = EMA(average, model, EMASchedule(DECAY))
    update = Update(list(model.parameters()), optimizer, scheduler, ema, max_grad_norm, SkipCounter(3))
    return update, average


def test_train_step_is_the_update_written_out_with_torch():
    ours = _model()
    theirs = copy.deepcopy(ours)
    update, average = _parts(ours)
    optimizer = torch.optim.AdamW(theirs.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (s + 1) / 4)
    their_average = copy.deepcopy(theirs).requires_grad_(False)
    for step in range(3):
        window = _window(3, seed=step)
        result = train_step(update, window, _objective(ours))
        losses = []
        for batch in window:
            loss = (theirs(batch["x"]) - batch["y"]).square().mean()
            (loss / len(window)).backward()
            losses.append(loss.detach())
        norm = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.05)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        for e, p in zip(their_average.parameters(), theirs.parameters(), strict=True):
            e.lerp_(p.detach(), 1 - DECAY)
        assert result.applied and float(result.grad_norm) == pytest.approx(float(norm), rel=1e-6)
        assert float(norm) > 0.05  # the clipping did something
        torch.testing.assert_close(result.micro_losses, torch.stack(losses), rtol=1e-6, atol=0)
        for a, b in zip([*ours.parameters(), *average.parameters()],
                        [*theirs.parameters(), *their_average.parameters()], strict=True):  # fmt: skip
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert update.ema.schedule.updates == 3 and scheduler.last_epoch == update.scheduler.last_epoch == 3


@pytest.mark.parametrize("bad", [0, 2])
def test_a_non_finite_micro_batch_skips_the_whole_step(bad):
    model = _model()
    update, average = _parts(model)
    before = copy.deepcopy(model.state_dict())
    result = train_step(update, _window(3, seed=0, bad=bad), _objective(model))
    assert not result.applied and not torch.isfinite(result.micro_losses[bad])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in average.state_dict().items())
    assert (
        not update.optimizer.state and update.scheduler.last_epoch == 0 and update.ema.schedule.updates == 0
    )
    assert all(p.grad is None for p in model.parameters())
    assert (update.skips.skipped, update.skips.consecutive) == (1, 1)
    assert not every_n_steps(result, 0, 1)
    result = train_step(update, _window(3, seed=1), _objective(model))  # a good window: counts reset
    assert result.applied and every_n_steps(result, 4, 2) and not every_n_steps(result, 4, 3)
    assert (update.skips.skipped, update.skips.consecutive) == (1, 0) and update.ema.schedule.updates == 1


def test_too_many_skips_in_a_row_stop_with_a_message():
    model = _model()
    update, _ = _parts(model)
    for _ in range(2):
        train_step(update, _window(2, seed=0, bad=1), _objective(model))
    with pytest.raises(RuntimeError, match="3 optimizer steps in a row had a non-finite loss"):
        train_step(update, _window(2, seed=0, bad=1), _objective(model))


def test_gradient_sync_is_asked_for_on_the_last_micro_batch_only():
    seen = []

    class Recording:
        def gradient_sync(self, enabled):
            seen.append(enabled)
            return torch.enable_grad()

        def backward(self, loss):
            loss.backward()

        def all_finite(self, bad):
            seen.append("decide")
            return not bool(bad)

    model = _model()
    update, _ = _parts(model)
    train_step(update, _window(4, seed=0), _objective(model), Recording())
    assert seen == [False, False, False, True, "decide"]
