"""A zsnr checkpoint as one original-layout SD 2.x .safetensors with its inference yaml, for the UIs.

    export_single_file(load_for_inference(ckpt), "exported/zsnr-sd21.safetensors")   # or launch/export.py

Writes NAME.safetensors in the layout SD 2.x was released in (`model.diffusion_model.*`, `first_stage_model.*`,
`cond_stage_model.model.*`; zsnr.models.ldm_keys) and NAME.yaml beside it, a v2-inference-v.yaml-style config
(A1111 and Forge read the yaml beside a checkpoint; diffusers takes it as `original_config`) with
`parameterization: "v"` and SD's betas (`linear_start`/`linear_end`). Its `zsnr` section records the whole
schedule (rescale to zero terminal SNR, trailing spacing, phi) for `python -m zsnr.audit` and
`zsnr.diffusers_interop.scheduler_from_yaml`; UIs read only `model`.

The yaml keeps SD's betas rather than the rescaled ones (LDM's `given_betas`) on purpose: those end at
beta_T = 1, i.e. sigma_T = infinity, which the UIs' k-diffusion samplers cannot start from. The UIs rescale
SD's betas themselves when told (A1111 / Forge: "Noise schedule for sampling: Zero Terminal SNR"; ComfyUI:
ModelSamplingDiscrete with zsnr on), clamping abar_T just above 0. The file also carries the `v_pred` and
`ztsnr` marker keys (empty tensors) that some loaders look for: ComfyUI reads them for SDXL-type checkpoints,
some Forge builds turn the Zero Terminal SNR schedule on from `ztsnr`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zsnr.diffusers_interop import DIFFUSERS_BETAS, PARAMETERIZATION
from zsnr.models.ldm_keys import TEXT_PREFIX, hf_text_to_open_clip, unet_to_ldm, vae_to_ldm
from zsnr.models.schedule import Schedule
from zsnr.models.text import HFCLIPTextEncoder, OpenCLIPTextEncoder

LDM_NORM_GROUPS = 32  # LDM's UNet and VAE hard-code GroupNorm(32, channels)
HEADER = (
    "# Inference config of {name} (original SD 2.x layout). UIs read `model`; `zsnr` records the fixes the model\n"
    "# was trained with (read by python -m zsnr.audit). Sample with v-prediction, the Zero Terminal SNR noise\n"
    "# schedule, a scheduler that starts at the last timestep, and CFG rescale {phi}.\n"
)


def inference_config(model) -> dict[str, Any]:
    """The yaml of `model` (a zsnr.sampling.InferenceModel); refuses models the original layout cannot hold."""
    unet, vae, schedule = dict(model.unet.config), getattr(model.autoencoder, "vae", None), model.schedule
    if vae is None:
        raise ValueError("a pixel-space model (no AutoencoderKL) has no original SD single-file layout")
    vae_cfg = dict(vae.config)
    problems = _not_ldm(unet, vae_cfg, schedule)
    if problems:
        raise ValueError(
            "this model cannot be written as an original SD 2.x single file: " + "; ".join(problems)
            + ". Export the diffusers folder only (launch/export.py single_file=false)."
        )  # fmt: skip
    levels = len(unet["block_out_channels"])
    base = unet["block_out_channels"][0]
    heads = _per_level(unet["attention_head_dim"], levels)
    latent = model.resolution // 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    unet_params = {
        "use_checkpoint": False, "use_fp16": False, "image_size": latent,
        "in_channels": unet["in_channels"], "out_channels": unet["out_channels"], "model_channels": base,
        "attention_resolutions": sorted((2**i for i, t in enumerate(unet["down_block_types"])
                                         if t.startswith("CrossAttn")), reverse=True),
        "num_res_blocks": unet["layers_per_block"],
        "channel_mult": [c // base for c in unet["block_out_channels"]],
        "num_head_channels": base // heads[0], "use_spatial_transformer": True,
        "use_linear_in_transformer": bool(unet["use_linear_projection"]), "transformer_depth": 1,
        "context_dim": unet["cross_attention_dim"], "legacy": False,
    }  # fmt: skip
    ddconfig = {
        "double_z": True, "z_channels": vae_cfg["latent_channels"], "resolution": 256, "in_channels": 3,
        "out_ch": 3, "ch": vae_cfg["block_out_channels"][0],
        "ch_mult": [c // vae_cfg["block_out_channels"][0] for c in vae_cfg["block_out_channels"]],
        "num_res_blocks": vae_cfg["layers_per_block"], "attn_resolutions": [], "dropout": 0.0,
    }  # fmt: skip
    betas = DIFFUSERS_BETAS["scaled_linear"]  # LDM's "linear" schedule is SD's scaled_linear
    params = {
        "parameterization": PARAMETERIZATION[schedule.prediction_type],
        "linear_start": betas["beta_start"], "linear_end": betas["beta_end"], "num_timesteps_cond": 1,
        "log_every_t": 200, "timesteps": schedule.num_timesteps, "first_stage_key": "jpg",
        "cond_stage_key": "txt", "image_size": latent, "channels": unet["in_channels"],
        "cond_stage_trainable": False, "conditioning_key": "crossattn", "monitor": "val/loss_simple_ema",
        "scale_factor": float(vae_cfg["scaling_factor"]), "use_ema": False,
        "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": unet_params},
        "first_stage_config": {
            "target": "ldm.models.autoencoder.AutoencoderKL",
            "params": {"embed_dim": vae_cfg["latent_channels"], "monitor": "val/rec_loss", "ddconfig": ddconfig,
                       "lossconfig": {"target": "torch.nn.Identity"}},
        },
        "cond_stage_config": {
            "target": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
            "params": {"freeze": True, "layer": "penultimate"},
        },
    }  # fmt: skip
    return {
        "model": {"base_learning_rate": 1.0e-4, "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
                  "params": params},
        "zsnr": {"schedule": schedule.to_dict(), "resolution": model.resolution, "step": model.step},
    }  # fmt: skip


def _per_level(value: Any, levels: int) -> list[int]:
    return list(value) if isinstance(value, list | tuple) else [value] * levels


def _not_ldm(unet: dict, vae: dict, schedule: Schedule) -> list[str]:
    problems = []
    if schedule.betas != "scaled_linear":
        problems.append(f"betas {schedule.betas!r} (the UIs' SD 2.x schedule is scaled_linear)")
    if schedule.snr_shift != 1:
        problems.append(f"snr_shift {schedule.snr_shift} (the UIs know SD's schedule only, unshifted)")
    for name, cfg in (("UNet", unet), ("VAE", vae)):
        if cfg["norm_num_groups"] != LDM_NORM_GROUPS:
            problems.append(
                f"the {name} uses {cfg['norm_num_groups']} GroupNorm groups, LDM {LDM_NORM_GROUPS}"
            )
    heads = _per_level(unet["attention_head_dim"], len(unet["block_out_channels"]))
    if len({c // h for c, h in zip(unet["block_out_channels"], heads, strict=True)}) != 1:
        problems.append(
            f"channels per attention head differ by level ({unet['block_out_channels']} / {heads})"
        )
    if unet["block_out_channels"][0] % heads[0] or any(
        c % unet["block_out_channels"][0] for c in unet["block_out_channels"]
    ):
        problems.append(f"UNet channels {unet['block_out_channels']} are not multiples of the first level's")
    if unet.get("transformer_layers_per_block", 1) not in (1, [1] * len(heads)):
        problems.append("more than one transformer layer per block")
    if unet.get("class_embed_type") or unet.get("addition_embed_type"):
        problems.append("class or addition embeddings (not an SD 2.x UNet)")
    return problems


def single_file_state(model) -> dict[str, torch.Tensor]:
    """The model's tensors under original SD 2.x names, plus the marker keys of its schedule."""
    unet, vae = model.unet, model.autoencoder.vae
    state = unet_to_ldm(unet.state_dict(), dict(unet.config))
    state |= vae_to_ldm(vae.state_dict(), len(vae.config.block_out_channels))
    if isinstance(model.text_encoder, HFCLIPTextEncoder):
        text = model.text_encoder.model
        state |= hf_text_to_open_clip(text.state_dict(), text.config.num_hidden_layers)
    elif isinstance(model.text_encoder, OpenCLIPTextEncoder):
        state |= {TEXT_PREFIX + k: v for k, v in model.text_encoder.tower.state_dict().items()}
    else:
        raise ValueError(f"cannot write a text encoder of type {type(model.text_encoder).__name__}")
    if model.schedule.prediction_type == "v_prediction":
        state["v_pred"] = torch.tensor([])
    if model.schedule.rescale_zero_terminal_snr:
        state["ztsnr"] = torch.tensor([])
    return {k: v.contiguous() for k, v in state.items()}


def export_single_file(model, path: str | Path) -> tuple[Path, Path]:
    """Write PATH (.safetensors) and PATH's .yaml beside it; returns both paths."""
    import yaml
    from safetensors.torch import save_file

    path = Path(path).expanduser()
    if path.suffix != ".safetensors":
        raise ValueError(f"the single file is written as .safetensors, got {path}")
    config = inference_config(model)  # fails before anything is written
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(single_file_state(model), str(path), metadata={"format": "pt"})
    yaml_path = path.with_suffix(".yaml")
    header = HEADER.format(name=path.name, phi=model.schedule.guidance_rescale)
    yaml_path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path, yaml_path
