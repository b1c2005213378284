"""Sampling speed: zsnr.sampling.generate (what launch/sample.py and launch/evaluate.py run) against diffusers'
StableDiffusionPipeline on the same exported model, and what sampling costs in FLOPs.

`make bench` runs the full comparison (marked slow): the tiny model (configs/model/tiny.yaml, random weights)
is exported with zsnr.export.export_diffusers and loaded back with `StableDiffusionPipeline.from_pretrained`;
both make the same images (the same prompts, x_T, DDIM trailing, w = 7.5, phi = 0.7, S steps; checked to
1e-4), one batch of all prompts, torch on one thread. Each round times ours and diffusers' once, back to back,
the order alternating between rounds; reported: images/s of each, median over rounds with the min-max spread,
and the ratio ours / diffusers of each round (paired: both runs of a round share the machine's state, which
on a shared machine moves more between rounds than within one), its median and spread; in wall-clock time and
in CPU time of this process (wall time also counts waiting for other jobs). Both run the same UNet, which
takes nearly all the time; what the two pipelines do differently is what they do outside it (prompt encoding,
guidance, sampler updates, decoding and bookkeeping), so that is reported too: CPU time outside the UNet's
forward (forward hooks on each UNet), per image, median over rounds. Nothing asserts a time.

The FLOP count (torch.utils.flop_counter on the meta device) gives what an evaluation costs at full size:
`sampling_flops` is checked against the FLOPs of a real generate() call on the tiny model.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from zsnr.models import build_components
from zsnr.models.schedule import Schedule
from zsnr.sampling import InferenceModel, SamplingSettings, generate, image_generators, initial_noise

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [
    "a solid black background", "a white background", "a red circle on a gray background",
    "a blue square on a white background", "a green triangle", "a dark room", "snow", "a yellow circle",
]  # fmt: skip


def tiny_model() -> InferenceModel:
    spec = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "model" / "tiny.yaml"))
    parts = build_components(spec)
    parts.unet.eval().requires_grad_(False)
    return InferenceModel(
        parts.unet, parts.autoencoder, parts.text_encoder, parts.tokenizer, Schedule(), parts.resolution,
        spec, step=0,
    )  # fmt: skip


def exported_pipeline(model: InferenceModel, folder: Path):
    from diffusers import StableDiffusionPipeline

    from zsnr.export import export_diffusers

    with contextlib.redirect_stdout(io.StringIO()):  # the audit's report
        export_diffusers(model, folder)
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def runners(model: InferenceModel, pipe, prompts: list[str], steps: int):
    """(ours, diffusers): each makes the images of `prompts` (seeds 0..N-1) in one batch, in [-1, 1]."""
    seeds = list(range(len(prompts)))
    settings = SamplingSettings(num_steps=steps)  # DDIM, trailing, w 7.5, phi 0.7, float32
    size = model.resolution // model.autoencoder.downsample

    def ours() -> torch.Tensor:
        return generate(model, prompts, seeds, settings, batch_size=len(prompts), progress=False)

    def theirs() -> torch.Tensor:
        x_T = initial_noise(image_generators(seeds), (model.autoencoder.latent_channels, size, size), "cpu")
        out = pipe(
            prompts, num_inference_steps=steps, guidance_scale=settings.guidance_scale,
            guidance_rescale=settings.guidance_rescale, latents=x_T, height=model.resolution,
            width=model.resolution, output_type="pt",
        )  # fmt: skip
        return out.images * 2 - 1

    return ours, theirs


class InsideForward:
    """CPU seconds spent inside a module's forward calls (pre- and post-forward hooks)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.seconds, self.start = 0.0, 0.0
        module.register_forward_pre_hook(lambda *_: setattr(self, "start", time.process_time()))
        module.register_forward_hook(
            lambda *_: setattr(self, "seconds", self.seconds + time.process_time() - self.start)
        )


