"""Two CPU processes (gloo) through `python launch/train.py`, against one process with twice the accumulation.

One Hydra multirun, `-m trainer=ddp,fsdp`, trains both strategies for N steps (global batch 8 = micro-batch 4 x
2 processes); the reference trains in this process (micro-batch 4 x 2 accumulation steps) for 2N steps on the
same micro-batches (distributed_data.IndexedBatches) and the same noise (keyed on the global micro-batch index).
Every process uses one intra-op thread, so the arithmetic per micro-batch is the same everywhere.

Measured on this machine and asserted:
- DDP: per-micro-batch losses and every checkpoint (weights, EMA, AdamW moments) bit for bit equal (torch.equal).
  (With 2 threads in the reference instead of 1, weights differ by up to 4e-6 after one step.)
- FSDP2: losses within 1e-7 relative, weights and EMA within 1.6e-7 absolute (the gradient-norm clip sums the
  squares shard by shard); asserted atol 1e-6 on weights, rtol 1e-5 on losses.
- FSDP2 checkpoints are sharded directories (one .distcp per rank + meta.pt); a second launch resumes from one
  and ends where the one-process run does; the consolidated file samples with the (sharded-trained) EMA weights.
- The multirun runs each job once: each job's second rank runs that job in its directory, nothing else.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_data import read_losses
from training_helpers import compose, launch_module, run_train

pytestmark = pytest.mark.distributed
N = 2
COMMON = [
    "model=tiny",
    "data._target_=distributed_data.IndexedBatches",
    "logger=csv",
    "global_batch_size=8",
    "micro_batch_size=4",
    "module.lr=1e-3",
    "module.ema_decay=0.9",
    "checkpoint.every_n_steps=1",
    "checkpoint.keep_last=null",
    "samples.every_n_steps=1000",  # only the end-of-training grid: the EMA samples under each strategy
    "samples.num_steps=2",
    "samples.seeds=[0]",
    "samples.prompts=[a white background]",
    "validation.every_n_steps=1",
    "validation.num_batches=3",  # 2 ranks: 2 + 1, the second rank's padding counted nowhere
    "+callbacks.loss._target_=distributed_data.LossRecorder",
    "+callbacks.loss.path=${run_dir}/losses",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("cwd")
    root = tmp_path_factory.mktemp("sweep")
    run_train(
        ["-m", "trainer=ddp,fsdp", "trainer.devices=2", f"max_steps={N}", f"hydra.sweep.dir={root}", *COMMON],
        cwd,
    )
    assert not any(cwd.iterdir()), f"the sweep wrote into the working directory: {list(cwd.iterdir())}"
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = compose("train", [*COMMON, "trainer=cpu", f"run_dir={run_dir}", f"max_steps={2 * N}"])
        out = launch_module("train").train(cfg)
    finally:
        torch.set_num_threads(threads)
    assert out["trainer"].datamodule.micro_batches_per_step == 2  # windows of 2 micro-batches
    return run_dir


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def consolidate(sharded: Path, command: bool = False) -> dict:
    """Sharded checkpoint directory -> one checkpoint dict, in this process or with the README's command."""
    if not command:
        from lightning_fabric.utilities.load import _load_distributed_checkpoint

        return _load_distributed_checkpoint(sharded)
    out = sharded.parent / (sharded.name + ".consolidated")
    cmd = [sys.executable, "-m", "lightning_fabric.utilities.consolidate_checkpoint", str(sharded)]
    subprocess.run([*cmd, "--output_file", str(out)], check=True, capture_output=True, timeout=300)
    return load(out)


