"""Full-size SD 2.1 end to end on a CPU host, as a new user would run it, with wall time and peak memory.

    python tests/fullsize/sd21_check.py --out outputs/sd21_check            # full size, ~19 GiB, ~25 min
    python tests/fullsize/sd21_check.py --out /tmp/check --reduced          # same files and loaders, seconds

Stages: a random SD 2.1-base diffusers folder from the real configs (zsnr.models.sd21_folder), train 2 steps
with a checkpoint after each (micro-batch 1, 256 px, the data workers and the validation loss of the
defaults), resume 1 step, sample from the checkpoint, export (the
diffusers folder and the single file), load both in diffusers' StableDiffusionPipeline and sample the same
seeds, audit both, cache latents and train a step with the command the cache printed. Full size: each stage
is its own process (`launch/*.py` or `python -m ...`, the commands a user types), timed, with its peak RSS
(the kernel's ru_maxrss, what `/usr/bin/time -v` reports) and the peak anonymous memory of its process tree
(tests/fullsize/memory_watch.py, sampled 4x a second: the memory the kernel cannot drop, data workers included;
RSS adds the pages of memory-mapped files, which it can). --reduced runs the same stages in this process
(tests/fullsize/test_sd21_check.py). Writes report.json and report.md into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from memory_watch import Watch  # this folder: on sys.path as a script and under pytest (rootdir conftest)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
PROMPTS = ["a solid black background", "a white background"]
CAPTIONS = [*PROMPTS, "a red background", "a gray background", "a blue circle", "a green square",
            "a yellow triangle on a black background", "a white star on a blue background"]  # fmt: skip
GIB = 2**30


def stages(out: Path, reduced: bool) -> list[tuple[str, list[str]]]:
    """(name, command): `launch/X.py overrides` or `-m module args`, or `@stage` for a function of this file."""
    res, steps = (64, 2) if reduced else (256, 10)
    model = ["model=sd21_base", f"model.path={out / 'sd21-base'}", f"model.resolution={res}"]
    data = [
        f"data.root={out / 'data'}",
        "data.synthetic.num_samples=16",
        "data.synthetic.samples_per_shard=16",
    ]
    # the defaults otherwise: data workers, the validation loss at step 0 (and its held-out set)
    run = ["micro_batch_size=1", "global_batch_size=1", "checkpoint.every_n_steps=1", "checkpoint.keep_last=1",
           "samples.every_n_steps=0", f"run_dir={out / 'run'}", f"hydra.run.dir={out / 'run'}"]  # fmt: skip
    ckpt = f"checkpoint={out / 'run' / 'checkpoints' / 'last.ckpt'}"
    return [
        (
            "folder",
            ["-m", "zsnr.models.sd21_folder", str(out / "sd21-base"), *(["--reduced"] if reduced else [])],
        ),
        ("train 2 steps + 2 saves", ["launch/train.py", *model, *data, *run, "max_steps=2"]),
        ("resume 1 step + save", ["launch/train.py", *model, *data, *run, "max_steps=3", "resume=auto"]),
        (
            "sample (zsnr)",
            [
                "launch/sample.py",
                ckpt,
                f"prompts={json.dumps(CAPTIONS)}",
                f"num_steps={steps}",
                "device=cpu",  # the default batch size: 8 prompts, 16 UNet images with guidance
                f"out_dir={out / 'samples'}",
                f"hydra.run.dir={out / 'samples'}",
            ],
        ),  # fmt: skip
        (
            "evaluate (brightness)",
            [
                "launch/evaluate.py",
                ckpt,
                f"captions={out / 'captions.txt'}",
                f"num_images={len(CAPTIONS)}",
                f"num_steps={steps}",
                "device=cpu",  # the default batch size (32): all 8 captions in one batch
                "metrics.feature_extractor=null",  # FID, IS and the CLIP score need weights from the internet
                "metrics.clip=null",
                f"out_dir={out / 'evaluate'}",
                f"hydra.run.dir={out / 'evaluate'}",
            ],
        ),
        (
            "export folder + single file",
            ["launch/export.py", ckpt, f"out={out / 'export'}", f"hydra.run.dir={out / 'export_log'}"],
        ),  # fmt: skip
        ("diffusers: folder + from_single_file", ["@diffusers", str(out), str(res), str(steps)]),
        ("audit folder", ["-m", "zsnr.audit", str(out / "export"), "--strict"]),
        ("audit single file", ["-m", "zsnr.audit", str(out / "export.safetensors"), "--strict"]),
        (
            "encode latents",
            ["launch/encode_latents.py", *model, *data, f"out={out / 'latents'}"],  # the default batch size
        ),
        ("train 1 step from the cache", ["@cache", str(out)]),
    ]


def diffusers_stage(out: str, resolution: str, steps: str) -> dict[str, Any]:
    """Both exports in StableDiffusionPipeline, the same seeds: the single file must give the folder's images."""
    import torch
    from diffusers import StableDiffusionPipeline

    from zsnr.diffusers_interop import scheduler_from_yaml

    out, res = Path(out), int(resolution)
    kw = {
        "num_inference_steps": int(steps),
        "guidance_scale": 7.5,
        "guidance_rescale": 0.7,
        "output_type": "pt",
    }
    folder = StableDiffusionPipeline.from_pretrained(out / "export", local_files_only=True)
    folder.set_progress_bar_config(disable=True)
    first = folder(PROMPTS, generator=[torch.Generator().manual_seed(i) for i in range(2)], **kw).images
    config = {k: v for k, v in folder.scheduler.config.items() if not k.startswith("_")}
    del folder  # one full pipeline in memory at a time
    single = StableDiffusionPipeline.from_single_file(
        out / "export.safetensors", original_config=str(out / "export.yaml"), config=str(out / "export"),
        local_files_only=True,
    )  # fmt: skip
    single.set_progress_bar_config(disable=True)
    second = single(
        PROMPTS, generator=[torch.Generator().manual_seed(i) for i in range(2)], height=res, width=res, **kw
    ).images
    from_yaml = {
        k: v for k, v in scheduler_from_yaml(out / "export.yaml").config.items() if not k.startswith("_")
    }
    return {
        "default_image_size": list(first.shape[-2:]),  # pipe() without height/width: the UNet's sample_size
        "single_file_max_abs_diff": float((first - second).abs().max()),
        "image_range": [float(first.min()), float(first.max())],
        "yaml_scheduler_is_the_folders": from_yaml == config,
    }


