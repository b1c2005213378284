"""Training-step time of the tiny models on the CPU, and what the precomputed-latent cache saves.

`make bench` runs the full version (marked slow); a quick version runs in `make test` to keep it working.
Measured in one process with torch on ONE thread, no DataLoader, in CPU seconds of the process (the machine
is shared: wall time swings with the other jobs, CPU time of a single thread does not): one optimizer step
(forward, backward, AdamW) of DiffusionModule on a batch of 32 px images, (a) encoding them with the frozen
autoencoder and text encoder as training does, (b) from the cache (the posterior and text states that
launch/encode_latents.py stores; the step still draws x0 from it). Variants alternate over rounds; the fastest
round counts. For SD 2.1 at 512 px, where a CPU cannot time it, the same comparison is
made in FLOPs on the meta device (torch.utils.flop_counter): UNet forward + backward vs VAE encode + text.
"""

from __future__ import annotations

import time

import pytest
import torch

from zsnr.data import to_model_range
from zsnr.training import DiffusionModule
from zsnr.training.step import Update, train_step

ZERO_SNR = {"betas": "scaled_linear", "rescale_zero_terminal_snr": True, "prediction_type": "v_prediction"}


def _batch(n: int) -> dict:
    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 256, (n,), generator=g)
    image = levels.to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 32, 32).contiguous()
    return {"image": image, "caption": [f"a background of brightness {int(v)}" for v in levels]}


def _step_seconds(module: DiffusionModule, optimizer, batch: dict, steps: int) -> float:
    start = time.process_time()
    update = Update(list(module.unet.parameters()), optimizer)
    for _ in range(steps):
        train_step(update, [batch], module.micro_batch_loss)
    return (time.process_time() - start) / steps


def measure(model: dict, batch_size: int, steps: int, rounds: int) -> dict[str, float]:
    torch.set_num_threads(1)
    module = DiffusionModule(model, ZERO_SNR)
    module.log = lambda *a, **k: None  # no Trainer here
    optimizer = torch.optim.AdamW(module.unet.parameters(), lr=1e-4)
    images = _batch(batch_size)
    mean, std = module.autoencoder.posterior(to_model_range(images["image"]))
    text = module.text_encoder(module.tokenizer(images["caption"]))
    cached = {"latent_mean": mean, "latent_std": std, "text_states": text, "caption": images["caption"]}
    best = {"images": float("inf"), "cache": float("inf")}
    for _ in range(rounds):
        for name, batch in (("images", images), ("cache", cached)):
            best[name] = min(best[name], _step_seconds(module, optimizer, batch, steps))
    return {**best, "speedup": best["images"] / best["cache"], "batch": batch_size}


def sd21_flops(resolution: int = 512) -> dict[str, float]:
    from torch.utils.flop_counter import FlopCounterMode

    from zsnr.models import SD21_UNET, build_unet
    from zsnr.models.sd21 import SD21_VAE, VIT_H14_TEXT
    from zsnr.models.text import OpenCLIPTextEncoder

    def count(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / 1e12

    from diffusers import AutoencoderKL

    with torch.device("meta"):
        unet, vae = build_unet(SD21_UNET), AutoencoderKL(**SD21_VAE)
        text = OpenCLIPTextEncoder(**VIT_H14_TEXT)
        size = resolution // 8
        x, c, t = torch.randn(1, 4, size, size), torch.randn(1, 77, 1024), torch.zeros(1, dtype=torch.long)
        image, ids = torch.randn(1, 3, resolution, resolution), torch.zeros(1, 77, dtype=torch.long)
    unet_tf = count(lambda: unet(x, t, encoder_hidden_states=c).sample.sum().backward())
    with torch.no_grad():
        vae_tf = count(lambda: vae.encode(image).latent_dist.mean)
        text_tf = count(lambda: text(ids))
    total = unet_tf + vae_tf + text_tf
    return {"unet": unet_tf, "vae": vae_tf, "text": text_tf, "bound": total / unet_tf}


def report(steps: int, rounds: int) -> None:
    print(
        f"\ntiny models, one training step on 1 thread, CPU ms (min over {rounds} rounds of {steps} steps):"
    )
    print(
        f"{'model':12s} {'batch':>5s} {'encode (ms)':>12s} {'cached (ms)':>12s} {'img/s':>8s} {'speed-up':>9s}"
    )
    for name, spec in (
        ("tiny", {"kind": "tiny", "resolution": 32}),
        (
            "tiny_pixel",
            {"kind": "tiny", "resolution": 32, "autoencoder": {"kind": "identity", "patch_size": 2}},
        ),
    ):
        r = measure(spec, 32, steps, rounds)
        print(f"{name:12s} {r['batch']:5d} {1e3 * r['images']:12.1f} {1e3 * r['cache']:12.1f} "
              f"{r['batch'] / r['images']:8.1f} {r['speedup']:8.2f}x")  # fmt: skip
    f = sd21_flops()
    print(
        f"SD 2.1 at 512 px, per image: UNet fwd+bwd {f['unet']:.2f} TFLOP, VAE encode {f['vae']:.2f}, "
        f"text encoder {f['text']:.3f}: the cache removes {1 - 1 / f['bound']:.0%} of the FLOPs "
        f"(at most {f['bound']:.2f}x faster where compute-bound)"
    )


def test_bench_train_step_quick():
    r = measure({"kind": "tiny", "resolution": 32}, batch_size=4, steps=2, rounds=1)
    assert r["images"] > 0 and r["cache"] > 0


@pytest.mark.slow
def test_bench_train_step():
    report(steps=10, rounds=3)
