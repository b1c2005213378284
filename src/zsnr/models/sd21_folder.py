"""A randomly initialised Stable Diffusion 2.1-base diffusers folder built from the real configs (no download).

    python -m zsnr.models.sd21_folder OUT [--reduced] [--seed 0]

The folder model=sd21_base reads, laid out as stabilityai/stable-diffusion-2-1-base ships it: model_index.json,
scheduler/ (PNDM, epsilon, leading: SD 2.1-base as released), tokenizer/ (CLIPTokenizer from open_clip's
bundled BPE), text_encoder/ (CLIPTextModel: OpenCLIP ViT-H/14's text tower read at its penultimate layer, 23
layers of 1024), unet/ (865.9M parameters), vae/ (83.7M) and feature_extractor/, with random weights: the
whole pipeline (train, save, resume, export, load) at full size where the weights cannot be downloaded.
`--reduced` keeps every file, class and layout and shrinks only the widths (UNet 32-128 channels, VAE 32-128,
text 64 wide, still 23 layers), so the tests run the same loading path in seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from zsnr.models.sd21 import SD21_BASE_SCHEDULER, SD21_TEXT_ENCODER, SD21_UNET, SD21_VAE
from zsnr.models.text import Tokenizer, clip_tokenizer, write_bpe_files
from zsnr.models.unet import build_unet

# same layouts, GroupNorm 32 and channels per attention head constant over levels, as the originals have
REDUCED: dict[str, dict[str, Any]] = {
    "unet": {
        "block_out_channels": [32, 64, 128, 128],
        "attention_head_dim": [2, 4, 8, 8],
        "cross_attention_dim": 64,
    },
    "vae": {"block_out_channels": [32, 64, 128, 128]},
    "text_encoder": {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4},
}


def write_random_sd21_folder(out: str | Path, reduced: bool = False, seed: int = 0) -> Path:
    """Write the folder (safetensors) and return its path; the weights are a function of `seed`."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline
    from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

    sizes = REDUCED if reduced else {"unet": {}, "vae": {}, "text_encoder": {}}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = build_unet({**SD21_UNET, **sizes["unet"]})
        vae = AutoencoderKL(**{**SD21_VAE, **sizes["vae"]})
        text_encoder = CLIPTextModel(CLIPTextConfig(**{**SD21_TEXT_ENCODER, **sizes["text_encoder"]}))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=clip_tokenizer(Tokenizer()),
        unet=unet,
        scheduler=PNDMScheduler.from_config(SD21_BASE_SCHEDULER),
        safety_checker=None,
        feature_extractor=CLIPImageProcessor(),  # SD 2.1-base's preprocessor_config.json: CLIP's defaults
        requires_safety_checker=False,
    )
    out = Path(out).expanduser()
    pipe.save_pretrained(out, safe_serialization=True)
    write_bpe_files(Tokenizer(), out / "tokenizer")  # vocab.json + merges.txt, as the hub folder has them
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write a random SD 2.1-base diffusers folder (the real configs).")
    p.add_argument("out", help="the folder to write")
    p.add_argument("--reduced", action="store_true", help="small widths, same files and layouts (for tests)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = write_random_sd21_folder(args.out, args.reduced, args.seed)
    print(f"wrote {out}; train on it with model=sd21_base model.path={out}")


if __name__ == "__main__":
    main()
