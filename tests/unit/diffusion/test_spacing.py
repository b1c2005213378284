"""Timestep spacing against the paper's Table 2 and diffusers' DDIMScheduler."""

import pytest
import torch

from zsnr.diffusion import SPACINGS, select_timesteps

# Table 2, T = 1000, S = 10, 1-based; ours are 0-based and descending
TABLE2 = {
    "leading": [1, 101, 201, 301, 401, 501, 601, 701, 801, 901],
    "linspace": [1, 112, 223, 334, 445, 556, 667, 778, 889, 1000],
    "trailing": [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000],
}


@pytest.mark.parametrize("spacing", SPACINGS)
def test_table2(spacing):
    ts = select_timesteps(1000, 10, spacing)
    assert ts.dtype == torch.long
    assert ts.tolist() == [t - 1 for t in reversed(TABLE2[spacing])]


def test_only_trailing_starts_at_T():
    for S in (5, 10, 25, 50):
        assert select_timesteps(1000, S, "trailing")[0] == 999
        assert select_timesteps(1000, S, "linspace")[0] == 999
        assert select_timesteps(1000, S, "leading")[0] < 999


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("S", [1, 3, 7, 10, 33, 50, 999, 1000])
def test_against_diffusers(spacing, S):
    from diffusers import DDIMScheduler

    sch = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=0)
    sch.set_timesteps(S)
    assert select_timesteps(1000, S, spacing).tolist() == sch.timesteps.tolist()


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("T,S", [(1000, 1000), (1000, 999), (10, 3), (7, 7), (1000, 1)])
def test_distinct_descending_in_range(spacing, T, S):
    ts = select_timesteps(T, S, spacing)
    assert len(ts) == S and len(set(ts.tolist())) == S
    assert (ts[1:] < ts[:-1]).all() and ts.min() >= 0 and ts.max() <= T - 1


@pytest.mark.parametrize("S", [0, -1, 1001])
def test_num_steps_out_of_range(S):
    with pytest.raises(ValueError, match="1..1000"):
        select_timesteps(1000, S, "trailing")


def test_unknown_spacing():
    with pytest.raises(ValueError, match="trailing"):
        select_timesteps(1000, 10, "uniform")


def test_start_caps_the_first_timestep():
    # trailing, T = 1000, S = 10 (Table 2, 0-based): 999, 899, ..., 99; capped at 998 only the first moves
    ts = select_timesteps(1000, 10, "trailing", start=998)
    assert ts.tolist() == [998, *range(899, 0, -100)]
    # a cap below the second timestep merges them: distinct and descending still
    assert select_timesteps(1000, 10, "trailing", start=850).tolist() == [850, *range(799, 0, -100)]
    assert select_timesteps(1000, 10, "leading", start=998).equal(select_timesteps(1000, 10, "leading"))
    with pytest.raises(ValueError, match="start must be in 0..999"):
        select_timesteps(1000, 10, start=1000)