def measure(prompts: list[str], steps: int, rounds: int, folder: Path) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = tiny_model()
        pipe = exported_pipeline(model, folder)
        ours, theirs = runners(model, pipe, prompts, steps)
        difference = (ours() - theirs()).abs().max().item()  # also the warm-up of both
        unets = {"ours": InsideForward(model.unet), "diffusers": InsideForward(pipe.unet)}
        times: dict[str, dict[str, list[float]]] = {
            n: {"wall": [], "cpu": [], "outside": []} for n in ("ours", "diffusers")
        }
        for r in range(rounds):
            order = [("ours", ours), ("diffusers", theirs)]
            for name, run in order if r % 2 == 0 else order[::-1]:
                wall, cpu, inside = time.perf_counter(), time.process_time(), unets[name].seconds
                run()
                times[name]["wall"].append(time.perf_counter() - wall)
                times[name]["cpu"].append(time.process_time() - cpu)
                times[name]["outside"].append(times[name]["cpu"][-1] - (unets[name].seconds - inside))
    finally:
        torch.set_num_threads(threads)
    outside = {name: statistics.median(t["outside"]) / len(prompts) for name, t in times.items()}
    rates = {
        name: {
            clock: sorted(len(prompts) / times[name][clock][i] for i in range(rounds))
            for clock in ("wall", "cpu")
        }
        for name in times
    }
    ratios = {
        clock: sorted(d / o for o, d in zip(times["ours"][clock], times["diffusers"][clock], strict=True))
        for clock in ("wall", "cpu")
    }
    return {
        "images": len(prompts),
        "steps": steps,
        "rounds": rounds,
        "max_difference": difference,
        "rates": rates,
        "ratios": ratios,
        "outside_s": outside,
    }


def report(result: dict) -> None:
    r = result["rates"]
    print(
        f"\n[bench_sample] tiny model, {result['images']} images in one batch, DDIM {result['steps']} steps, "
        f"w 7.5, phi 0.7, float32, torch on 1 thread, {result['rounds']} alternating rounds; images/s, median "
        f"[min-max]; max |ours - diffusers| = {result['max_difference']:.1e}"
    )
    for clock in ("wall", "cpu"):
        o, d, q = r["ours"][clock], r["diffusers"][clock], result["ratios"][clock]
        print(
            f"  {clock:4s}: zsnr.sampling.generate {statistics.median(o):6.2f} [{o[0]:.2f}-{o[-1]:.2f}]   "
            f"diffusers StableDiffusionPipeline {statistics.median(d):6.2f} [{d[0]:.2f}-{d[-1]:.2f}]   "
            f"ours / diffusers per round {statistics.median(q):.3f}x [{q[0]:.3f}-{q[-1]:.3f}]"
        )
    out = result["outside_s"]
    print(
        f"  CPU time outside the UNet per image: zsnr {1e3 * out['ours']:.1f} ms, diffusers "
        f"{1e3 * out['diffusers']:.1f} ms ({out['diffusers'] / out['ours']:.2f}x)"
    )


def test_bench_sample_against_diffusers_tiny(tmp_path):
    """The benchmark's machinery in seconds: both runners make the same images."""
    result = measure(PROMPTS[:2], steps=2, rounds=1, folder=tmp_path / "export")
    report(result)
    assert result["max_difference"] < 1e-4  # measured 3e-6 (tests/integration/test_export.py)
    assert all(len(v) == 1 for by_clock in result["rates"].values() for v in by_clock.values())


@pytest.mark.slow
def test_bench_sample_against_diffusers(tmp_path):
    result = measure(PROMPTS, steps=25, rounds=15, folder=tmp_path / "export")
    report(result)
    assert result["max_difference"] < 1e-4
    report_sd21_cost()
    memory = sd21_sampling_memory()
    print("SD 2.1-base, 512 px, bf16 (GiB at the peak, weights left out): "
          + ", ".join(f"{name} {gib:.2f}" for name, gib in memory.items()))  # fmt: skip


# -- what sampling costs in FLOPs ----------------------------------------------------------------------------
def count_flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def sampling_flops(
    unet: float, decode: float, text: float, steps: int, images: int, guidance: bool = True
) -> float:
    """FLOPs of text-to-image for `images` images in one batch, from the per-image FLOPs of one UNet forward,
    one VAE decode and one text-encoder forward: S UNet forwards per image (two with CFG: the conditional and
    the unconditional one), one decode per image, the text encoder once per prompt and once for the negative
    prompt (encoded once per batch, zsnr.sampling.prompt_states)."""
    return images * (steps * (2 if guidance else 1) * unet + decode + text) + text


def part_flops(model: InferenceModel, latent: int, resolution: int) -> dict[str, float]:
    """Per-image FLOPs of one UNet forward, one VAE decode and one text-encoder forward."""
    channels = model.autoencoder.latent_channels
    device = next(model.unet.parameters()).device
    with torch.device(device):
        x, t = torch.randn(1, channels, latent, latent), torch.zeros(1, dtype=torch.long)
        ids = torch.zeros(1, 77, dtype=torch.long)
        states = torch.randn(1, 77, model.unet.config.cross_attention_dim)
    with torch.no_grad():
        return {
            "unet": count_flops(lambda: model.unet(x, t, encoder_hidden_states=states)),
            "decode": count_flops(lambda: model.autoencoder.decode(x)),
            "text": count_flops(lambda: model.text_encoder(ids)),
            "resolution": resolution,
        }


