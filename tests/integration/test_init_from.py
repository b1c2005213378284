"""init_from=PATH: start a run from trained UNet weights with a new diffusion config, a fresh optimizer and step 0.

The paper's protocol (section 5): SD 2.1-base, trained with epsilon-prediction on SD's schedule, fine-tuned as a
v-prediction model on the rescaled schedule. Here: a tiny epsilon checkpoint on SD's schedule, started as a
zero-SNR v-prediction run. resume=, by contrast, continues a run and refuses a changed schedule.
"""

import pytest
import torch
from tiny_checkpoint import TINY_SPEC, ZERO_SNR, make_tiny_checkpoint
from training_helpers import compose, launch_module, tiny_run

from zsnr.diffusion import alphas_cumprod, make_betas, rescale_zero_terminal_snr
from zsnr.export import export_diffusers
from zsnr.sampling import load_for_inference
from zsnr.training import DiffusionModule

SD_FLAWED = {"betas": "scaled_linear", "rescale_zero_terminal_snr": False, "prediction_type": "epsilon",
             "spacing": "leading", "guidance_rescale": 0.0}  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny flawed (epsilon, SD schedule) checkpoint whose EMA and raw UNets differ (EMA decay 0.5)."""
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("base") / "base.ckpt", steps=3, diffusion=SD_FLAWED)
    return path, torch.load(path, map_location="cpu", weights_only=True)


def _unet_from(ckpt: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


@pytest.mark.parametrize("weights, prefix", [("ema", "ema_unet."), ("raw", "unet.")])
def test_init_from_checkpoint_takes_the_chosen_unet_under_a_new_schedule(base, weights, prefix):
    path, ckpt = base
    expected = _unet_from(ckpt, prefix)
    other = _unet_from(ckpt, "unet." if weights == "ema" else "ema_unet.")
    assert any(not torch.equal(expected[k], other[k]) for k in expected)  # the choice is visible
    module = DiffusionModule(model=TINY_SPEC, diffusion=ZERO_SNR, init_from=str(path), init_weights=weights)
    for unet in (module.unet, module.ema_unet):  # the run's EMA starts from the same weights
        state = unet.state_dict()
        assert state.keys() == expected.keys()
        for key, value in expected.items():
            assert torch.equal(state[key], value), key
    assert module.schedule.prediction_type == "v_prediction" and module.schedule.rescale_zero_terminal_snr
    assert module.micro_step == 0 and module.ema.schedule.updates == 0
    # the random frozen parts (model=tiny) come from the checkpoint too: the UNet was trained against them
    for name, state in ckpt["frozen"].items():
        for key, value in state.items():
            assert torch.equal(module._frozen[name].state_dict()[key], value), (name, key)


def test_train_py_init_from_starts_at_step_zero_with_the_new_schedule(base, tmp_path, data_root, capsys):
    path, ckpt = base
    train = launch_module("train").train
    run = tmp_path / "fine_tune"
    overrides = [*tiny_run(run, data_root, steps=2), "samples.every_n_steps=0", "diffusion=zero_snr"]
    result = train(compose("train", [*overrides, f"init_from={path}", "metrics.every_n_steps=1"]))
    printed = capsys.readouterr().out  # not a terminal: TrainMetrics prints one line per metrics interval
    assert "step 1/2  loss " in printed and "step 2/2  loss " in printed and "images/s" in printed
    out = torch.load(result["last_checkpoint"], map_location="cpu", weights_only=True)
    assert out["global_step"] == 2 and out["zsnr"]["micro_step"] == 4  # not the base's 3 steps + 2
    assert out["hyper_parameters"]["init_from"] == str(path)
    zero = rescale_zero_terminal_snr(make_betas("scaled_linear"))
    assert torch.equal(out["zsnr"]["betas"].double(), zero) and alphas_cumprod(zero)[-1] == 0
    assert out["lr_schedulers"][0]["last_epoch"] == 2  # a fresh LR schedule (warmup from its start)
    assert ckpt["optimizer_states"][0]["state"][0]["step"] == 3
    assert out["optimizer_states"][0]["state"][0]["step"] == 2  # a fresh optimizer
    # resume is not init: it continues a run and refuses a changed schedule, naming what to do
    with pytest.raises(ValueError, match="another noise schedule"):
        train(compose("train", [*tiny_run(run, data_root, steps=3), "samples.every_n_steps=0",
                                "diffusion=sd_flawed", "resume=auto"]))  # fmt: skip


def test_init_from_an_exported_diffusers_folder(base, tmp_path):
    path, ckpt = base
    folder = export_diffusers(load_for_inference(path), tmp_path / "export", audit=False)
    module = DiffusionModule(model=TINY_SPEC, diffusion=ZERO_SNR, init_from=str(folder))
    ema = _unet_from(ckpt, "ema_unet.")  # an export holds the EMA UNet
    for key, value in module.unet.state_dict().items():
        assert torch.equal(value, ema[key]), key
    module = DiffusionModule(model=TINY_SPEC, diffusion=ZERO_SNR, init_from=str(folder / "unet"))
    assert torch.equal(module.unet.conv_in.weight, ema["conv_in.weight"])


def test_init_from_errors_name_the_problem(base, tmp_path):
    path, _ = base
    with pytest.raises(FileNotFoundError, match="init_from=.*nowhere"):
        DiffusionModule(model=TINY_SPEC, diffusion=ZERO_SNR, init_from=str(tmp_path / "nowhere"))
    wider = {**TINY_SPEC, "unet": {"block_out_channels": [16, 32]}}
    with pytest.raises(ValueError, match="does not fit this run's UNet"):
        DiffusionModule(model=wider, diffusion=ZERO_SNR, init_from=str(path))
    with pytest.raises(ValueError, match="init_weights must be one of"):
        DiffusionModule(model=TINY_SPEC, diffusion=ZERO_SNR, init_from=str(path), init_weights="best")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        DiffusionModule(model=TINY_SPEC, diffusion=ZERO_SNR, init_from=str(tmp_path / "empty_run"))
