"""Build or load the four parts of a Stable Diffusion model from one plain spec dict (a `model=` config).

Kinds:
- "tiny": everything built randomly from sizes in the spec (seeded), no files; an `autoencoder` of kind "kl"
  (a small AutoencoderKL) or "identity" (pixel space).
- "diffusers": a local diffusers folder (how SD 2.1 is distributed): unet/, vae/, and the text encoder either
  from its text_encoder/ (`text_encoder: transformers`) or from OpenCLIP weights (`text_encoder: open_clip`).
- "original": an original SD 2.x single file (.safetensors, or a .ckpt that loads with weights_only=True);
  the OpenCLIP text tower comes from that file or from `open_clip_weights`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zsnr.models.autoencoders import (
    IdentityAutoencoder,
    KLAutoencoder,
    tiny_kl_autoencoder,
)
from zsnr.models.files import load_state_dict, require_dir, require_file
from zsnr.models.sd21 import (
    SD21_TEXT_ENCODER,
    SD21_UNET,
    SD21_V_UNET,
    SD21_VAE,
    SD_SCALING_FACTOR,
    VIT_H14_TEXT,
)
from zsnr.models.text import (
    HFCLIPTextEncoder,
    OpenCLIPTextEncoder,
    Tokenizer,
    load_open_clip_text,
)
from zsnr.models.unet import build_unet, configure_unet, tiny_unet_config

DIFFUSERS_HINT = "the diffusers folder of stabilityai/stable-diffusion-2-1-base (or -2-1 for 768 px)"
ORIGINAL_HINT = "v2-1_512-ema-pruned.safetensors (or v2-1_768-ema-pruned.safetensors) from stabilityai"


@dataclass
class Components:
    unet: nn.Module
    autoencoder: nn.Module  # KLAutoencoder or IdentityAutoencoder: encode(images) -> x0, decode(x0)
    text_encoder: nn.Module  # token ids [B, L] -> hidden states [B, L, D]
    tokenizer: Tokenizer
    resolution: int
    frozen_from_files: bool  # False: the frozen parts are random and must be saved with the checkpoint


def check_model_files(spec: dict[str, Any]) -> None:
    """Fail fast (before anything heavy) when a path in the spec does not exist."""
    kind = spec.get("kind")
    if kind == "tiny":
        return
    if kind == "diffusers":
        needed = ("unet", "vae") + (("text_encoder",) if spec.get("text_encoder") == "transformers" else ())
        require_dir(spec["path"], "model.path (SD 2.1 diffusers folder)", DIFFUSERS_HINT, needed)
    elif kind == "original":
        require_file(spec["checkpoint"], "model.checkpoint (original SD 2.x weights)", ORIGINAL_HINT)
    else:
        raise ValueError(f"model.kind must be 'tiny', 'diffusers' or 'original', got {kind!r}")
    if spec.get("open_clip_weights"):
        require_file(spec["open_clip_weights"], "model.open_clip_weights", "OpenCLIP ViT-H/14 weights")


def encoder_signature(spec: dict[str, Any]) -> dict[str, Any]:
    """What the frozen encoders' outputs depend on: the key of a latent cache (zsnr.data.latents). Cheap (reads
    at most vae/config.json), so a run can refuse a cache before any model loads. The UNet's settings are left
    out: any UNet trains on the same cache."""
    check_model_files(spec)
    kind = spec["kind"]
    if kind == "tiny":
        autoencoder = {"kind": "kl", **spec.get("autoencoder", {})}
        model = {"kind": kind, "init_seed": int(spec.get("init_seed", 0)), "autoencoder": autoencoder,
                 "text_encoder": dict(spec.get("text_encoder", {}))}  # fmt: skip
        scaling = (
            IdentityAutoencoder.scaling_factor if autoencoder["kind"] == "identity" else SD_SCALING_FACTOR
        )
    elif kind == "diffusers":
        from diffusers import AutoencoderKL

        path = Path(spec["path"]).expanduser().resolve()
        model = {"kind": kind, "path": str(path), "text_encoder": spec.get("text_encoder", "transformers")}
        default = inspect.signature(AutoencoderKL.__init__).parameters["scaling_factor"].default
        scaling = AutoencoderKL.load_config(path, subfolder="vae").get("scaling_factor", default)
    else:
        model = {"kind": kind, "checkpoint": str(Path(spec["checkpoint"]).expanduser().resolve())}
        scaling = SD21_VAE["scaling_factor"]
    if spec.get("open_clip_weights"):
        model["open_clip_weights"] = str(Path(spec["open_clip_weights"]).expanduser().resolve())
    return {"model": model, "resolution": int(spec["resolution"]), "scaling_factor": float(scaling)}


def size_multiple(spec: dict[str, Any]) -> int:
    """Image sides must be multiples of this many pixels for the model: the autoencoder's downsampling times
    the UNet's (2^(levels - 1)), so no UNet level has to resize a feature map (64 for SD 2.x: 8 x 8). What
    aspect-ratio buckets step in (zsnr.data.buckets). Cheap: reads at most the two config.json files."""
    check_model_files(spec)
    kind = spec["kind"]
    if kind == "tiny":
        ae = dict(spec.get("autoencoder", {}))
        if ae.get("kind", "kl") == "identity":
            down = int(ae.get("patch_size", 1))
        else:
            default = inspect.signature(tiny_kl_autoencoder).parameters["block_out_channels"].default
            down = 2 ** (len(ae.get("block_out_channels", default)) - 1)
        default = inspect.signature(tiny_unet_config).parameters["block_out_channels"].default
        levels = len(spec.get("unet", {}).get("block_out_channels", default))
    elif kind == "diffusers":
        from diffusers import AutoencoderKL, UNet2DConditionModel

        path = Path(spec["path"]).expanduser()
        down = 2 ** (len(AutoencoderKL.load_config(path, subfolder="vae")["block_out_channels"]) - 1)
        levels = len(UNet2DConditionModel.load_config(path, subfolder="unet")["block_out_channels"])
    else:
        down, levels = 2 ** (len(SD21_VAE["block_out_channels"]) - 1), len(SD21_UNET["block_out_channels"])
    return down * 2 ** (levels - 1)


def build_components(
    spec: dict[str, Any], pretrained_unet: bool = True, empty_unet: bool = False
) -> Components:
    """`pretrained_unet=False` builds the UNet from its config only (randomly initialised: its weights then come
    from elsewhere); `empty_unet=True` leaves it on the meta device instead (no memory, no initialisation), to
    be filled with `load_state_dict(weights, assign=True)`."""
    if empty_unet and pretrained_unet:
        raise ValueError(
            "empty_unet=True builds the UNet without weights: pass pretrained_unet=False with it"
        )
    check_model_files(spec)
    builders = {"tiny": _tiny, "diffusers": _diffusers, "original": _original}
    parts = builders[spec["kind"]](spec, pretrained_unet, empty_unet)
    configure_unet(
        parts.unet,
        spec.get("attention", "sdpa"),
        spec.get("gradient_checkpointing", False),
        spec.get("channels_last", False),
    )
    for frozen in (parts.autoencoder, parts.text_encoder):
        frozen.requires_grad_(False).eval()
    return parts


def weightless_components(spec: dict[str, Any]) -> tuple[Components, list[str]]:
    """The parts of a `model=` spec on the meta device, from configs only (no weight file is read), and notes
    on what was assumed: what a memory plan needs. tiny: built as training builds it; diffusers: the folder's
    config.json files, or SD 2.1's published layout when the folder is not on this machine; original: SD 2.1's
    layout (base, or v at 768 px) with the OpenCLIP text tower."""
    kind, notes = spec.get("kind"), []
    if kind == "tiny":
        with torch.device("meta"):
            return build_components(spec), notes
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    v = spec.get("variant") == "v" or int(spec["resolution"]) >= 768
    unet_cfg, vae_cfg, text = (SD21_V_UNET if v else SD21_UNET), SD21_VAE, CLIPTextConfig(**SD21_TEXT_ENCODER)
    path = Path(str(spec.get("path", ""))).expanduser()
    if kind == "diffusers" and (path / "unet" / "config.json").is_file():
        unet_cfg = UNet2DConditionModel.load_config(path, subfolder="unet")
        vae_cfg = AutoencoderKL.load_config(path, subfolder="vae")
        if spec.get("text_encoder", "transformers") == "transformers":
            text = CLIPTextConfig.from_pretrained(path, subfolder="text_encoder")
    elif kind == "diffusers":
        notes.append(f"model.path {path} is not on this machine: SD 2.1's published layout assumed")
    with torch.device("meta"):
        if kind == "original" or spec.get("text_encoder") == "open_clip":
            text_encoder: nn.Module = OpenCLIPTextEncoder(**VIT_H14_TEXT)
        else:
            text_encoder = HFCLIPTextEncoder(CLIPTextModel(text))
        vae = AutoencoderKL.from_config(vae_cfg)
        unet = build_unet(unet_cfg, empty=True)
    parts = Components(unet, KLAutoencoder(vae), text_encoder, Tokenizer(), int(spec["resolution"]), True)
    configure_unet(unet, spec.get("attention", "sdpa"), spec.get("gradient_checkpointing", False),
                   spec.get("channels_last", False))  # fmt: skip
    for frozen in (parts.autoencoder, parts.text_encoder):
        frozen.requires_grad_(False).eval()
    return parts, notes


def _tiny(spec: dict[str, Any], pretrained_unet: bool, empty_unet: bool) -> Components:
    ae, te = dict(spec.get("autoencoder", {})), dict(spec.get("text_encoder", {}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(spec.get("init_seed", 0)))
        if ae.pop("kind", "kl") == "identity":
            autoencoder: nn.Module = IdentityAutoencoder(**ae)
        else:
            autoencoder = tiny_kl_autoencoder(**ae)
        text_encoder = OpenCLIPTextEncoder(
            width=te.get("width", 32), heads=te.get("heads", 2), layers=te.get("layers", 2)
        )
        resolution = int(spec["resolution"])
        unet = build_unet(
            tiny_unet_config(
                in_channels=autoencoder.latent_channels,
                cross_attention_dim=text_encoder.hidden_size,
                sample_size=resolution // autoencoder.downsample,
                **spec.get("unet", {}),
            ),
            empty=empty_unet,
        )
    return Components(unet, autoencoder, text_encoder, Tokenizer(), resolution, frozen_from_files=False)


def _diffusers(spec: dict[str, Any], pretrained_unet: bool, empty_unet: bool) -> Components:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    path = Path(spec["path"]).expanduser()
    if pretrained_unet:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
    else:
        unet = build_unet(UNet2DConditionModel.load_config(path, subfolder="unet"), empty=empty_unet)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
    if spec.get("text_encoder", "transformers") == "transformers":
        from transformers import CLIPTextModel

        model = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True)
        text_encoder: nn.Module = HFCLIPTextEncoder(model)
    else:
        text_encoder = load_open_clip_text(_need(spec, "open_clip_weights"))
    return Components(
        unet, KLAutoencoder(vae), text_encoder, Tokenizer(), int(spec["resolution"]), frozen_from_files=True
    )


def _original(spec: dict[str, Any], pretrained_unet: bool, empty_unet: bool) -> Components:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    state = load_state_dict(spec["checkpoint"])
    unet_config = SD21_V_UNET if spec.get("variant", "base") == "v" else SD21_UNET
    unet = build_unet(unet_config, empty=empty_unet)
    if pretrained_unet:
        unet.load_state_dict(convert_ldm_unet_checkpoint(state, unet_config))
    vae = AutoencoderKL(**SD21_VAE)
    vae.load_state_dict(convert_ldm_vae_checkpoint(state, SD21_VAE))
    if spec.get("open_clip_weights"):
        text_encoder = load_open_clip_text(spec["open_clip_weights"])
    else:
        text_encoder = load_open_clip_text(spec["checkpoint"], prefix="cond_stage_model.model.")
    return Components(
        unet, KLAutoencoder(vae), text_encoder, Tokenizer(), int(spec["resolution"]), frozen_from_files=True
    )


def _need(spec: dict[str, Any], key: str) -> Any:
    if not spec.get(key):
        raise ValueError(
            f"model.{key} must be set for model.kind={spec['kind']!r} with these options: {spec}"
        )
    return spec[key]