def test_sampling_flops_formula_matches_a_counted_generate():
    """The formula against FlopCounterMode around a real generate() call (CFG, 3 steps, 3 images)."""
    model = tiny_model()
    parts = part_flops(model, 16, model.resolution)
    counted = count_flops(
        lambda: generate(model, PROMPTS[:3], [0, 1, 2], SamplingSettings(num_steps=3), progress=False)
    )
    assert counted == sampling_flops(parts["unet"], parts["decode"], parts["text"], steps=3, images=3)
    no_cfg = SamplingSettings(num_steps=3, guidance_scale=1.0)
    counted = count_flops(lambda: generate(model, PROMPTS[:3], [0, 1, 2], no_cfg, progress=False))
    assert counted == sampling_flops(parts["unet"], parts["decode"], parts["text"], 3, 3, guidance=False)


def sd21_model(resolution: int = 512) -> InferenceModel:
    """SD 2.1-base's parts on the meta device (no weights, no memory): UNet, VAE, OpenCLIP ViT-H text tower."""
    from diffusers import AutoencoderKL

    from zsnr.models import SD21_UNET, KLAutoencoder, OpenCLIPTextEncoder, build_unet
    from zsnr.models.sd21 import SD21_VAE, VIT_H14_TEXT

    with torch.device("meta"):
        return InferenceModel(
            build_unet(SD21_UNET), KLAutoencoder(AutoencoderKL(**SD21_VAE)), OpenCLIPTextEncoder(**VIT_H14_TEXT),
            None, Schedule(), resolution, {}, 0,
        )  # fmt: skip


def sd21_part_flops(resolution: int = 512) -> dict[str, float]:
    return part_flops(sd21_model(resolution), resolution // 8, resolution)


def report_sd21_cost(images: int = 10_000, steps: int = 50, batch: int = 16, peak_tflops: float = 989.4,
                     utilisation: float = 0.4) -> dict[str, float]:  # fmt: skip
    """The paper's COCO evaluation at full size: 10k images, DDIM S = 50 with CFG, at an assumed utilisation of
    one GPU's dense bf16 peak (H100 SXM: 989.4 TFLOP/s)."""
    p = sd21_part_flops()
    total = images / batch * sampling_flops(p["unet"], p["decode"], p["text"], steps, batch)
    seconds = total / (peak_tflops * 1e12 * utilisation)
    print(
        f"SD 2.1-base at 512 px, per image: UNet forward {p['unet'] / 1e12:.3f} TFLOP, VAE decode "
        f"{p['decode'] / 1e12:.3f}, text encoder {p['text'] / 1e12:.4f}; {images} images, S = {steps} with CFG, "
        f"batches of {batch}: {total / 1e15:.0f} PFLOP = {seconds / 60:.0f} min on one GPU at {utilisation:.0%} of "
        f"{peak_tflops} TFLOP/s ({100 * steps * 2 * p['unet'] * images / total:.1f}% of it in the UNet)"
    )
    return {"total": total, "seconds": seconds, **p}


def sd21_sampling_memory(batch: int = 16) -> dict[str, float]:
    """GiB at the peak, weights left out, of SD 2.1-base's UNet called on a CFG batch ([x, x] for `batch`
    images) and of its VAE decoding 1 and DECODE_BATCH images at 512 px: bf16 autocast under CUDA's rules,
    traced on fake tensors (zsnr.training.memory_plan's tracker)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from zsnr.sampling.setup import DECODE_BATCH
    from zsnr.training.memory_plan import GIB, fake_tensors, follow_cuda_autocast, peak_tracker

    model = sd21_model()
    unet, decoder = model.unet, model.autoencoder
    out = {}
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake_tensors(unet), fake_tensors(decoder)
        follow_cuda_autocast(unet, decoder)
        calls = {
            f"unet, CFG batch of {batch}": lambda: unet(
                torch.randn(2 * batch, 4, 64, 64),
                torch.zeros(2 * batch, dtype=torch.long),
                encoder_hidden_states=torch.randn(2 * batch, 77, 1024),
            ),  # fmt: skip
            "decode, 1 image": lambda: decoder.decode(torch.randn(1, 4, 64, 64)),
            f"decode, {DECODE_BATCH} images": lambda: decoder.decode(torch.randn(DECODE_BATCH, 4, 64, 64)),
        }
        for name, call in calls.items():
            tracker = peak_tracker()
            tracker.track_external(unet, decoder)
            with tracker, torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                call()
            peak = tracker.get_tracker_snapshot("peak")
            weights = sum(
                b
                for d in peak.values()
                for k, b in d.items()
                if str(getattr(k, "value", k)) in ("Parameter", "Buffer")
            )
            out[name] = (sum(d["Total"] for d in peak.values()) - weights) / GIB
    return out
