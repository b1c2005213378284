"""Sample images from a checkpoint: `python launch/sample.py checkpoint=PATH prompts='[...]'`. See configs/sample.yaml."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from zsnr.data import to_model_range
from zsnr.evaluation.images import load_png, make_grid, save_png, to_uint8
from zsnr.sampling import SamplingSettings, generate, read_prompts, resolve_device

log = logging.getLogger("zsnr.sample")
CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")


def sample(cfg: DictConfig) -> dict:
    """Everything `python launch/sample.py` does; returns the run directory and the image files."""
    from zsnr.sampling import load_for_inference

    prompts = list(cfg.prompts) + (read_prompts(cfg.prompts_file) if cfg.prompts_file else [])
    if not prompts:
        raise ValueError("no prompts: set prompts='[\"a solid black background\"]' or prompts_file=PATH")
    if cfg.images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be >= 1, got {cfg.images_per_prompt}")
    device = resolve_device(cfg.device)
    settings = SamplingSettings.from_options(cfg, device)
    model = load_for_inference(
        cfg.checkpoint,
        device=device,
        use_ema=cfg.use_ema,
        model_overrides=OmegaConf.to_container(cfg.model_overrides),
    )
    init = to_model_range(load_png(cfg.init_image, model.resolution)) if cfg.init_image else None
    n = cfg.images_per_prompt
    all_prompts = [p for p in prompts for _ in range(n)]
    seeds = [cfg.seed + i for i in range(len(all_prompts))]
    log.info(
        "%d images of %d px in %s from %s (step %d)",
        len(seeds), model.resolution, settings.dtype, cfg.checkpoint, model.step,
    )  # fmt: skip
    images = to_uint8(generate(model, all_prompts, seeds, settings, cfg.batch_size, init, cfg.strength))

    out = Path(cfg.out_dir)
    index = []
    for i, (image, prompt, seed) in enumerate(zip(images, all_prompts, seeds, strict=True)):
        name = f"{i // n:04d}_{i % n:02d}.png"
        save_png(image, out / "images" / name)
        index.append({"file": f"images/{name}", "prompt": prompt, "seed": seed})
    save_png(make_grid(images, columns=n), out / "grid.png")
    record = {
        "checkpoint": str(Path(cfg.checkpoint).resolve()),
        "step": model.step,
        "use_ema": cfg.use_ema,
        "settings": settings.to_dict(),
        "schedule": model.schedule.to_dict(),
        "img2img": {"init_image": cfg.init_image, "strength": cfg.strength} if cfg.init_image else None,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "images": index,
    }
    (out / "settings.json").write_text(json.dumps(record, indent=2))
    log.info("wrote %d images, grid.png and settings.json to %s", len(index), out)
    return {"run_dir": out, "images": [out / e["file"] for e in index]}


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="sample")
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
