"""What a run leaves behind: checkpoints that load for sampling, the latent cache, the command line, loggers."""

import json
import os
import shlex
import subprocess
import sys

import pytest
import torch
from hydra.errors import InstantiationException
from training_helpers import ROOT, compose, launch_module, tiny_run

from zsnr.data import to_model_range
from zsnr.models.schedule import Schedule
from zsnr.sampling import load_for_inference, mean_brightness


@pytest.fixture(scope="module")
def flawed_run(tmp_path_factory, data_root):
    run_dir = tmp_path_factory.mktemp("flawed")
    overrides = [*tiny_run(run_dir, data_root, steps=2), "diffusion=sd_flawed", "samples.dtype=bfloat16"]
    cfg = compose("train", overrides)
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


def test_sample_grids_show_the_ema_and_the_online_weights_labelled(flawed_run):
    out, cfg = flawed_run
    samples = out["run_dir"] / "samples"
    records = {w: json.loads((samples / f"step=000002_{w}.json").read_text()) for w in ("ema", "online")}
    for weights, record in records.items():
        assert record["weights"] == weights and (samples / f"step=000002_{weights}.png").exists()
    # after 2 steps the EMA (warmup decay 0.1, then 0.18) is not the online UNet: different images
    ema, online = ([r["brightness"] for r in records[w]["images"]] for w in ("ema", "online"))
    assert ema != online
    # samples.dtype=bfloat16: the grid ran under bf16 autocast; float32 from the checkpoint's online UNet gives
    # nearly, not exactly, the same brightness (bf16 moves pixels by < 0.031 on the tiny model: test_sample.py)
    assert all(r["dtype"] == "bfloat16" for r in records.values())
    model = load_for_inference(out["run_dir"] / "checkpoints" / "last.ckpt", use_ema=False)
    grid = records["online"]
    prompts, seeds = [r["prompt"] for r in grid["images"]], [r["seed"] for r in grid["images"]]
    exact = mean_brightness(
        model.generate(prompts, seeds, num_steps=grid["num_steps"], guidance_scale=grid["guidance_scale"])
    )
    assert 0 < (exact - torch.tensor(online)).abs().max() < 0.031


def test_latent_cache_stores_the_posterior_and_refuses_another_model(tmp_path, data_root):
    from zsnr.data import WebDataModule
    from zsnr.models import Tokenizer, encoder_signature
    from zsnr.training import DiffusionModule

    train = launch_module("train").train
    run = tiny_run(tmp_path / "run", data_root, steps=2)
    data = [o for o in run if o.startswith("data.")]
    overrides = ["model=tiny", "model.resolution=32", "data=synthetic", *data]
    cfg = compose("encode_latents", [*overrides, f"out={tmp_path}/lat", "batch_size=16"])
    made = launch_module("encode_latents").encode_latents(cfg, overrides)
    manifest = json.loads(made["manifest"].read_text())
    assert manifest["encoder"] == encoder_signature(dict(cfg.model)) and manifest["dtype"] == "float32"
    assert manifest["encoder"]["scaling_factor"] == pytest.approx(0.18215)
    errors = manifest["storage_error"]
    assert errors["float32"]["max_abs"] == 0.0
    for dtype, unit_roundoff in (("bfloat16", 2.0**-8), ("float16", 2.0**-11)):
        assert 0 < errors[dtype]["relative_rms"] < unit_roundoff  # rounding to nearest: under one unit

    cached = WebDataModule(urls=made["shards"], decode="latents", resolution=32, batch_size=8, num_workers=0)
    batch = next(iter(cached.train_dataloader()))
    module = DiffusionModule(dict(cfg.model), {})
    images = WebDataModule(
        root=str(data_root), synthetic=dict(cfg.data.synthetic), resolution=32, batch_size=128, num_workers=0,
        filters=dict(cfg.data.filters), tokenizer=Tokenizer(),
    )  # fmt: skip
    reference = next(iter(images.train_dataloader()))
    index = [reference["key"].index(k) for k in batch["key"]]
    mean, std = module.autoencoder.posterior(to_model_range(reference["image"][index]))
    torch.testing.assert_close(batch["latent_mean"], mean, atol=1e-5, rtol=1e-5)  # float32 storage
    torch.testing.assert_close(batch["latent_std"], std, atol=1e-5, rtol=1e-5)
    text = module.text_encoder(reference["input_ids"][index])
    torch.testing.assert_close(batch["text_states"], text, atol=1e-5, rtol=1e-5)

    # the printed command trains (tests/fullsize runs it); with another resolution it is refused at once
    command = shlex.split(made["train_command"])
    assert command[:2] == ["python", "launch/train.py"] and "model.resolution=32" in command
    given = {o.split("=", 1)[0] for o in command[2:]}
    rest = [o for o in run if o.split("=", 1)[0] not in given] + ["samples.every_n_steps=0"]
    assert compose("train", [*rest, *command[2:]]).data.decode == "latents"
    with pytest.raises(
        InstantiationException, match="resolution: cache 32, this run 64"
    ):  # before models load
        train(compose("train", [*rest, *command[2:], "model.resolution=64"]))


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