def cache_stage(out: str) -> list[str]:
    """The training command encode_latents printed, for one more step on the cached posteriors."""
    command = shlex.split(json.loads((Path(out) / "latents" / "latents.json").read_text())["train_command"])
    extra = ["micro_batch_size=1", "global_batch_size=1", "max_steps=1", "samples.every_n_steps=0",
             f"run_dir={Path(out) / 'run_cache'}", f"hydra.run.dir={Path(out) / 'run_cache'}"]  # fmt: skip
    return command[1:] + extra  # drop "python"


def run_subprocess(argv: list[str], log: Path) -> dict[str, Any]:
    """Run one stage as its own process; wall time, peak RSS (ru_maxrss: the largest process's, as
    `/usr/bin/time -v` reports it), and the peak anonymous memory of its process tree, data workers included
    (memory_watch.Watch, sampled)."""
    if argv[0] == "@cache":
        argv = cache_stage(*argv[1:])
    elif argv[0].startswith("@"):
        argv = [__file__, "--stage", *argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    start, load = time.time(), os.getloadavg()[0]
    with log.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, *argv], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT
        )
        watch = Watch(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {shlex.join(argv)} failed ({proc.returncode}); see {log}")
    watched = watch.summary()
    return {"wall_s": time.time() - start, "peak_rss_gib": usage.ru_maxrss * 1024 / GIB,
            "peak_anon_gib": watched["peak_tree_anon_gib"], "processes": watched["max_processes"],
            "min_available_gib": watched["min_mem_available_gib"], "load_avg_1min_at_start": load}  # fmt: skip


def run_in_process(argv: list[str]) -> dict[str, Any]:
    """The same stage in this process: the entry point's function on the same overrides (no memory figures)."""
    from training_helpers import compose, launch_module

    start = time.time()
    result: Any = None
    if argv[0] == "@diffusers":
        result = diffusers_stage(*argv[1:])
    elif argv[0] == "@cache":
        return run_in_process(cache_stage(*argv[1:]))
    elif argv[0] == "-m":
        module = __import__(argv[1], fromlist=["main"])
        code = module.main(argv[2:])
        if code:
            raise RuntimeError(f"python -m {shlex.join(argv[1:])} exited with {code}")
    else:
        script = Path(argv[0]).stem
        overrides = [o for o in argv[1:] if not o.startswith("hydra.")]
        config = {
            "train": "train",
            "sample": "sample",
            "export": "export",
            "encode_latents": "encode_latents",
            "evaluate": "evaluate",
        }
        cfg = compose(config[script], overrides)
        entry = getattr(launch_module(script), script)
        result = entry(cfg, overrides) if script == "encode_latents" else entry(cfg)
    return {"wall_s": time.time() - start, "result": result if isinstance(result, dict) else None}


def check(out: Path, reduced: bool, keep: bool = False, min_free_gib: float = 20.0) -> dict[str, Any]:
    """Run every stage; `keep=False` deletes the training checkpoints once exported (disk space)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    (out / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    report: dict[str, Any] = {"reduced": reduced, "cpu_count": os.cpu_count(), "stages": {}}
    for name, argv in stages(out, reduced):
        if name == "train 1 step from the cache":  # a full-size checkpoint is 12.9 GB: make room
            last = (out / "run" / "checkpoints" / "last.ckpt").resolve()
            report["checkpoint_gib"] = last.stat().st_size / GIB
            if not keep:
                shutil.rmtree(last.parent)
        if reduced:
            row = run_in_process(argv)
        else:  # the training stages hold the whole training state; the others about half of it at most
            _wait_for_memory(min_free_gib if name.startswith(("train", "resume")) else min_free_gib / 2)
            row = run_subprocess(argv, _log(out, name))
        report["stages"][name] = row
        print(f"{name:40s} {row['wall_s']:7.1f} s" + (f"  peak RSS {row['peak_rss_gib']:5.2f} GiB  anon "
              f"{row['peak_anon_gib']:5.2f} GiB  load {row['load_avg_1min_at_start']:.1f}" if not reduced else ""),
              flush=True)  # fmt: skip
    diffusers = "diffusers: folder + from_single_file"
    if reduced:
        report["diffusers"] = report["stages"][diffusers].pop("result")
    else:  # its numbers come back through its log
        report["diffusers"] = json.loads(_log(out, diffusers).read_text().strip().splitlines()[-1])
    report["storage_error"] = json.loads((out / "latents" / "latents.json").read_text())["storage_error"]
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def _log(out: Path, stage: str) -> Path:
    return out / "logs" / ("".join(c if c.isalnum() else "_" for c in stage) + ".log")


def _wait_for_memory(gib: float) -> None:
    """Full size needs ~19 GiB: on a shared host, wait (up to 30 min) until that much is available."""
    for _ in range(180):
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        available = int(next(x for x in meminfo if x.startswith("MemAvailable:")).split()[1]) * 1024 / GIB
        if available >= gib:
            return
        print(f"waiting: {available:.1f} GiB available, need {gib}", flush=True)
        time.sleep(10)
    raise RuntimeError(f"less than {gib} GiB available for 30 minutes; stop other jobs and run again")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "sd21_check")
    p.add_argument(
        "--reduced", action="store_true", help="small widths, same files and code, in this process"
    )
    p.add_argument("--keep", action="store_true", help="keep the training checkpoints (12.9 GB each)")
    p.add_argument("--stage", nargs="+", help=argparse.SUPPRESS)  # internal: one @stage in a subprocess
    args = p.parse_args()
    if args.stage:
        print(json.dumps(diffusers_stage(*args.stage[1:])))
        return
    report = check(args.out, args.reduced, args.keep)
    print(json.dumps({k: v for k, v in report.items() if k != "stages"}, indent=1))


if __name__ == "__main__":
    main()
