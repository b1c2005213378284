"""Export a checkpoint: `python launch/export.py checkpoint=PATH out=DIR` (configs/export.yaml).

DIR: a diffusers folder (zsnr.export; StableDiffusionPipeline.from_pretrained(DIR), then
pipe(prompt, guidance_rescale=0.7)). With single_file=true (the default) also DIR.safetensors, the original
SD 2.x layout the UIs load, DIR.yaml beside it (zsnr.single_file) and DIR.comfyui.json, a ComfyUI workflow that
samples it with the paper's settings (zsnr.comfyui; docs/uis.md).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from zsnr.comfyui import write_comfyui_workflow
from zsnr.export import export_diffusers
from zsnr.single_file import export_single_file, inference_config

log = logging.getLogger("zsnr.export")
CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def export(cfg: DictConfig) -> Path:
    from zsnr.sampling import load_for_inference

    if cfg.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {cfg.dtype!r}")
    model = load_for_inference(
        cfg.checkpoint,
        device="cpu",
        use_ema=cfg.use_ema,
        model_overrides=OmegaConf.to_container(cfg.model_overrides),
    )
    if cfg.single_file:
        inference_config(model)  # refuses a model the original layout cannot hold, before anything is written
    for part in (model.unet, model.autoencoder, model.text_encoder):
        part.to(DTYPES[cfg.dtype])
    out = export_diffusers(model, cfg.out)
    weights = "EMA" if cfg.use_ema else "raw"
    log.info("wrote the diffusers folder %s (step %d, %s weights)", out, model.step, weights)
    if cfg.single_file:
        single, yaml_path = export_single_file(model, out.with_name(out.name + ".safetensors"))
        workflow = write_comfyui_workflow(model.schedule, single, resolution=model.resolution)
        log.info(
            "wrote %s, %s and %s (original SD 2.x layout, for UIs; docs/uis.md)", single, yaml_path, workflow
        )
    return out


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
