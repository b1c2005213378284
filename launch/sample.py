"""Sample images from a checkpoint: `python launch/sample.py checkpoint=PATH prompts='[...]'`. See configs/sample.yaml.

On N processes: `devices=N`, or under torchrun / srun; every image is the one a single process makes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from zsnr.data import to_model_range
from zsnr.evaluation.images import load_png, make_grid, save_png, to_uint8
from zsnr.sampling import SamplingSettings, generate, read_prompts, resolve_device
from zsnr.sampling.ranks import Ranks

log = logging.getLogger("zsnr.sample")
CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")


def sample(cfg: DictConfig, ranks: Ranks = Ranks()) -> dict:
    """Everything `python launch/sample.py` does on one rank of `ranks`; returns the run directory and the
    image files (every rank saves its own share; rank 0 the grid and settings.json)."""
    from zsnr.sampling import load_for_inference

    prompts = list(cfg.prompts) + (read_prompts(cfg.prompts_file) if cfg.prompts_file else [])
    if not prompts:
        raise ValueError("no prompts: set prompts='[\"a solid black background\"]' or prompts_file=PATH")
    if cfg.images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be >= 1, got {cfg.images_per_prompt}")
    device = ranks.device(resolve_device(cfg.device))
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
        "%d images of %d px in %s from %s (step %d) on %d processes",
        len(seeds), model.resolution, settings.dtype, cfg.checkpoint, model.step, ranks.world_size,
    )  # fmt: skip
    mine = ranks.images(len(seeds), cfg.batch_size)
    images = to_uint8(generate(model, [all_prompts[i] for i in mine], [seeds[i] for i in mine], settings,
                               cfg.batch_size, init, cfg.strength, progress=ranks.is_main))  # fmt: skip

    out = Path(cfg.out_dir)
    names = [f"images/{i // n:04d}_{i % n:02d}.png" for i in range(len(seeds))]
    for i, image in zip(mine, images, strict=True):
        save_png(image, out / names[i])
    images = ranks.gather({"images": images} if mine else {}, torch.tensor(mine, dtype=torch.int64))
    index = [
        {"file": name, "prompt": p, "seed": s} for name, p, s in zip(names, all_prompts, seeds, strict=True)
    ]
    if not ranks.is_main:
        return {"run_dir": out, "images": [out / names[i] for i in mine]}
    save_png(make_grid(images["images"], columns=n), out / "grid.png")
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
    from zsnr.training.cluster import inference_ranks

    with inference_ranks(cfg.devices, "sample", resolve_device(cfg.device)) as ranks:
        sample(cfg, ranks)


if __name__ == "__main__":
    main()
