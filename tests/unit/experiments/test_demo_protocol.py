"""The demo's statement of where its schedule puts the miniature against SD 2.1 (the paper's section 3.1 leak)."""

import pytest
from training_helpers import compose

from zsnr.diffusion import alphas_cumprod, snr
from zsnr.experiments.demo import leak_against_sd, schedule_words
from zsnr.models.schedule import Schedule


@pytest.mark.parametrize(("shift", "resolution"), [(1.0, 16), (4.0, 16), (8.0, 16), (16.0, 16), (1.0, 64)])
def test_leak_against_sd_is_what_the_schedules_give(shift, resolution):
    # the image mean of n values per channel is seen at SNR n * SNR(T): the run's n = resolution^2 pixels with
    # its shifted schedule, against SD 2.1's 64 x 64 latents with SD's own (SNR(T) = 0.0047)
    sd = 64 * 64 * snr(alphas_cumprod(Schedule(rescale_zero_terminal_snr=False).make_betas()))[-1].item()
    run = Schedule(rescale_zero_terminal_snr=False, snr_shift=shift).make_betas()
    ours = resolution**2 * snr(alphas_cumprod(run))[-1].item()
    assert leak_against_sd(shift, resolution) == pytest.approx(ours / sd, rel=1e-9)


def test_schedule_words():
    assert "0.0625x as strongly" in schedule_words(1.0, 16)  # the demo's 16 px at SD's schedule: 16x weaker
    assert "x 16 (`diffusion.snr_shift`)" in schedule_words(16.0, 16) and " 1x as strongly" in schedule_words(
        16.0, 16
    )


@pytest.mark.parametrize(
    "experiment",
    ["demo_base", "demo_flawed", "demo_fixed", "paper_sd_v", "paper_zsnr_eps", "paper_offset_noise"],
)
def test_every_demo_and_paper_run_trains_on_the_bases_shifted_schedule(experiment):
    # a fine-tune on another shift than its base's would be a schedule change, not the paper's protocol; the
    # demo's shift (4 at 16 px) puts the leak at a quarter of SD 2.1's
    cfg = compose("train", [f"experiment={experiment}"])
    assert cfg.diffusion.snr_shift == 4 and cfg.model.resolution == 16
    assert leak_against_sd(cfg.diffusion.snr_shift, cfg.model.resolution) == 0.25
