"""State-dict key layouts: diffusers / transformers <-> the original SD 2.x (LDM, OpenCLIP) single file.

The original layout is what Stable Diffusion 2.x was released in and what UIs load (ComfyUI, A1111, Forge):
`model.diffusion_model.*` (the UNet), `first_stage_model.*` (the VAE), `cond_stage_model.model.*` (the OpenCLIP
text tower). diffusers converts it into its own layout on load (`diffusers.loaders.single_file_utils`:
convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint, convert_open_clip_checkpoint); the functions here go
the other way, key for key, and the tests check that diffusers' converters give the original tensors back.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.model."

_UNET_TOP = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_TOP = {"conv_norm_out": "norm_out"}  # conv_in, conv_out, quant_conv, post_quant_conv keep their names
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
# open_clip residual block -> transformers CLIPEncoderLayer (q, k, v are one in_proj in open_clip)
TEXT_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
CLIP_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's initial temperature; the text tower never uses it


def _rename(name: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    return name


def unet_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel state dict in SD's `model.diffusion_model.*` layout."""
    per_level = config["layers_per_block"] + 1  # LDM: L resnets (+ attention) and a downsampler per level
    attention_up = {i for i, t in enumerate(config["up_block_types"]) if t.startswith("CrossAttn")}
    return {UNET_PREFIX + _unet_key(k, per_level, attention_up): v for k, v in state.items()}


def _unet_key(key: str, per_level: int, attention_up: set[int]) -> str:
    top = _rename(key, _UNET_TOP)
    if top != key:
        return top
    m = re.fullmatch(
        r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)", key
    )
    if m:
        side, level, part, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        if part == "downsamplers":
            return f"input_blocks.{(level + 1) * per_level}.0.op.{rest.removeprefix('conv.')}"
        if part == "upsamplers":
            return f"output_blocks.{level * per_level + per_level - 1}.{2 if level in attention_up else 1}.{rest}"
        block = level * per_level + j + (1 if side == "down_blocks" else 0)
        name = "input_blocks" if side == "down_blocks" else "output_blocks"
        return (
            f"{name}.{block}.0.{_rename(rest, _UNET_RESNET)}"
            if part == "resnets"
            else f"{name}.{block}.1.{rest}"
        )
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        j, rest = int(m[2]), m[3]
        return (
            f"middle_block.{2 * j}.{_rename(rest, _UNET_RESNET)}"
            if m[1] == "resnets"
            else f"middle_block.1.{rest}"
        )
    raise ValueError(f"no original SD layout name for the UNet parameter {key!r} (not an SD 1.x/2.x UNet?)")


def vae_to_ldm(state: dict[str, torch.Tensor], num_levels: int) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict in SD's `first_stage_model.*` layout (attention as 1x1 convs)."""
    out = {}
    for key, value in state.items():
        name = _vae_key(key, num_levels)
        if ".attn_1." in name and name.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        out[VAE_PREFIX + name] = value
    return out


def _vae_key(key: str, num_levels: int) -> str:
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    if not m:
        return key  # quant_conv, post_quant_conv
    side, rest = m[1], m[2]
    m = re.fullmatch(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)", rest)
    if m:
        level = (
            int(m[2]) if m[1] == "down_blocks" else num_levels - 1 - int(m[2])
        )  # LDM numbers up levels by size
        where = "down" if m[1] == "down_blocks" else "up"
        if m[3] == "resnets":
            return f"{side}.{where}.{level}.block.{m[4]}.{_rename(m[5], {'conv_shortcut': 'nin_shortcut'})}"
        return f"{side}.{where}.{level}.{'downsample' if m[3] == 'downsamplers' else 'upsample'}.{m[5]}"
    m = re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", rest)
    if m:
        return f"{side}.mid.block_{int(m[1]) + 1}.{_rename(m[2], {'conv_shortcut': 'nin_shortcut'})}"
    m = re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest)
    if m:
        return f"{side}.mid.attn_1.{_rename(m[1], _VAE_ATTENTION)}"
    renamed = _rename(rest, _VAE_TOP)
    if renamed.split(".")[0] in ("conv_in", "conv_out", "norm_out"):
        return f"{side}.{renamed}"
    raise ValueError(f"no original SD layout name for the VAE parameter {key!r} (not an SD AutoencoderKL?)")


_TEXT_EMBEDDINGS = {  # open_clip -> transformers CLIPTextModel (without its "text_model." prefix)
    "token_embedding.weight": "embeddings.token_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_final.weight": "final_layer_norm.weight",
    "ln_final.bias": "final_layer_norm.bias",
}


def _text_keys(num_layers: int):
    """(open_clip key, transformers key) pairs; q, k, v are one `attn.in_proj_*` in open_clip, three in
    transformers: those come as (open_clip key, [q, k, v keys])."""
    yield from _TEXT_EMBEDDINGS.items()
    for i in range(num_layers):
        a, b = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for p in ("weight", "bias"):
            for old, new in TEXT_BLOCK.items():
                yield f"{a}{old}.{p}", f"{b}{new}.{p}"
            yield f"{a}attn.in_proj_{p}", [f"{b}self_attn.{n}_proj.{p}" for n in "qkv"]


def open_clip_text_to_hf(tower: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """The first `num_layers` blocks (and embeddings, final LayerNorm) of an open_clip TextTransformer state
    dict as transformers CLIPTextModel keys (without its "text_model." prefix)."""
    out = {}
    for ours, theirs in _text_keys(num_layers):
        if isinstance(theirs, list):
            out |= dict(zip(theirs, tower[ours].chunk(3), strict=True))
        else:
            out[theirs] = tower[ours]
    return out


def hf_text_to_open_clip(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """A CLIPTextModel read at SD 2.x's penultimate layer (diffusers' text_encoder/: one block less than the
    OpenCLIP tower) as the tower's `cond_stage_model.model.*` keys, with the missing last block written as an
    identity (all its projections zero, so it adds nothing): a loader that runs every block and one that stops
    at the penultimate, as SD 2.x does, then give the same states."""
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    width, dtype = state["final_layer_norm.weight"].shape[0], state["final_layer_norm.weight"].dtype
    out = {  # SD uses neither (no pooled output); open_clip loaders expect them
        "text_projection": torch.eye(width, dtype=dtype),
        "logit_scale": torch.tensor(CLIP_LOGIT_SCALE, dtype=dtype),
    }
    for ours, theirs in _text_keys(num_layers):
        out[ours] = torch.cat([state[k] for k in theirs]) if isinstance(theirs, list) else state[theirs]
    last = f"transformer.resblocks.{num_layers}."
    hidden = state["encoder.layers.0.mlp.fc1.weight"].shape[0]
    shapes = {"attn.in_proj": (3 * width, width), "attn.out_proj": (width, width),
              "mlp.c_fc": (hidden, width), "mlp.c_proj": (width, hidden)}  # fmt: skip
    for name, shape in shapes.items():
        sep = "_" if name == "attn.in_proj" else "."
        out[f"{last}{name}{sep}weight"] = torch.zeros(shape, dtype=dtype)
        out[f"{last}{name}{sep}bias"] = torch.zeros(shape[0], dtype=dtype)
    for norm in ("ln_1", "ln_2"):
        out[f"{last}{norm}.weight"] = torch.ones(width, dtype=dtype)
        out[f"{last}{norm}.bias"] = torch.zeros(width, dtype=dtype)
    return {TEXT_PREFIX + k: v for k, v in out.items()}
