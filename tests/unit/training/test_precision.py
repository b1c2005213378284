"""trainer.precision=auto follows the accelerator the run is planned for (the memory check plans with the same)."""

import pytest
import torch

from zsnr.train import planned_accelerator, resolve_precision

# (trainer.accelerator, CUDA visible) -> (plan, precision auto): a CUDA device only where CUDA is there; Apple's mps
# (unified memory) and a gpu request without CUDA (Lightning then picks mps or refuses) plan as the host
EXPECTED = {
    ("auto", False): ("cpu", "32-true"),
    ("auto", True): ("gpu", "bf16-mixed"),
    ("cpu", False): ("cpu", "32-true"),
    ("cpu", True): ("cpu", "32-true"),
    ("gpu", False): ("cpu", "32-true"),
    ("gpu", True): ("gpu", "bf16-mixed"),
    ("cuda", False): ("cpu", "32-true"),
    ("cuda", True): ("gpu", "bf16-mixed"),
    ("mps", False): ("cpu", "32-true"),
    ("mps", True): ("cpu", "32-true"),
}


@pytest.mark.parametrize(("accelerator", "cuda"), sorted(EXPECTED))
def test_auto_precision_is_bf16_exactly_where_the_plan_is_a_cuda_device(monkeypatch, accelerator, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    plan, precision = EXPECTED[accelerator, cuda]
    assert planned_accelerator(accelerator) == plan
    assert resolve_precision("auto", accelerator) == precision


def test_an_explicit_precision_is_kept():
    assert resolve_precision("16-mixed", "cpu") == "16-mixed"
    assert resolve_precision("32-true", "gpu") == "32-true"


def test_an_accelerator_nothing_plans_for_is_refused():
    with pytest.raises(ValueError, match="tpu"):
        planned_accelerator("tpu")
