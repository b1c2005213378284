"""A zsnr checkpoint as a diffusers folder that keeps the paper's fixes in its scheduler config.

    export_diffusers(load_for_inference(ckpt), out_dir)   # or: python launch/export.py checkpoint=... out=DIR

Writes a `StableDiffusionPipeline` folder (safetensors): the EMA UNet (its `sample_size` the trained
resolution's, so pipe() defaults to it), the VAE, the text encoder as a transformers `CLIPTextModel`, a
`CLIPTokenizer`, and a `DDIMScheduler` configured as the checkpoint samples:
`rescale_betas_zero_snr`, `prediction_type`, `timestep_spacing` from its schedule, `clip_sample=False`, and
`set_alpha_to_one=True` (the last DDIM step lands on the x0 prediction, as zsnr's samplers do). Other tools
drop these flags (InvokeAI #7601, Forge #2371); the folder is audited (zsnr.audit) after writing. No config
keeps the path a component was loaded from.

An OpenCLIP text tower (SD 2.x's, or model=tiny's) is converted to a `CLIPTextModel` the way diffusers'
SD 2.x conversion does: the penultimate read-out becomes a model with one layer less, whose
`last_hidden_state` (final LayerNorm applied) is the same conditioning.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from zsnr.diffusers_interop import ddim_scheduler
from zsnr.models.ldm_keys import open_clip_text_to_hf
from zsnr.models.text import HFCLIPTextEncoder, OpenCLIPTextEncoder, clip_tokenizer, write_bpe_files


def open_clip_to_clip_text_model(encoder: OpenCLIPTextEncoder) -> nn.Module:
    """transformers CLIPTextModel with the first L-1 blocks of an open_clip TextTransformer and its ln_final."""
    from transformers import CLIPTextConfig, CLIPTextModel

    tower = encoder.tower
    blocks = tower.transformer.resblocks
    width, heads = encoder.width, blocks[0].attn.num_heads
    mlp = blocks[0].mlp
    if not isinstance(mlp.gelu, nn.GELU) or mlp.gelu.approximate != "none":
        raise ValueError(f"only exact-GELU open_clip towers convert to CLIPTextModel, got {mlp.gelu}")
    config = CLIPTextConfig(
        vocab_size=tower.vocab_size,
        hidden_size=width,
        intermediate_size=mlp.c_fc.out_features,
        num_hidden_layers=len(blocks) - 1,  # the penultimate read-out
        num_attention_heads=heads,
        max_position_embeddings=tower.num_pos,
        hidden_act="gelu",
        layer_norm_eps=tower.ln_final.eps,
        projection_dim=width,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0,
    )
    out = open_clip_text_to_hf(tower.state_dict(), config.num_hidden_layers)
    model = CLIPTextModel(config)
    own = model.state_dict()
    # transformers 4 names these "text_model.<key>", transformers 5 "<key>" (its files keep "text_model.")
    prefix = "text_model." if "text_model.final_layer_norm.weight" in own else ""
    out = {prefix + k: v for k, v in out.items()}
    missing = sorted(k for k in own if k not in out and not k.endswith("position_ids"))
    if missing:
        raise RuntimeError(
            f"open_clip -> CLIPTextModel mapping misses {missing[:5]}: transformers changed its layout?"
        )
    model.load_state_dict({k: v.clone() for k, v in out.items()}, strict=False)
    return model.eval()


def _drop_source_paths(out_dir: Path) -> None:
    """diffusers and transformers write the folder a component was loaded from into its config.json
    (`_name_or_path`): a path on the training machine, meaningless (and private) anywhere else."""
    for path in out_dir.rglob("*.json"):
        config = json.loads(path.read_text())
        if isinstance(config, dict) and {"_name_or_path", "name_or_path"} & config.keys():
            clean = {k: v for k, v in config.items() if k not in ("_name_or_path", "name_or_path")}
            path.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")


def export_diffusers(model, out_dir: str | Path, audit: bool = True) -> Path:
    """Write `model` (a zsnr.sampling.InferenceModel) as a diffusers StableDiffusionPipeline folder."""
    from diffusers import StableDiffusionPipeline

    vae = getattr(model.autoencoder, "vae", None)
    if vae is None:
        raise ValueError(
            f"the checkpoint's autoencoder is {type(model.autoencoder).__name__} (pixel space): a diffusers "
            "StableDiffusionPipeline needs an AutoencoderKL; only latent models (model.autoencoder.kind=kl or "
            "an SD 2.1 VAE) can be exported"
        )
    if isinstance(model.text_encoder, HFCLIPTextEncoder):
        text_encoder = model.text_encoder.model
    elif isinstance(model.text_encoder, OpenCLIPTextEncoder):
        text_encoder = open_clip_to_clip_text_model(model.text_encoder)
    else:
        raise ValueError(f"cannot export a text encoder of type {type(model.text_encoder).__name__}")
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(model.tokenizer),
        unet=model.unet,
        scheduler=ddim_scheduler(model.schedule),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    # pipe() defaults to sample_size x the VAE's factor: the resolution trained at, not the base model's
    model.unet.register_to_config(sample_size=model.resolution // model.autoencoder.downsample)
    out_dir = Path(out_dir).expanduser()
    pipe.save_pretrained(out_dir, safe_serialization=True)
    _drop_source_paths(out_dir)
    write_bpe_files(model.tokenizer, out_dir / "tokenizer")  # for loaders that read the slow-tokenizer files
    (out_dir / "zsnr_export.json").write_text(
        json.dumps(
            {"schedule": model.schedule.to_dict(), "step": model.step, "resolution": model.resolution},
            indent=2,
        )
    )
    if audit:
        from zsnr.audit import audit as run_audit
        from zsnr.audit import format_audit

        print(format_audit(run_audit(out_dir)))
    return out_dir
