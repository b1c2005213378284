"""What gpu_train_step.py reports beside its timings: the card's peak, its measured matmul rate, versions, and
the printed table (the JSON holds the same numbers)."""

from __future__ import annotations

import platform
from typing import Any

import torch

COLUMNS = ["name", "loop", "latent", "micro_batch", "precision", "attention", "channels_last", "compile",
           "compile_objective", "cuda_graphs", "fused_adamw", "checkpointing", "cudnn_benchmark", "status",
           "images_per_s", "step_ms", "mfu", "peak_mem_gib"]  # fmt: skip


# Dense bf16 tensor-core peaks from the vendors' data sheets (no sparsity), matched in this order by name.
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0, "H100 PCIe data sheet, bf16 dense"),
    ("H100 NVL", 835.0, "H100 NVL data sheet, bf16 dense"),
    ("H100", 989.4, "H100 SXM data sheet, bf16 dense"),
    ("H200", 989.4, "H200 data sheet, bf16 dense (same chip as H100 SXM)"),
    ("H800", 989.4, "H800 SXM data sheet, bf16 dense"),
    ("A100", 312.0, "A100 data sheet, bf16 dense"),
    ("L40S", 362.1, "L40S data sheet, bf16 dense"),
]


def peak_tflops(device_name: str) -> tuple[float | None, str]:
    for key, tflops, source in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops, source
    return None, f"no peak known for {device_name!r} (pass --peak-tflops)"


def matmul_tflops(n: int = 8192, repeats: int = 10) -> float:
    """bf16 n x n x n matrix products on the current GPU (random data), the achievable dense rate."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (start.elapsed_time(end) / 1e3) / 1e12


def _fmt(x: float | None, spec: str) -> str:
    return format("-", ">" + spec.split(".")[0]) if x is None else format(x, spec)


def line(row: dict[str, Any]) -> str:
    yn = {True: "y", False: "-"}
    return (f"{row['name']:26s} {row['loop']:5s} {row['latent']:3d} {row['micro_batch']:4d} {row['precision']:10s} "
            f"{row['attention']:5s} {yn[row['channels_last']]:2s} {_compiled(row):7s} {yn[row['fused_adamw']]:5s} "
            f"{yn[row['checkpointing']]:4s} "
            f"{yn[row['cudnn_benchmark']]:5s} {_fmt(row.get('images_per_s'), '8.2f')} {_fmt(row.get('step_ms'), '8.1f')} "
            f"{_fmt(row.get('mfu'), '6.1%')} {_fmt(row.get('peak_mem_gib'), '6.1f')}  {row['status']}")  # fmt: skip


def _compiled(row: dict[str, Any]) -> str:
    if row["compile_objective"]:
        return "loss+cg" if row["cuda_graphs"] else "loss"
    return "blocks" if row["compile"] else "-"


def versions() -> dict[str, str]:
    import diffusers
    import pytorch_lightning

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"torch": torch.__version__, "cuda": str(torch.version.cuda), "cudnn": str(cudnn),
            "diffusers": diffusers.__version__, "pytorch_lightning": pytorch_lightning.__version__,
            "python": platform.python_version()}  # fmt: skip


def table(r: dict[str, Any]) -> str:
    """The header lines and one line per row, as gpu_train_step.py prints them last."""
    lines = [f"device: {r['device']}; peak {r['peak_tflops']} TFLOP/s bf16 dense ({r['peak_source']}); "
             f"measured bf16 matmul {_fmt(r['matmul_tflops'], '.0f')} TFLOP/s; UNet "
             f"{r['unet_params'] / 1e6:.1f}M parameters; {r['versions']}"]  # fmt: skip
    for k, d in r["flops_per_image"].items():
        lim = r["compute_limit_images_per_s"][k]
        lines.append(f"latent {k}x{k}: fwd+bwd TFLOP/image " + ", ".join(f"{lp} {f / 1e12:.4g}" for lp, f in d.items())
                     + f"; compute limit {_fmt(lim['at_peak'], '.0f')} img/s at peak, "
                     f"{_fmt(lim['at_matmul'], '.0f')} at the measured matmul rate")  # fmt: skip
    mm = r.get("max_micro_batch", {})
    lines.append(f"largest micro-batch: {mm.get('value', mm.get('status'))} (probes {mm.get('probes')})")
    head = f"{'variant':26s} {'loop':5s} {'lat':>3s} {'B':>4s} {'prec':10s} {'attn':5s} {'cl':2s} {'compile':7s} {'fused':5s} " \
           f"{'ckpt':4s} {'cudnn':5s} {'img/s':>8s} {'ms/step':>8s} {'MFU':>6s} {'GiB':>6s}  status"  # fmt: skip
    return "\n".join(lines + [head] + [line(row) for row in r["variants"]])
