"""The GPU training-throughput benchmark (gpu_train_step.py): its tiny CPU mode in `make test`, the full run on
a GPU (marked gpu; tests/bench/gpu_run.sh runs it on a CUDA machine and keeps the JSON in $ZSNR_BENCH_OUT).

Structure only, never wall-clock thresholds: every row is there, the timed ones ran, and the FLOPs our
Trainer step counts equal those of a bare UNet forward + backward on the same shapes, and those of the plain
diffusers-style loop.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from gpu_report import COLUMNS, peak_tflops
from gpu_step_loops import largest_fitting
from gpu_train_step import main
from torch.utils.flop_counter import FlopCounterMode

from zsnr.models import build_components

ROWS = [  # (name, loop, latent) in the order the tiny run writes them
    ("baseline", "ours", 16), ("plain loop", "plain", 16), ("no zsnr callbacks", "ours", 16),
    ("eager attention", "ours", 16), ("channels_last", "ours", 16), ("cudnn.benchmark", "ours", 16),
    ("bf16-mixed", "ours", 16), ("grad checkpointing", "ours", 16), ("best eager", "ours", 24),
    ("plain loop", "plain", 24), ("fused AdamW", "ours", 16), ("fused AdamW", "plain", 16),
    ("compile loss", "ours", 16), ("compile loss", "plain", 16), ("compile loss + CUDA graphs", "ours", 16),
    ("compile loss + CUDA graphs", "plain", 16), ("compile", "ours", 16), ("compile", "plain", 16),
    ("compile", "ours", 24),
]  # fmt: skip
SKIPPED_ON_CPU = {"cudnn.benchmark", "compile", "compile loss", "compile loss + CUDA graphs"}


def _unet_fwd_bwd_flops(batch: int, latent: int) -> float:
    """The reference: FlopCounterMode on the tiny UNet alone, outside any training code."""
    unet = build_components({"kind": "tiny", "resolution": 32, "init_seed": 0}).unet
    x = torch.randn(batch, 4, latent, latent)
    text = torch.randn(batch, 77, unet.config.cross_attention_dim)
    t = torch.randint(0, 1000, (batch,))
    with FlopCounterMode(display=False) as counter:
        unet(x, t, encoder_hidden_states=text).sample.square().mean().backward()
    return counter.get_total_flops() / batch


def test_bench_gpu_train_step_tiny_cpu(tmp_path, capsys):
    out = tmp_path / "results.json"
    returned = main(["--tiny", "--out", str(out)])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["mode"] == "tiny" and result["peak_tflops"] is None and result["matmul_tflops"] is None
    for key in ("device", "versions", "unet_params", "flops_per_image", "variants", "max_micro_batch"):
        assert key in result, key
    assert {"torch", "diffusers", "pytorch_lightning"} <= set(result["versions"])
    assert len(returned["variants"]) == len(result["variants"])
    rows = result["variants"]
    assert [(r["name"], r["loop"], r["latent"]) for r in rows] == ROWS
    for row in rows:
        assert set(COLUMNS) <= set(row), set(COLUMNS) - set(row)
        if row["name"] in SKIPPED_ON_CPU:
            assert row["status"].startswith("skipped"), row
        else:
            assert row["status"] == "ok" and row["images_per_s"] > 0 and row["steps"] == 2, row
        assert row["mfu"] is None  # no bf16 peak for a CPU
    assert result["max_micro_batch"]["status"].startswith("skipped")
    for latent, batch in (("16", 4), ("24", 2)):
        flops = result["flops_per_image"][latent]
        assert flops["ours"] > 0 and flops["ours"] == flops["plain"]
        assert flops["ours"] == pytest.approx(_unet_fwd_bwd_flops(batch, int(latent)), rel=1e-9)
    table = printed[printed.index("variant ") :].splitlines()
    assert len(table) == 1 + len(ROWS)


def test_largest_fitting_doubles_then_bisects_to_the_oom_edge():
    limit = 37
    seen = []

    def fits(n):
        seen.append(n)
        return n <= limit

    best, probes = largest_fitting(fits, start=8, cap=256, granularity=4, deadline=time.monotonic() + 60)
    assert best == 36  # the largest multiple of 4 that fits
    assert seen == [16, 32, 64, 48, 40, 36] and [n for n, _ in probes] == seen
    best, _ = largest_fitting(lambda n: True, start=8, cap=100, granularity=4, deadline=time.monotonic() + 60)
    assert best == 64  # no OOM below the cap: the last doubling
    best, probes = largest_fitting(fits, start=8, cap=256, granularity=4, deadline=time.monotonic() - 1)
    assert best == 8 and probes == []  # out of time: the start, which is known to fit


@pytest.mark.parametrize(
    "name, tflops",
    [("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.4),
     ("NVIDIA A100-SXM4-80GB", 312.0), ("Tesla T4", None)],
)  # fmt: skip
def test_peak_table(name, tflops):
    assert peak_tflops(name)[0] == tflops


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_gpu_train_step_full(tmp_path):
    out = os.environ.get("ZSNR_BENCH_OUT") or str(tmp_path / "gpu_train_step.json")
    budget = os.environ.get("ZSNR_BENCH_BUDGET_S", "400")
    torch.set_num_threads(os.cpu_count() or 1)  # builds the 866M-parameter UNet on the host first
    result = main(["--out", out, "--budget-s", budget])
    rows = {(r["name"], r["loop"], r["latent"]): r for r in result["variants"]}
    assert result["unet_params"] == 865_910_724
    for key in (("baseline", "ours", 64), ("plain loop", "plain", 64)):
        assert rows[key]["status"] == "ok" and rows[key]["images_per_s"] > 0, rows[key]
    flops = result["flops_per_image"]["64"]
    assert flops["ours"] == flops["plain"]
    assert 2.0e12 < flops["ours"] < 3.0e12  # fwd ~0.8 TFLOP/image at 512 px, bwd ~2x that
