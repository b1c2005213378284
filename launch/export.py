"""Export a checkpoint to a diffusers folder: `python launch/export.py checkpoint=PATH out=DIR`.

See configs/export.yaml and zsnr.export. Load it with StableDiffusionPipeline.from_pretrained(DIR) and sample
with pipe(prompt, guidance_rescale=0.7).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from zsnr.export import export_diffusers

log = logging.getLogger("zsnr.export")
CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def export(cfg: DictConfig) -> Path:
    from zsnr.training import load_for_inference

    if cfg.dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {cfg.dtype!r}")
    model = load_for_inference(
        cfg.checkpoint,
        device="cpu",
        use_ema=cfg.use_ema,
        model_overrides=OmegaConf.to_container(cfg.model_overrides),
    )
    for part in (model.unet, model.autoencoder, model.text_encoder):
        part.to(DTYPES[cfg.dtype])
    out = export_diffusers(model, cfg.out)
    log.info(
        "wrote the diffusers folder %s (step %d, %s weights)",
        out,
        model.step,
        "EMA" if cfg.use_ema else "raw",
    )
    return out


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
