"""The denoiser: diffusers `UNet2DConditionModel`, in SD 2.1's layout or a tiny one with the same traits."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn


def build_unet(config: dict[str, Any], empty: bool = False) -> nn.Module:
    """A randomly initialised UNet2DConditionModel from a diffusers config dict (its config.json's too).

    `empty=True` puts the parameters on the meta device: no memory and no initialisation (seconds for SD 2.1's
    866M parameters); fill them with `load_state_dict(weights, assign=True)`.
    """
    from diffusers import UNet2DConditionModel

    with torch.device("meta") if empty else contextlib.nullcontext():
        return UNet2DConditionModel.from_config(config)


def tiny_unet_config(
    in_channels: int,
    cross_attention_dim: int,
    sample_size: int,
    block_out_channels: tuple[int, ...] = (32, 64),
    layers_per_block: int = 1,
    attention_head_dim: tuple[int, ...] | None = None,
    norm_num_groups: int = 8,
    cross_attention: tuple[bool, ...] | None = None,
) -> dict[str, Any]:
    """SD's traits at toy scale: cross-attention in every block but the deepest (or at the levels
    `cross_attention` marks, top first), linear projections, per-block head counts."""
    n = len(block_out_channels)
    if n < 2:
        raise ValueError(f"a tiny UNet needs at least 2 levels, got block_out_channels={block_out_channels}")
    attend = list(cross_attention) if cross_attention is not None else [True] * (n - 1) + [False]
    if len(attend) != n or not any(attend):
        raise ValueError(
            f"cross_attention needs one flag per level ({n}), at least one true; got {cross_attention}"
        )
    heads = attention_head_dim or tuple(max(1, c // 16) for c in block_out_channels)
    return {
        "sample_size": sample_size,
        "in_channels": in_channels,
        "out_channels": in_channels,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attend],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attend)],
        "block_out_channels": list(block_out_channels),
        "layers_per_block": layers_per_block,
        "attention_head_dim": list(heads),
        "cross_attention_dim": cross_attention_dim,
        "use_linear_projection": True,
        "norm_num_groups": norm_num_groups,
    }


def configure_unet(
    unet: nn.Module,
    attention: str = "sdpa",
    gradient_checkpointing: bool = False,
    channels_last: bool = False,
) -> nn.Module:
    """Speed/memory switches, each set either way (so a benchmark can flip them on one model):
    `attention` "sdpa" (torch's fused scaled_dot_product_attention) or "eager" (plain matmul-softmax, for
    debugging and reference numbers); gradient checkpointing of the blocks; `channels_last` stores the conv
    weights NHWC (cuDNN's native layout on tensor-core GPUs; the training step gives its input the same layout,
    see `input_memory_format`). tests/bench/gpu_train_step.py measures what each one is worth."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    processors = {"sdpa": AttnProcessor2_0, "eager": AttnProcessor}
    if attention not in processors:
        raise ValueError(f"attention must be one of {sorted(processors)}, got {attention!r}")
    unet.set_attn_processor(processors[attention]())
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()
    return unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def input_memory_format(unet: nn.Module) -> torch.memory_format:
    """channels_last when configure_unet stored the UNet's conv weights that way, else contiguous_format."""
    conv_in = getattr(unet, "conv_in", None)  # a stand-in denoiser (tests) may have none
    if conv_in is None:
        return torch.contiguous_format
    weight = conv_in.weight
    weight = weight.to_local() if hasattr(weight, "to_local") else weight  # FSDP2 shards are DTensors
    nhwc = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    return torch.channels_last if nhwc else torch.contiguous_format