def test_a_bad_resume_or_data_key_fails_before_any_model_loads(tmp_path, data_root, monkeypatch):
    train = launch_module("train").train
    built = []
    monkeypatch.setattr("zsnr.training.module.build_components", lambda *a, **k: built.append(1))
    run_dir = tmp_path / "run"
    base = tiny_run(run_dir, data_root, steps=2)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        train(compose("train", [*base, f"resume={tmp_path}/nope.ckpt"]))
    (tmp_path / "cut.ckpt").write_bytes(b"PK\x03\x04 half a zip")
    with pytest.raises(ValueError, match=r"cut\.ckpt \(\d+ bytes\) is not a readable checkpoint"):
        train(compose("train", [*base, f"resume={tmp_path}/cut.ckpt"]))
    with pytest.raises(ValueError, match="data.batch_size is not read: the run's micro_batch_size sets it"):
        train(compose("train", [*base, "+data.batch_size=8"]))  # it used to be replaced without a word
    with pytest.raises(ValueError, match="data.resolution is not read: the run's model.resolution sets it"):
        train(compose("train", [*base, "+data.resolution=64"]))
    with pytest.raises(ValueError, match="ema_on_cpu=true does not combine with trainer=fsdp"):
        train(compose("train", [*base, "trainer=fsdp", "module.ema_on_cpu=true"]))
    assert not built and not (run_dir / "config.yaml").exists()  # nothing built, the run's config untouched


def test_metrics_and_the_wandb_run_survive_resumes_and_data_stats_are_logged(tmp_path, data_root, caplog):
    import csv

    train = launch_module("train").train
    run_dir = tmp_path / "run"
    base = [*tiny_run(run_dir, data_root, steps=4), "checkpoint.every_n_steps=2", "metrics.every_n_steps=1",
            "samples.every_n_steps=0"]  # fmt: skip
    with caplog.at_level("INFO", logger="zsnr.train"):
        train(compose("train", base))
    assert "data at step 2 (all ranks): seen " in caplog.text and "accepted" in caplog.text
    metrics = run_dir / "csv" / "metrics.csv"

    def steps_of(name):
        return [int(r["step"]) for r in csv.DictReader(metrics.open()) if r.get(name)]

    assert steps_of("train/grad_norm") == [1, 2, 3, 4] and steps_of("data/seen")
    with pytest.raises(FileNotFoundError):  # a failed resume leaves the history alone
        train(compose("train", [*base, f"resume={tmp_path}/nope.ckpt"]))
    # an attempt that died after step 4 resumes from step 2: steps 3-4 are redone and logged once
    train(compose("train", [*base, "max_steps=6", f"resume='{run_dir}/checkpoints/step=000002.ckpt'"]))
    assert steps_of("train/grad_norm") == [1, 2, 3, 4, 5, 6]
    seen = [float(r["data/seen"]) for r in csv.DictReader(metrics.open()) if r.get("data/seen")]
    assert seen == sorted(seen)  # cumulative, restored on resume

    wandb_dir = tmp_path / "wandb_run"
    wb = [*tiny_run(wandb_dir, data_root, steps=2), "logger=wandb", "samples.every_n_steps=0"]
    train(compose("train", wb))
    train(compose("train", [*wb, "max_steps=3", "resume=auto"]))
    run_id = (wandb_dir / "wandb_run_id").read_text().strip()
    runs = sorted((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)


def test_validation_loss_per_timestep_is_unchanged_by_a_resume(tmp_path, data_root, caplog):
    import csv

    train = launch_module("train").train
    common = ["validation.every_n_steps=1", "checkpoint.every_n_steps=2", "samples.every_n_steps=0"]
    train(compose("train", [*tiny_run(tmp_path / "a", data_root, steps=3), *common]))
    train(compose("train", [*tiny_run(tmp_path / "b", data_root, steps=2), *common]))
    train(compose("train", [*tiny_run(tmp_path / "b", data_root, steps=3), *common, "resume=auto"]))

    def curve(run):
        rows = csv.DictReader((tmp_path / run / "csv" / "metrics.csv").open())
        return {int(r["step"]): r for r in rows if r.get("val/loss")}

    straight, resumed = curve("a"), curve("b")
    assert sorted(straight) == sorted(resumed) == [0, 1, 2, 3]
    for step in straight:
        assert straight[step]["val/loss"] == resumed[step]["val/loss"], step
    assert {f"val/loss_t{t:04d}" for t in range(99, 1000, 100)} <= set(straight[3])
    assert float(straight[3]["val/loss"]) != float(straight[0]["val/loss"])  # it follows training
    with caplog.at_level("WARNING", logger="zsnr.train"):  # no held-out data: said, not silently skipped
        out = train(compose("train", [*tiny_run(tmp_path / "c", data_root, steps=1), "validation.every_n_steps=5",
                                      "data.val_synthetic=null"]))  # fmt: skip
    assert "no validation loss: the data has no held-out shards" in caplog.text
    assert "ValidationLoss" not in {type(c).__name__ for c in out["trainer"].callbacks}
