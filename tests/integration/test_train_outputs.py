"""What a run leaves behind: checkpoints that load for sampling, the latent cache, the command line, loggers."""

import json
import os
import subprocess
import sys

import pytest
import torch
from training_helpers import ROOT, compose, launch_module, tiny_run

from zsnr.models.schedule import Schedule
from zsnr.training import load_for_inference


@pytest.fixture(scope="module")
def flawed_run(tmp_path_factory, data_root):
    run_dir = tmp_path_factory.mktemp("flawed")
    cfg = compose("train", [*tiny_run(run_dir, data_root, steps=2), "diffusion=sd_flawed"])
    return launch_module("train").train(cfg), cfg


def test_checkpoint_loads_for_inference_with_its_schedule(flawed_run, tmp_path):
    out, cfg = flawed_run
    model = load_for_inference(out["last_checkpoint"])
    assert model.schedule == Schedule(**cfg.diffusion) and model.schedule.prediction_type == "epsilon"
    assert model.step == 2 and model.resolution == 32
    ckpt = torch.load(out["last_checkpoint"], weights_only=True)
    for name, value in model.unet.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][f"ema_unet.{name}"])
    for name, value in model.text_encoder.state_dict().items():  # the random frozen parts came along
        assert torch.equal(value, ckpt["frozen"]["text_encoder"][name])
    unet, vae, text_encoder, tokenizer, schedule = model
    images = model.generate(["a white background", "a solid black background"], [0, 1], num_steps=3)
    assert images.shape == (2, 3, 32, 32) and images.abs().max() <= 1
    ckpt["zsnr"]["betas"] = ckpt["zsnr"]["betas"] * 1.01  # a checkpoint whose schedule does not match
    torch.save(ckpt, tmp_path / "tampered.ckpt")
    with pytest.raises(ValueError, match="betas saved with the checkpoint differ"):
        load_for_inference(tmp_path / "tampered.ckpt")


def test_latent_cache_matches_on_the_fly_encoding_and_trains(tmp_path, data_root):
    from zsnr.data import WebDataModule
    from zsnr.models import Tokenizer
    from zsnr.training import DiffusionModule

    run = tiny_run(tmp_path / "run", data_root, steps=2)
    data = [o for o in run if o.startswith("data.")]
    cfg = compose(
        "encode_latents", ["model=tiny", "data=synthetic", *data, f"out={tmp_path}/lat", "batch_size=16"]
    )
    pattern = launch_module("encode_latents").encode_latents(cfg)
    meta = json.loads((tmp_path / "lat" / "latents.json").read_text())
    assert meta["latent_channels"] == 4 and meta["scaling_factor"] == pytest.approx(0.18215)

    cached = WebDataModule(urls=pattern, decode="latents", resolution=32, batch_size=8, num_workers=0)
    batch = next(iter(cached.train_dataloader()))
    module = DiffusionModule(dict(compose("train", ["model=tiny"]).model), {})
    images = WebDataModule(
        root=str(data_root), synthetic=dict(cfg.data.synthetic), resolution=32, batch_size=128, num_workers=0,
        filters=dict(cfg.data.filters), tokenizer=Tokenizer(),
    )  # fmt: skip
    reference = next(iter(images.train_dataloader()))
    index = [reference["key"].index(k) for k in batch["key"]]
    x0, text = module.encode_batch({**reference, "image": reference["image"][index],
                                    "input_ids": reference["input_ids"][index]})  # fmt: skip
    torch.testing.assert_close(batch["latents"], x0, atol=4e-3, rtol=2e-3)  # float16 storage
    torch.testing.assert_close(batch["text_states"], text, atol=4e-3, rtol=2e-3)

    out = launch_module("train").train(
        compose("train", [*run, f"data.urls={pattern}", "data.decode=latents", "samples.every_n_steps=0"])
    )
    assert out["trainer"].global_step == 2


def test_command_line_multirun_with_the_wandb_logger(tmp_path, data_root):
    """`python launch/train.py -m ...` runs one job per value; logger=wandb works offline."""
    overrides = [o for o in tiny_run("X", data_root, steps=1) if not o.startswith(("run_dir", "logger"))]
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "launch/train.py", "-m", "seed=0,1", "logger=wandb", *overrides,
           f"hydra.sweep.dir={tmp_path}", "samples.every_n_steps=0"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for job in ("0", "1"):
        assert (tmp_path / job / "checkpoints" / "last.ckpt").exists()
        assert list((tmp_path / job / "wandb").glob("offline-run-*"))
        assert "seed: " + job in (tmp_path / job / "config.yaml").read_text()
