"""Training throughput of SD 2.1 fine-tuning on one GPU: images/s and model FLOP utilisation (MFU).

    python tests/bench/gpu_train_step.py [--out results.json]     full SD 2.1 UNet on a CUDA GPU (~7 min)
    python tests/bench/gpu_train_step.py --tiny [--out r.json]    the tiny model on the CPU (what `make test` runs)

The full mode builds SD 2.1's UNet (random init, 866M parameters: no weights needed) through DiffusionModule's
own constructor, and trains it on random latent-cache batches at 64x64 (512 px) and 96x96 (768 px) latents with
text states [B, 77, 1024]. Each row times one variant (gpu_step_loops.py: our Trainer step vs a plain
diffusers-style loop; bf16-mixed, channels_last, SDPA vs eager attention, cudnn.benchmark, gradient
checkpointing, the largest micro-batch that fits, fused AdamW, torch.compile of the loss (noise, UNet, MSE as one
graph) with and without CUDA graphs (mode="reduce-overhead": the step has one host sync, the skip decision, so
the graphs replay back to back), torch.compile of the UNet's blocks); rows run in priority order inside a time
budget and the JSON is rewritten after each one, so a run cut short keeps what it measured.
MFU = FLOPs counted per image (one fwd + bwd, no recompute) x images/s / the card's dense bf16 peak.
Reference points (512 px, per H100): NVIDIA's MLPerf v3.1 SD v2 ~106 images/s; compute limit ~330 images/s at
~800 TFLOP/s; zsnr's target 150 images/s.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import platform
import time
import traceback
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from gpu_report import line, matmul_tflops, peak_tflops, table, versions
from gpu_step_loops import ZERO_SNR, Variant, largest_fitting, latent_batch, run_ours, run_plain

# tiny_unet_config with SD 2.1's sizes is SD21_UNET (checked in build_module). The tiny KL autoencoder (2x down)
# is built but never used (latent batches); resolution 128 makes the config's sample_size 64 as in SD 2.1.
SD21_SPEC = {
    "kind": "tiny", "resolution": 128, "init_seed": 0,
    "unet": {"block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
             "attention_head_dim": [5, 10, 20, 20], "norm_num_groups": 32},
    "text_encoder": {"width": 1024, "heads": 16, "layers": 2},  # only for the empty caption (caption dropout)
}  # fmt: skip
TINY_SPEC = {"kind": "tiny", "resolution": 32, "init_seed": 0}


def build_module(tiny: bool):
    from zsnr.models import SD21_UNET
    from zsnr.training import DiffusionModule

    module = DiffusionModule(TINY_SPEC if tiny else SD21_SPEC, ZERO_SNR)
    if not tiny:
        config = json.loads(json.dumps(dict(module.unet.config), default=list))
        wrong = {k: (config.get(k), v) for k, v in SD21_UNET.items() if config.get(k) != v}
        if wrong:
            raise RuntimeError(f"the benchmark's UNet is not SD 2.1's (built, SD21_UNET): {wrong}")
    return module


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.tiny = args, args.tiny
        self.cuda = torch.cuda.is_available() and not args.tiny
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.start = time.monotonic()
        self.deadline = self.start + args.budget_s
        name = torch.cuda.get_device_name() if self.cuda else platform.processor() or "cpu"
        peak, source = (args.peak_tflops, "--peak-tflops") if args.peak_tflops else peak_tflops(name)
        self.rows: list[dict[str, Any]] = []
        self.flops: dict[str, dict[str, float]] = {}  # latent -> loop -> FLOPs per image (fwd + bwd)
        self.info = {
            "mode": "tiny" if self.tiny else "full", "device": name, "peak_tflops": peak, "peak_source": source,
            "matmul_tflops": matmul_tflops() if self.cuda else None, "versions": versions(),
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
        }  # fmt: skip
        self.module = build_module(self.tiny)
        self.text_dim = self.module.unet.config.cross_attention_dim
        self.info["unet_params"] = sum(p.numel() for p in self.module.unet.parameters())

    # -- one variant ------------------------------------------------------------------------------------------
    def measure(self, v: Variant, need_s: float | None = None, retry_oom: bool = True) -> dict[str, Any]:
        row = {**asdict(v), "micro_batch": v.batch, "px": None if self.tiny else 8 * v.latent, "status": "ok",
               "images_per_s": None, "step_ms": None, "steps": 0, "peak_mem_gib": None, "mfu": None}  # fmt: skip
        del row["batch"]
        reason = self._skip_reason(v, self.args.seconds + 20 if need_s is None else need_s)
        began = time.monotonic()
        if reason:
            row["status"] = f"skipped: {reason}"
        else:
            try:
                t = self._run(v, self.args.warmup, self.args.seconds, self.args.max_steps)
                row.update(images_per_s=t.images_per_s, step_ms=t.step_ms, steps=t.steps,
                           peak_mem_gib=t.peak_mem_gib)  # fmt: skip
                if t.flops is not None:
                    self.flops.setdefault(str(v.latent), {})[v.loop] = t.flops / v.batch
            except torch.OutOfMemoryError:
                row["status"] = "oom"
            except Exception as exn:  # one failing lever must not cost the rows after it (one device call)
                traceback.print_exc()
                row["status"] = f"error: {type(exn).__name__}: {str(exn)[:300]}"
        row["wall_s"] = time.monotonic() - began
        self._free()
        self.rows.append(row)
        print(f"[{time.monotonic() - self.start:6.1f} s] {line(row)}", flush=True)
        self.write()
        if row["status"] == "oom" and retry_oom and v.batch > 1:
            return self.measure(replace(v, batch=v.batch // 2), need_s, retry_oom=False)
        return row

    def _skip_reason(self, v: Variant, need_s: float) -> str | None:
        if not self.cuda and (v.cudnn_benchmark or v.cuda_graphs):
            return "needs CUDA"
        if not self.cuda and (v.compile or v.compile_objective) and not self.args.compile:
            return "CPU: compile only with --compile"
        if time.monotonic() + need_s > self.deadline:
            return f"time budget ({self.args.budget_s:.0f} s)"
        return None

    def _run(self, v: Variant, warmup: int, seconds: float, max_steps: int):
        from zsnr.models import configure_unet

        module = self.module
        configure_unet(module.unet, v.attention, v.checkpointing, v.channels_last)
        configure_unet(module.ema_unet, v.attention, False, v.channels_last)
        module.hparams.compile = (
            "loss" if v.compile_objective else v.compile
        )  # blocks: in place and for good,
        module.hparams.compile_mode = "reduce-overhead" if v.cuda_graphs else None  # so those rows come last
        module.hparams.fused_adamw = v.fused_adamw
        module._loss = module.per_sample_loss  # configure_model compiles it again for a compile_objective row
        batch = latent_batch(v.batch, v.latent, self.text_dim, pin=self.cuda)
        if v.loop == "ours":
            return run_ours(module, v, batch, self.device, warmup, seconds, max_steps)
        module.ema_unet.cpu()  # the plain loop keeps no EMA: leave its memory out of the plain rows
        return run_plain(module.unet, v, batch, self.device, warmup, seconds, max_steps)

    def _free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def largest_batch(self, v: Variant) -> int | None:
        if not self.cuda:
            self.info["max_micro_batch"] = {"status": "skipped: needs CUDA (finds the OOM edge)"}
            return None

        def fits(n: int) -> bool:
            try:
                self._run(replace(v, batch=n, count_flops=False), warmup=1, seconds=0.0, max_steps=1)
                ok = True
            except torch.OutOfMemoryError:
                ok = False
            self._free()
            print(f"[{time.monotonic() - self.start:6.1f} s] micro-batch {n}: {'fits' if ok else 'OOM'}")
            return ok

        deadline = min(self.deadline - self.args.compile_need_s, time.monotonic() + self.args.search_s)
        try:
            n, probes = largest_fitting(
                fits, v.batch, self.args.max_batch_cap, self.args.granularity, deadline
            )
        except Exception as exn:
            traceback.print_exc()
            self.info["max_micro_batch"] = {"status": f"error: {type(exn).__name__}: {str(exn)[:300]}"}
            return None
        if not probes:
            self.info["max_micro_batch"] = {"status": f"skipped: time budget ({self.args.budget_s:.0f} s)"}
            return None
        self.info["max_micro_batch"] = {"latent": v.latent, "value": n, "probes": probes, "status": "ok"}
        return n

    # -- the ladder -------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        a = self.args
        fp = "32-true" if self.tiny else "bf16-mixed"  # the CPU's natural precision; the other is a row
        base = Variant("baseline", latent=a.latent, batch=a.batch, precision=fp, count_flops=True)
        ref = self.measure(base)
        self.measure(replace(base, name="plain loop", loop="plain"))
        off = replace(base, count_flops=False)
        self.measure(replace(off, name="no zsnr callbacks", callbacks=False))
        self.measure(replace(off, name="eager attention", attention="eager"))
        cl = self.measure(replace(off, name="channels_last", channels_last=True))
        cb = self.measure(replace(off, name="cudnn.benchmark", cudnn_benchmark=True))
        other = "bf16-mixed" if fp == "32-true" else "32-true"
        self.measure(replace(off, name=other, precision=other))
        self.measure(replace(off, name="grad checkpointing", checkpointing=True))
        best = replace(off, name="best eager", channels_last=_wins(cl, ref), cudnn_benchmark=_wins(cb, ref))
        big = replace(best, latent=a.latent_large, batch=a.batch_large, count_flops=True)
        self.measure(big)
        self.measure(replace(big, name="plain loop", loop="plain"))
        n = self.largest_batch(best)
        if n is not None:
            self.measure(replace(best, name="max micro-batch", batch=n))
            self.measure(replace(best, name="max micro-batch", batch=n, loop="plain"))
        fused = self.measure(replace(best, name="fused AdamW", fused_adamw=True))
        self.measure(replace(best, name="fused AdamW", fused_adamw=True, loop="plain"))
        lean = replace(best, fused_adamw=_wins(fused, ref))
        loss = replace(lean, name="compile loss", compile_objective=True)
        self.measure(loss, need_s=a.compile_need_s)
        self.measure(replace(loss, loop="plain"), need_s=a.compile_need_s)
        graphs = replace(loss, name="compile loss + CUDA graphs", cuda_graphs=True)
        self.measure(graphs, need_s=a.compile_need_s)
        self.measure(replace(graphs, loop="plain"), need_s=a.compile_need_s)
        compiled = replace(best, name="compile", compile=True)
        self.measure(compiled, need_s=a.compile_need_s)
        self.measure(replace(compiled, name="compile", loop="plain"))
        self.measure(replace(big, name="compile", compile=True, count_flops=False), need_s=a.compile_need_s)
        self.write()
        print(table(self.result()), flush=True)
        return self.result()

    # -- output -------------------------------------------------------------------------------------------------
    def result(self) -> dict[str, Any]:
        peak, matmul = self.info["peak_tflops"], self.info["matmul_tflops"]
        per_image = {k: d.get("ours", d.get("plain")) for k, d in self.flops.items()}
        for row in self.rows:
            f = per_image.get(str(row["latent"]))
            ips = row.get("images_per_s")
            row["mfu"] = f * ips / (peak * 1e12) if f and ips and peak else None
        limits = {
            k: {
                "at_peak": peak * 1e12 / f if peak else None,
                "at_matmul": matmul * 1e12 / f if matmul else None,
            }
            for k, f in per_image.items()
        }
        return {**self.info, "flops_per_image": self.flops, "compute_limit_images_per_s": limits,
                "variants": self.rows, "elapsed_s": time.monotonic() - self.start}  # fmt: skip

    def write(self) -> None:
        if self.args.out:
            Path(self.args.out).write_text(json.dumps(self.result(), indent=1, default=str))


def _wins(row: dict[str, Any], ref: dict[str, Any]) -> bool:
    """A lever joins the 'best' rows when it beat the baseline by more than run-to-run noise (2%)."""
    ips, base = row.get("images_per_s"), ref.get("images_per_s")
    return bool(ips and base and ips > 1.02 * base)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny model on the CPU, 2 steps per row (make test)")
    p.add_argument("--out", help="write the results as JSON here (rewritten after every row)")
    p.add_argument("--budget-s", type=float, default=400.0, help="wall-clock budget; later rows are skipped")
    p.add_argument(
        "--seconds",
        type=float,
        default=6.0,
        help="timed seconds per row after warmup (0: --max-steps decides)",
    )
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the timing")
    p.add_argument("--max-steps", type=int, default=1000, help="timed steps per row at most")
    p.add_argument("--batch", type=int, default=8, help="micro-batch at the base latent size")
    p.add_argument("--batch-large", type=int, default=4, help="micro-batch at the large latent size")
    p.add_argument("--latent", type=int, default=64, help="base latent side (64 = 512 px)")
    p.add_argument("--latent-large", type=int, default=96, help="large latent side (96 = 768 px)")
    p.add_argument("--compile", action="store_true", help="also run the compile rows on the CPU (slow)")
    p.add_argument("--compile-need-s", type=float, default=150.0, help="time a compile row is given")
    p.add_argument("--search-s", type=float, default=60.0, help="time for the largest micro-batch search")
    p.add_argument("--max-batch-cap", type=int, default=128)
    p.add_argument("--granularity", type=int, default=2, help="largest micro-batch: multiple of this")
    p.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak, if not in the table")
    args = p.parse_args(argv)
    if args.tiny:  # small shapes, 2 timed steps per row: exercises every code path in seconds
        tiny = dict(seconds=0.0, warmup=2, max_steps=2, batch=4, batch_large=2, latent=16, latent_large=24)
        for key, value in tiny.items():
            if p.get_default(key) == getattr(args, key):
                setattr(args, key, value)
    if not args.tiny and not torch.cuda.is_available():
        p.error(
            "the full benchmark needs a CUDA GPU (SD 2.1 at 512 px); --tiny runs the tiny model on the CPU"
        )
    if args.warmup < 2:
        p.error(f"--warmup must be at least 2 (FLOPs are counted on the last warmup step), got {args.warmup}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    threads = torch.get_num_threads()
    if args.tiny:
        torch.set_num_threads(1)  # a shared CI machine; the numbers are structure, not speed
    # A training run has one shape; a compile row at a second latent size recompiles for it (statically, as
    # that run would) rather than tracing shape-generic code (which failed in inductor on the CPU, torch 2.14).
    try:
        with warnings.catch_warnings(), torch._dynamo.config.patch(automatic_dynamic_shapes=False):
            warnings.filterwarnings(
                "ignore", message=".*(num_workers|eval mode|Tensor Cores|precision|srun|LeafSpec).*"
            )
            return Bench(args).run()
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
