"""Load a training checkpoint for sampling, evaluation or export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zsnr.models import Tokenizer, build_components
from zsnr.models.checkpoint import TrainingCheckpoint
from zsnr.models.schedule import Schedule
from zsnr.sampling.pipelines import text_to_image


@dataclass
class InferenceModel:
    unet: nn.Module  # the EMA weights unless use_ema=False
    autoencoder: nn.Module  # encode(images) -> x0 / decode(x0); `.vae` is the diffusers AutoencoderKL if any
    text_encoder: nn.Module
    tokenizer: Tokenizer
    schedule: Schedule
    resolution: int
    model_spec: dict[str, Any]  # the `model=` config it was trained with
    step: int

    def __iter__(self):  # unet, vae, text_encoder, tokenizer, schedule = load_for_inference(...)
        return iter((self.unet, self.autoencoder, self.text_encoder, self.tokenizer, self.schedule))

    def generate(self, prompts: list[str], seeds: list[int], **kwargs: Any) -> torch.Tensor:
        """Images in [-1, 1]; kwargs as zsnr.sampling.text_to_image (num_steps, guidance_scale, ...)."""
        return text_to_image(
            self.unet, self.autoencoder, self.text_encoder, self.tokenizer, self.schedule, prompts, seeds,
            self.resolution, **kwargs,
        )  # fmt: skip


def load_for_inference(
    ckpt_path: str | Path,
    device: str | torch.device = "cpu",
    use_ema: bool = True,
    model_overrides: dict[str, Any] | None = None,
) -> InferenceModel:
    """Rebuild the model parts of a zsnr checkpoint (a .ckpt file, or a run directory: its newest) with the
    schedule it was trained with.

    The UNet comes from the checkpoint (EMA by default); the autoencoder and text encoder from the checkpoint
    when they were random (model=tiny), else from the paths in the saved model config. `model_overrides`
    replaces keys of that config (e.g. {"path": ...} when the base model lives elsewhere on this machine).
    The file is memory-mapped (torch.load(weights_only=True, mmap=True)): only what is used is read (not the
    optimizer state), and the UNet's parameters are the mapped tensors themselves (copy-on-write), so SD 2.1's
    3.5 GB UNet is never copied on the CPU. A sharded (FSDP) checkpoint directory is read as it is, only the
    UNet weights used (zsnr.models.checkpoint.read_sharded), each once.
    """
    weights_of = "ema" if use_ema else "raw"
    ckpt = TrainingCheckpoint.open(ckpt_path, weights=weights_of)  # a sharded directory: that UNet only
    spec = {**ckpt.model_spec, **(model_overrides or {})}
    schedule = ckpt.schedule
    ckpt.check_schedule(
        schedule,
        "zsnr.diffusion computes this schedule otherwise since the checkpoint was saved: sampling would use "
        "another schedule than the one trained with.",
    )
    parts = build_components(spec, pretrained_unet=False, empty_unet=True)
    weights = ckpt.unet(weights_of)
    parts.unet.load_state_dict(weights, assign=True)  # the UNet was built empty (meta device)
    left = [name for name, t in [*parts.unet.named_parameters(), *parts.unet.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{ckpt.where}: the checkpoint has no values for {left[:5]} of the UNet")
    if spec.get("channels_last"):
        parts.unet.to(memory_format=torch.channels_last)  # the loaded tensors are contiguous
    for name, state in ckpt.frozen.items():
        getattr(parts, name).load_state_dict(state)
    for part in (parts.unet, parts.autoencoder, parts.text_encoder):
        part.to(device).eval().requires_grad_(False)
    return InferenceModel(
        unet=parts.unet,
        autoencoder=parts.autoencoder,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        schedule=schedule,
        resolution=parts.resolution,
        model_spec=spec,
        step=ckpt.step,
    )
