"""Every experiment composes and trains a couple of steps with the tiny model; bad setups fail early."""

from pathlib import Path

import pytest
from training_helpers import compose, launch_module, tiny_run

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))


@pytest.fixture(scope="module")
def train():
    return launch_module("train").train


def test_default_config_is_the_tiny_cpu_run():
    cfg = compose("train", [])
    assert cfg.model.kind == "tiny" and cfg.diffusion.prediction_type == "v_prediction"
    assert cfg.data.synthetic is not None and cfg.resume is None


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_runs_two_steps_with_the_tiny_model(experiment, train, tmp_path, data_root):
    full = compose("train", [f"experiment={experiment}"])  # the experiment as written composes
    assert full.name == experiment
    run = tiny_run(tmp_path, data_root, steps=2)
    if full.model.kind == "tiny":  # already CPU-sized: keep the experiment's own model settings
        run.remove("model=tiny")
    if (
        full.init_from
    ):  # a fine-tune of a base this test does not have (init_from: tests/integration/test_init_from.py)
        run.append("init_from=null")
    cfg = compose("train", [f"experiment={experiment}", *run])
    assert cfg.module.lr == full.module.lr and cfg.diffusion == full.diffusion  # the recipe survives
    out = train(cfg)
    assert out["trainer"].global_step == 2
    assert out["last_checkpoint"].name == "step=000002.ckpt"
    assert (tmp_path / "samples" / "step=000002_ema.png").exists() == (full.samples.every_n_steps > 0)


def test_callbacks_are_a_config_group_to_drop_from_or_add_to(train, tmp_path, data_root):
    run = [*tiny_run(tmp_path, data_root, steps=1), "~callbacks.samples",
           "+callbacks.lr._target_=pytorch_lightning.callbacks.LearningRateMonitor"]  # fmt: skip
    out = train(compose("train", run))
    names = {type(c).__name__ for c in out["trainer"].callbacks}
    assert {"TrainMetrics", "DataStatsLogger", "LearningRateMonitor", "AtomicCheckpoint"} <= names
    assert "SampleGrid" not in names and not (tmp_path / "samples").exists()


def test_paper_recipe_values():
    cfg = compose("train", ["experiment=paper"])
    assert (cfg.max_steps, cfg.global_batch_size, cfg.module.lr, cfg.module.ema_decay) == (
        50000,
        2048,
        1e-4,
        0.9999,
    )
    assert cfg.diffusion.rescale_zero_terminal_snr and cfg.diffusion.spacing == "trailing"
    assert cfg.model.kind == "diffusers" and cfg.model.resolution == 512
    flawed = compose("train", ["experiment=paper_flawed"])
    assert flawed.diffusion.prediction_type == "epsilon" and flawed.diffusion.spacing == "leading"


def test_batch_that_does_not_divide_fails_before_any_model_loads(train, tmp_path, data_root, monkeypatch):
    import zsnr.models.components as components

    monkeypatch.setattr(components, "build_components", lambda *a, **k: pytest.fail("a model was built"))
    cfg = compose("train", [*tiny_run(tmp_path, data_root), "global_batch_size=10", "micro_batch_size=4"])
    with pytest.raises(ValueError, match="global_batch_size=10 is not a multiple of micro_batch_size"):
        train(cfg)


def test_missing_weights_fail_before_any_model_loads(train, tmp_path, data_root):
    cfg = compose("train", [*tiny_run(tmp_path, data_root), "model=sd21_base", f"model.path={tmp_path}/sd21"])
    with pytest.raises(FileNotFoundError, match="stable-diffusion-2-1-base"):
        train(cfg)


def test_tiny_pixel_is_tiny_with_the_identity_autoencoder():
    """model/tiny_pixel extends model/tiny and swaps only its autoencoder group (no copy of tiny's keys)."""
    tiny, pixel = compose("train", ["model=tiny"]).model, compose("train", ["model=tiny_pixel"]).model
    assert tiny.autoencoder.kind == "kl" and tiny.autoencoder.latent_channels == 4
    assert dict(pixel.autoencoder) == {"kind": "identity", "channels": 3, "patch_size": 2}
    assert {k: v for k, v in tiny.items() if k != "autoencoder"} == {
        k: v for k, v in pixel.items() if k != "autoencoder"
    }