def step_file(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step={step:06d}.ckpt"


def assert_same_losses(run_dir: Path, reference: Path, rtol: float) -> None:
    got, want = read_losses(run_dir / "losses"), read_losses(reference / "losses")
    assert sorted(got) == list(range(len(got))) and len(got) >= 4
    for index, loss in got.items():
        assert loss == pytest.approx(want[index], rel=rtol, abs=0), index


def max_weight_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    assert any(k.startswith("ema_unet.") for k in a) and any(k.startswith("unet.") for k in a)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_multirun_runs_each_job_once_with_its_own_ranks(sweep):
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    for job, strategy in (("0", "DDPStrategy"), ("1", "FSDP2Strategy")):
        d = sweep / job
        assert strategy in (d / "config.yaml").read_text()
        assert (d / "train_ddp_process_1.log").exists()  # rank 1 ran this job, in this job's directory
        assert sorted(p.name for p in (d / "losses").glob(f"*-to{N}.jsonl")) == [
            f"rank0-to{N}.jsonl",
            f"rank1-to{N}.jsonl",
        ]
        assert (d / "samples" / f"step={N:06d}_ema.png").exists()


def test_ddp_matches_one_process_with_twice_the_accumulation(sweep, reference):
    run = sweep / "0"
    assert_same_losses(run, reference, rtol=0)  # bit for bit
    for step in range(1, N + 1):
        a, b = load(step_file(run, step)), load(step_file(reference, step))
        assert a["global_step"] == b["global_step"] == step
        for key in b["state_dict"]:
            assert torch.equal(a["state_dict"][key], b["state_dict"][key]), (step, key)
        moments_a, moments_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
        for i in moments_b:
            assert torch.equal(moments_a[i]["exp_avg_sq"], moments_b[i]["exp_avg_sq"]), (step, i)
    start = load(step_file(reference, 1))["state_dict"]["unet.conv_in.weight"]
    assert not torch.equal(start, load(step_file(run, N))["state_dict"]["unet.conv_in.weight"])


def val_curve(run_dir: Path) -> dict[int, float]:
    import csv

    rows = csv.DictReader((run_dir / "csv" / "metrics.csv").open())
    return {int(r["step"]): float(r["val/loss"]) for r in rows if r.get("val/loss")}


def test_the_validation_loss_is_reduced_over_ranks(sweep, reference):
    want = val_curve(reference)
    for job, rtol in (("0", 1e-9), ("1", 1e-5)):  # DDP: same weights; FSDP: float32 shards, as the losses
        got = val_curve(sweep / job)
        assert sorted(got) == list(range(N + 1)), job
        for step, loss in got.items():
            assert loss == pytest.approx(want[step], rel=rtol), (job, step)


def test_fsdp_matches_one_process_and_saves_sharded(sweep, reference):
    run = sweep / "1"
    assert_same_losses(run, reference, rtol=1e-5)
    sharded = step_file(run, N)
    assert sharded.is_dir() and (run / "checkpoints" / "last.ckpt").resolve() == sharded
    assert sorted(p.name for p in sharded.iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "meta.pt",
    ]
    full = consolidate(sharded)
    assert full["global_step"] == N
    assert max_weight_difference(full["state_dict"], load(step_file(reference, N))["state_dict"]) < 1e-6


def test_fsdp_resumes_from_its_sharded_checkpoint(sweep, reference, tmp_path):
    run = sweep / "1"
    out = run_train(
        [
            "trainer=fsdp",
            "trainer.devices=2",
            f"max_steps={2 * N}",
            "resume=auto",
            f"hydra.run.dir={run}",
            *COMMON,
        ],
        tmp_path,
    )
    assert f"continuing from {step_file(run, N)}" in out
    assert_same_losses(run, reference, rtol=1e-5)  # micro-batches 0 .. 4N-1, the second half after the resume
    full = consolidate(step_file(run, 2 * N), command=True)
    want = load(step_file(reference, 2 * N))
    assert (
        full["global_step"] == 2 * N and full["zsnr"]["ema_updates"] == want["zsnr"]["ema_updates"] == 2 * N
    )
    assert max_weight_difference(full["state_dict"], want["state_dict"]) < 1e-6

    from zsnr.sampling import load_for_inference

    model = load_for_inference(step_file(run, 2 * N).parent / (step_file(run, 2 * N).name + ".consolidated"))
    for name, value in model.unet.state_dict().items():
        torch.testing.assert_close(value, want["state_dict"][f"ema_unet.{name}"], rtol=0, atol=1e-6)
    image = model.generate(["a white background"], [0], num_steps=2)
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()


def test_sharded_checkpoint_is_read_without_consolidation(sweep, tmp_path):
    """load_for_inference (sample, evaluate, export) reads step=N.ckpt/ itself: the UNet it asks for, nothing
    else, equal to the consolidated checkpoint's."""
    from zsnr.models.checkpoint import read_sharded
    from zsnr.sampling import load_for_inference

    sharded = step_file(sweep / "1", N)
    full = consolidate(sharded)["state_dict"]
    read = read_sharded(sharded, "ema_unet.")
    assert read["global_step"] == N and all(k.startswith("ema_unet.") for k in read["state_dict"])
    for use_ema, prefix in ((True, "ema_unet."), (False, "unet.")):
        model = load_for_inference(sharded, use_ema=use_ema)
        for name, value in model.unet.state_dict().items():
            assert torch.equal(value, full[prefix + name]), (prefix, name)
    cfg = compose("sample", [f"checkpoint='{sharded}'", "prompts=[a white background]", "num_steps=2",
                             f"out_dir={tmp_path}"])  # fmt: skip
    launch_module("sample").sample(cfg)
    assert (tmp_path / "grid.png").is_file()
