"""The demo's statement of where its schedule puts the miniature against SD 2.1 (the paper's section 3.1 leak),
and the protocols make demo and make paper run."""

import math
import shutil

import pytest
import torch
from training_helpers import ROOT, compose

from zsnr.diffusion import alphas_cumprod, snr
from zsnr.experiments.demo import common_overrides, leak_against_sd, schedule_words
from zsnr.experiments.demo_metrics import prompt_noise_spread, w1_flawed_over_fixed
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


@pytest.mark.parametrize(
    ("experiment", "continues_base"),
    [("demo_flawed", True), ("paper_offset_noise", True),
     ("demo_fixed", False), ("paper_sd_v", False), ("paper_zsnr_eps", False)],
)  # fmt: skip
def test_flawed_arms_continue_the_bases_loss_and_fixed_arms_train_the_papers(
    tmp_path, experiment, continues_base
):
    # the flawed fine-tunes are the base's recipe continued, its loss weighting included; the fixed arms train the
    # paper's loss, lambda_t = 1 (section 3.2), whatever the base trains with: checked with demo_base as it is and
    # with a copy of the configs whose demo_base weights its loss by Min-SNR
    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "configs", configs)
    base_file = configs / "experiment" / "demo_base.yaml"
    base_file.write_text(
        base_file.read_text().replace("\ndiffusion:\n", "\ndiffusion:\n  loss_weighting: min_snr\n", 1)
    )
    for config_dir in (None, configs):
        base = compose("train", ["experiment=demo_base"], config_dir).diffusion.loss_weighting
        got = compose("train", [f"experiment={experiment}"], config_dir).diffusion.loss_weighting
        assert got == (base if continues_base else "plain"), (config_dir, base)
    assert compose("train", ["experiment=demo_base"], configs).diffusion.loss_weighting == "min_snr"


def test_make_paper_measures_the_demo_at_sd_schedule_and_at_its_shift():
    # make paper's two columns: the demo's protocol on both data families, and SD's own schedule (the leak 1/16 of
    # SD 2.1's at 16 px) on the family the sections measure; each protocol's runs as the demo composes them
    paper = compose("paper_report", [])
    leaks = {}
    for name, protocol in paper.protocols.items():
        demo_cfg = compose("demo", [f"out_dir={protocol.demo_dir}", *protocol.demo_overrides])
        assert paper.family in demo_cfg.families
        run = compose(
            "train", [f"experiment={demo_cfg.base.experiment}", *common_overrides(demo_cfg, paper.family)]
        )
        leaks[name] = (
            list(demo_cfg.families),
            leak_against_sd(run.diffusion.snr_shift, run.model.resolution),
        )
    assert leaks == {"x4": (["shapes", "scenes"], 0.25), "x1": (["shapes"], 0.0625)}
    assert (
        len({p.demo_dir for p in paper.protocols.values()}) == 2
    )  # each protocol's runs in a folder of its own


def test_make_demo_runs_one_family_by_default():
    # the default demo fits its time budget with one family's base; make paper runs both (above)
    assert list(compose("demo", []).families) == ["scenes"]


@pytest.mark.parametrize(
    ("flawed", "fixed", "ratio"), [(0.5, 0.1, 5.0), (0.3, 0.0, math.inf), (0.0, 0.0, 1.0), (0.05, 0.1, 0.5)]
)
def test_w1_flawed_over_fixed(flawed, fixed, ratio):
    # a fixed model at exactly the data's distribution (W1 0) makes the ratio unbounded, not 1e9
    w1 = lambda v: {"wasserstein_to_reference": v}  # noqa: E731
    assert w1_flawed_over_fixed(w1(flawed), w1(fixed)) == pytest.approx(ratio)


def test_prompt_noise_spread_separates_what_the_prompt_and_the_noise_add():
    # flat grey images whose value is a per-set offset plus a per-seed offset (uint8 units), so each image's mean
    # RGB is exactly (100 + a_set + b_seed) / 127.5 - 1 in every channel: the two spreads are the population stds
    a = torch.tensor([0.0, 40.0, 80.0])  # sets: std 32.66 uint8 units
    b = torch.tensor([0.0, 10.0, 20.0, 30.0])  # seeds: std 11.18
    sets = {
        f"set{i}": torch.cat([(100 + ai + b).to(torch.uint8), torch.full((2,), 7, dtype=torch.uint8)])
        .view(-1, 1, 1, 1)
        .expand(-1, 3, 4, 4)
        .contiguous()
        for i, ai in enumerate(a)
    }  # two more images per set with other seeds: not shared, not counted
    got = prompt_noise_spread(sets, seeds=4)
    assert got["over_prompts"] == pytest.approx(math.sqrt(3200 / 3) / 127.5, rel=1e-5)
    assert got["over_noise"] == pytest.approx(math.sqrt(125) / 127.5, rel=1e-5)
    assert got["seeds"] == 4
    with pytest.raises(ValueError, match="fewer than 7"):
        prompt_noise_spread(sets, seeds=7)
