"""global batch = micro batch x world size x accumulation, and the error when it does not divide."""

import pytest

from zsnr.training import plan_batches, world_size


def test_paper_batch_on_various_world_sizes():
    assert plan_batches(2048, 32, 1).accumulate_grad_batches == 64
    assert plan_batches(2048, 32, 8).accumulate_grad_batches == 8
    assert plan_batches(2048, 32, 64).accumulate_grad_batches == 1
    plan = plan_batches(2048, 16, 32)
    assert plan.micro_batch_size * plan.world_size * plan.accumulate_grad_batches == 2048
    assert "2048 = micro-batch 16 x 32 processes x 4 accumulation" in plan.describe()


def test_error_names_the_numbers_and_what_fits():
    with pytest.raises(ValueError) as err:
        plan_batches(2048, 24, 8)
    message = str(err.value)
    assert "2048" in message and "24 x 8 = 192" in message and "micro_batch_size" in message
    assert "256" in message  # a micro batch that would fit 8 processes
    with pytest.raises(ValueError, match="global_batch_size=2048 .* 32 x 3"):
        plan_batches(2048, 32, 3)
    with pytest.raises(ValueError, match="positive"):
        plan_batches(0, 1, 1)


def test_world_size_from_trainer_arguments():
    assert world_size(4, 2) == 8
    assert world_size([0, 1, 2], 1) == 3
    assert world_size("2", 3) == 6
    assert world_size("0,1", 1) == 2
    assert world_size("auto", 2, accelerator="cpu") == 2
