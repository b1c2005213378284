"""2N steps straight == N steps, stop, resume=auto, N more: the same weights, EMA and optimizer state, exactly.

Exact on the CPU: the step's posterior draw, noise, timesteps and caption dropout are a function of (seed,
rank, micro-step), the data stream resumes at its saved position (zsnr.data), and the accumulation
(2 micro-batches per step) restarts at a step boundary. Tolerance: bit-for-bit (torch.equal). Both data paths:
images through the frozen encoders, and the latent cache (posteriors drawn from in the step); and with the EMA
updated every 2 steps in host memory (ema_every_n_steps, ema_on_cpu), stopped in the middle of a window; and
from a checkpoint whose loop state is laid out as zsnr wrote it under Lightning's automatic optimisation.
"""

import copy

import pytest
import torch
from training_helpers import compose, launch_module, tiny_run

N = 3


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


EMA_OPTIONS = ["module.ema_every_n_steps=2", "module.ema_on_cpu=true"]
AUTOMATIC = ["automatic optimisation's loop state"]  # a marker, not an override


def _as_written_under_automatic_optimisation(path) -> None:
    """The loop state as zsnr wrote it before train_step (read from a checkpoint of that version): the step
    count in the automatic loop's optimizer progress, the manual loop's at 0."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    loops = checkpoint["loops"]["fit_loop"]
    manual = loops["epoch_loop.manual_optimization.optim_step_progress"]
    assert manual["total"]["completed"] == N
    loops["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]["step"] = copy.deepcopy(manual)
    zero = {"ready": 0, "completed": 0}
    loops["epoch_loop.manual_optimization.optim_step_progress"] = {"total": dict(zero), "current": dict(zero)}
    torch.save(checkpoint, path)


@pytest.mark.parametrize(
    "source, options",
    [("images", []), ("latent_cache", []), ("images", EMA_OPTIONS), ("images", AUTOMATIC)],
    ids=["images", "latent_cache", "ema_every_2_on_cpu", "automatic_optimisation_checkpoint"],
)
def test_resume_gives_the_same_weights_as_a_straight_run(tmp_path, data_root, source, options):
    old_layout = options == AUTOMATIC
    options = [] if old_layout else options
    train = launch_module("train").train
    common = []
    if source == "latent_cache":
        data = [o for o in tiny_run(tmp_path, data_root) if o.startswith(("model", "data"))]
        cfg = compose("encode_latents", [*data, f"out={tmp_path}/lat", "batch_size=32"])
        made = launch_module("encode_latents").encode_latents(cfg)
        common = [f"data.urls={made['shards']}", "data.decode=latents"]
    common += [
        "checkpoint.every_n_steps=1",
        "checkpoint.keep_last=null",
        "samples.every_n_steps=0",
        "module.ema_decay=0.9",
        "module.lr=1e-3",
        *options,
    ]
    straight = train(compose("train", [*tiny_run(tmp_path / "a", data_root, steps=2 * N), *common]))
    first = train(compose("train", [*tiny_run(tmp_path / "b", data_root, steps=N), *common]))
    assert first["trainer"].global_step == N
    if options:  # N = 3 steps, an update every 2: the run stopped with one step not yet in the EMA
        saved = _state(first["last_checkpoint"])["zsnr"]
        assert (saved["ema_updates"], saved["ema_steps"], saved["ema_pending"]) == (1, 2, 1)
    if old_layout:
        _as_written_under_automatic_optimisation(first["last_checkpoint"])
    resumed = train(
        compose("train", [*tiny_run(tmp_path / "b", data_root, steps=2 * N), *common, "resume=auto"])
    )
    assert resumed["trainer"].global_step == 2 * N

    a, b = _state(straight["last_checkpoint"]), _state(resumed["last_checkpoint"])
    assert a["global_step"] == b["global_step"] == 2 * N
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert any(k.startswith("ema_unet.") for k in a["state_dict"])
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    opt_a, opt_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for i in opt_a:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt_a[i][name], opt_b[i][name]), (i, name)
    assert a["lr_schedulers"][0]["last_epoch"] == b["lr_schedulers"][0]["last_epoch"]
    assert a["zsnr"]["micro_step"] == b["zsnr"]["micro_step"] == 2 * N * 2  # 2 micro-batches per step
    # and the run really changed the weights (the comparison is not between two untouched models)
    start = _state(tmp_path / "b" / "checkpoints" / "step=000001.ckpt")
    assert not torch.equal(start["state_dict"]["unet.conv_in.weight"], a["state_dict"]["unet.conv_in.weight"])
