"""trainer.precision=auto follows the accelerator the run is planned for (the memory check plans with the same)."""

import pytest
import torch

from zsnr.train import planned_accelerator, resolve_precision


@pytest.mark.parametrize("cuda", [False, True])
@pytest.mark.parametrize("accelerator", ["auto", "cpu", "gpu", "cuda"])
def test_auto_precision_is_bf16_exactly_where_the_plan_is_a_gpu(monkeypatch, cuda, accelerator):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda)
    assert planned_accelerator(accelerator) == ("gpu" if gpu else "cpu")
    assert resolve_precision("auto", accelerator) == ("bf16-mixed" if gpu else "32-true")


def test_an_explicit_precision_is_kept():
    assert resolve_precision("16-mixed", "cpu") == "16-mixed"
    assert resolve_precision("32-true", "gpu") == "32-true"
