"""The paper in miniature (`make demo`): one flawed base model, fine-tuned two ways, sampled and measured.

The paper's protocol (section 5): SD 2.1-base, trained with SD's schedule and epsilon-prediction, is fine-tuned
twice on the same data, once keeping that recipe (the reference) and once with all four fixes. In miniature:
`experiment=demo_base` pretrains a tiny pixel-space model with the flawed recipe (once: a later run reuses it),
then `experiment=demo_flawed` and `experiment=demo_fixed` fine-tune copies of it (`init_from=`) on the same
data with the same steps and seeds.

Each step is a plain function, so launch/demo.py and the shortened end-to-end test run the same code:
`train_runs` (launch/train.py in subprocesses, exactly as a user runs it, side by side when there are cores
for it), `data_reference` (the training images, read through the run's own datamodule) and `sample_sets`
(fixed seeds, the same for every model). Measures: zsnr.evaluation.demo_metrics; report: demo_report.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from zsnr.evaluation.images import save_png, to_uint8
from zsnr.sampling import SamplingSettings, generate

UNCONDITIONAL = "unconditional"
TRAIN_SCRIPT = Path(__file__).resolve().parents[3] / "launch" / "train.py"


@dataclass(frozen=True)
class TrainJob:
    """`python launch/train.py experiment=E seed=S hydra.run.dir=D resume=auto [overrides]`."""

    name: str
    experiment: str
    seed: int
    run_dir: Path
    overrides: tuple[str, ...] = ()

    def task_overrides(self) -> list[str]:
        return [f"experiment={self.experiment}", f"seed={self.seed}", "resume=auto", *self.overrides]

    def command(self, script: Path = TRAIN_SCRIPT) -> list[str]:
        return [sys.executable, str(script), *self.task_overrides(), f"hydra.run.dir={self.run_dir}"]

    @property
    def last(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"

    def saved_overrides(self) -> list[str] | None:
        path = self.run_dir / ".hydra" / "overrides.yaml"
        return yaml.safe_load(path.read_text()) if path.is_file() else None

    def finished(self) -> bool:
        """Trained to its max_steps with exactly these overrides (so a second `make demo` reuses it)."""
        config = self.run_dir / "config.yaml"
        if self.saved_overrides() != self.task_overrides() or not config.is_file() or not self.last.exists():
            return False
        max_steps = yaml.safe_load(config.read_text())["max_steps"]
        return self.last.resolve().name == f"step={max_steps:06d}.ckpt"


def train_runs(jobs: Sequence[TrainJob], parallel: int = 1, cores: int | None = None) -> dict[str, Path]:
    """Run the jobs (at most `parallel` at a time, each with cores // (jobs running) threads); returns each
    job's last checkpoint. A job already trained with the same overrides is reused; a run directory left by
    other overrides is removed first (resume=auto would otherwise continue it)."""
    cores = cores or os.cpu_count() or 1
    todo = []
    for job in jobs:
        if job.finished():
            print(f"{job.name}: reusing {job.last.resolve()} (trained with the same overrides)", flush=True)
        else:
            if job.saved_overrides() not in (None, job.task_overrides()):
                print(f"{job.name}: {job.run_dir} was trained with other overrides; starting it again")
                shutil.rmtree(job.run_dir)
            todo.append(job)
    for i in range(0, len(todo), max(1, parallel)):
        _run_together(todo[i : i + parallel], threads=max(1, cores // len(todo[i : i + parallel])))
    for job in jobs:
        if not job.last.exists():
            raise FileNotFoundError(f"{job.name}: training finished but left no {job.last}")
    return {job.name: job.last.resolve() for job in jobs}


def _env(threads: int) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    return {**env, "OMP_NUM_THREADS": str(threads)}


def _run_together(jobs: Sequence[TrainJob], threads: int) -> None:
    """One job: its output goes to the console. Several: each writes run_dir/stdout.log, and one progress bar
    per job follows the `step N/M` lines the training prints there (TrainMetrics)."""
    for job in jobs:
        print(f"\n$ {' '.join(job.command()[1:])}   # {threads} thread(s)", flush=True)
    if len(jobs) == 1:
        subprocess.run(jobs[0].command(), check=True, env=_env(threads))
        return
    from tqdm.auto import tqdm

    procs, logs, bars = [], [], []
    for i, job in enumerate(jobs):
        job.run_dir.mkdir(parents=True, exist_ok=True)
        logs.append(job.run_dir / "stdout.log")
        with open(logs[-1], "w") as out:
            procs.append(
                subprocess.Popen(job.command(), stdout=out, stderr=subprocess.STDOUT, env=_env(threads))
            )
        bars.append(tqdm(desc=job.name, position=i, unit="step", leave=True))
    while any(p.poll() is None for p in procs):
        time.sleep(2)
        for bar, log in zip(bars, logs, strict=True):
            step, total = _progress(log)
            bar.total, bar.n = total, step
            bar.refresh()
    for bar in bars:
        bar.close()
    for job, proc, log in zip(jobs, procs, logs, strict=True):
        if proc.returncode != 0:
            tail = log.read_text(errors="replace").replace("\r", "\n").splitlines()[-30:]
            raise RuntimeError(
                f"{job.name} failed (exit {proc.returncode}); the end of {log}:\n" + "\n".join(tail)
            )


_STEP = re.compile(rb"^step (\d+)/(\d+) ", re.MULTILINE)


def _progress(log: Path) -> tuple[int, int | None]:
    """The last `step N/M` line in a training log (0, None before the first)."""
    with open(log, "rb") as f:
        f.seek(max(0, log.stat().st_size - 4096))
        found = _STEP.findall(f.read())
    return (int(found[-1][0]), int(found[-1][1])) if found else (0, None)


def _matches(caption: str, prompts: Sequence[str]) -> bool:
    return caption.strip().lower() in {p.lower() for p in prompts}


@torch.no_grad()
def data_reference(datamodule, prompt_sets: Mapping[str, Sequence[str]]) -> dict[str, torch.Tensor]:
    """The training images (uint8) in one exact pass through their own datamodule (filters applied):
    {"unconditional": all of them, set name: those whose caption is one of the set's prompts}."""
    datamodule.setup("fit")
    images, captions = [], []
    for batch in datamodule.train_dataloader():
        images.append(batch["image"])
        captions += list(batch["caption"])
    x = torch.cat(images)
    out = {UNCONDITIONAL: x}
    for name, prompts in prompt_sets.items():
        keep = torch.tensor([_matches(c, prompts) for c in captions])
        if not keep.any():
            raise ValueError(f"no training image has a caption in prompt set {name!r} ({list(prompts)})")
        out[name] = x[keep]
    return out


def sample_sets(
    model,
    settings: SamplingSettings,
    prompt_sets: Mapping[str, Sequence[str]],
    num_unconditional: int,
    images_per_prompt: int,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """uint8 images per set, with fixed seeds (image i of a set uses seed i, the same for every model).

    Unconditional: the empty prompt without guidance (w = 1), as trained by caption dropout.
    """
    uncond = replace(settings, guidance_scale=1.0, guidance_rescale=0.0)
    seeds = list(range(num_unconditional))
    out = {UNCONDITIONAL: to_uint8(generate(model, [""] * num_unconditional, seeds, uncond, batch_size))}
    for name, prompts in prompt_sets.items():
        ps = [p for p in prompts for _ in range(images_per_prompt)]
        out[name] = to_uint8(generate(model, ps, list(range(len(ps))), settings, batch_size))
    return out


def sampler_checks(
    model, settings: SamplingSettings, checks: Sequence[Mapping], num_images: int, batch_size: int
) -> dict[str, torch.Tensor]:
    """The unconditional set (same seeds) with other samplers / step counts: {"unconditional, dpmpp_2m S=25": ...}."""
    out = {}
    for check in checks:
        s = replace(settings, guidance_scale=1.0, guidance_rescale=0.0, **check)
        images = generate(model, [""] * num_images, list(range(num_images)), s, batch_size)
        out[f"{UNCONDITIONAL}, {s.sampler} S={s.num_steps}"] = to_uint8(images)
    return out


def save_samples(images: Mapping[str, torch.Tensor], folder: Path) -> None:
    for name, x in images.items():
        for i, image in enumerate(x):
            save_png(image, folder / name / f"{i:04d}.png")


def model_settings(model, sampling: Mapping) -> SamplingSettings:
    """A model's sampling settings: sampler, num_steps and guidance_scale from `sampling`; the spacing and phi
    the model was trained for unless `sampling` names them (spacing, guidance_rescale); start_timestep if set."""
    return SamplingSettings.for_schedule(
        model.schedule, sampler=sampling["sampler"], num_steps=sampling["num_steps"],
        spacing=sampling.get("spacing") or None, guidance_scale=sampling["guidance_scale"],
        guidance_rescale=sampling.get("guidance_rescale"), start_timestep=sampling.get("start_timestep"),
    )  # fmt: skip


def sample_model(
    ckpt: Path,
    sampling: Mapping,
    prompt_sets: Mapping[str, Sequence[str]],
    checks: Sequence[Mapping] = (),
    folder: Path | None = None,
    threads: int | None = None,
) -> dict[str, torch.Tensor]:
    """Load a checkpoint and sample its image sets (and the sampler checks) with the model's own spacing and
    phi; saves the PNGs under `folder`. A function of plain values, so it runs in a worker process too."""
    from zsnr.sampling import load_for_inference

    if threads:
        torch.set_num_threads(threads)
    model = load_for_inference(ckpt)
    settings = model_settings(model, sampling)
    print(f"sampling {ckpt}: {settings}", flush=True)
    n, k, b = sampling["unconditional_images"], sampling["images_per_prompt"], sampling["batch_size"]
    sets = sample_sets(model, settings, prompt_sets, n, k, b)
    sets.update(sampler_checks(model, settings, checks, n, b))
    if folder is not None:
        save_samples(sets, folder)
    return sets


def sample_models(
    jobs: Mapping[str, Mapping], parallel: int = 1, cores: int | None = None, fn: Callable = sample_model
) -> dict[str, Any]:
    """fn(**kwargs) (sample_model, or any function of plain values with a `threads` argument) for every named
    job, `parallel` at a time in worker processes (cores // parallel threads each); {name: its result}."""
    if parallel <= 1 or len(jobs) == 1:
        return {name: fn(**kwargs) for name, kwargs in jobs.items()}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (cores or os.cpu_count() or 1) // parallel)
    # fork: the workers start with zsnr imported (spawn would import torch & co. again in each); they set their
    # own thread count first thing, as DataLoader workers do
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=parallel, mp_context=context) as pool:
        futures = {name: pool.submit(fn, **kwargs, threads=threads) for name, kwargs in jobs.items()}
        return {name: f.result() for name, f in futures.items()}
