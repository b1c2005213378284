"""Stable Diffusion 2.1 as released: every published config zsnr builds from, in one place (no imports, no
download). The files they were read from are named beside each; `zsnr.diffusers_interop` holds the betas."""

from __future__ import annotations

from typing import Any

SD_SCALING_FACTOR = 0.18215  # SD 1.x / 2.x latents have about unit variance after this factor

# stabilityai/stable-diffusion-2-1-base unet/config.json (the 768 px v model: sample_size 96, upcast_attention).
SD21_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "norm_num_groups": 32,
    "upcast_attention": False,
}
SD21_V_UNET: dict[str, Any] = {**SD21_UNET, "sample_size": 96, "upcast_attention": True}

# stabilityai/stable-diffusion-2-1(-base) vae/config.json
SD21_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "scaling_factor": SD_SCALING_FACTOR,
}

# stabilityai/stable-diffusion-2-1(-base) text_encoder/config.json
SD21_TEXT_ENCODER: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-05,
    "projection_dim": 512,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

# The OpenCLIP ViT-H/14 text tower (open_clip's model_configs/ViT-H-14.json) that SD 2.x reads at its penultimate
# layer; SD21_TEXT_ENCODER is the same tower as a CLIPTextModel, one layer less.
VIT_H14_TEXT: dict[str, int] = {"width": 1024, "heads": 16, "layers": 24, "output_dim": 1024}

# stabilityai/stable-diffusion-2-1-base scheduler/scheduler_config.json
SD21_BASE_SCHEDULER: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
