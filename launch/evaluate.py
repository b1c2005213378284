"""Evaluate a checkpoint: `python launch/evaluate.py checkpoint=PATH captions=FILE`. See configs/evaluate.yaml.

On N processes: `devices=N` (this process starts the other N - 1), or under torchrun / srun (one process per
GPU, devices left at 1); images and metrics.json are those of one process (zsnr.sampling.ranks).

The phi sweep: `python launch/evaluate.py -m ... guidance.rescale=0,0.25,0.5,0.7,0.75,1.0`; the Hydra callback
in configs/evaluate.yaml then writes the sweep summary (zsnr.evaluation.sweep).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from zsnr.evaluation.fid import reference_statistics
from zsnr.evaluation.metrics import ImageMetrics
from zsnr.evaluation.run import generate_and_measure, pick_captions
from zsnr.sampling import SamplingSettings, read_prompts, resolve_device
from zsnr.sampling.ranks import Ranks

log = logging.getLogger("zsnr.evaluate")
CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")


def evaluate(cfg: DictConfig, ranks: Ranks = Ranks()) -> dict:
    """Everything `python launch/evaluate.py` does on one rank of `ranks`; returns the metrics and the path
    of metrics.json (rank 0; None on the others)."""
    from zsnr.sampling import load_for_inference

    # Cheap checks first (options, captions, metric weights), before the model loads or an image is made.
    device = ranks.device(resolve_device(cfg.device))
    settings = SamplingSettings.from_options(cfg, device)
    captions = pick_captions(read_prompts(cfg.captions), cfg.num_images, cfg.caption_seed)
    m = cfg.metrics
    extractor = instantiate(m.feature_extractor) if m.feature_extractor is not None else None
    clip = instantiate(m.clip) if m.clip is not None else None
    model = load_for_inference(
        cfg.checkpoint,
        device=device,
        use_ema=cfg.use_ema,
        model_overrides=OmegaConf.to_container(cfg.model_overrides),
    )
    reference, cache = None, None
    if m.reference_dir is not None and extractor is None:
        raise ValueError("metrics.reference_dir is set but metrics.feature_extractor is null: FID needs both")
    if m.reference_dir is None and extractor is not None:
        log.warning("metrics.reference_dir is null: no FID (and no reference brightness); IS only")
    elif m.reference_dir is not None and ranks.is_main:  # only rank 0 computes the metrics
        reference, cache, cached = reference_statistics(
            m.reference_dir, extractor, model.resolution, m.reference_cache, m.reference_batch_size, device
        )
        log.info("reference statistics %s %s", "loaded from" if cached else "computed and cached in", cache)
    if clip is not None:
        clip.model.to(device)
    metrics = ImageMetrics(
        extractor, reference, clip, m.is_splits, m.dark, m.bright, m.histogram_bins, device
    )
    out_dir = Path(cfg.out_dir)
    log.info("%d images on %d processes, %s, from %s (step %d)",
             len(captions), ranks.world_size, settings, cfg.checkpoint, model.step)  # fmt: skip
    result = generate_and_measure(
        model, captions, settings, metrics, out_dir, cfg.batch_size, cfg.seed, cfg.save_images, ranks=ranks
    )
    if not ranks.is_main:
        return {"metrics": None, "path": None}
    record = {
        "settings": {
            **settings.to_dict(),
            "checkpoint": str(Path(cfg.checkpoint).resolve()),
            "step": model.step,
            "use_ema": cfg.use_ema,
            "captions": str(cfg.captions),
            "num_images": len(captions),
            "caption_seed": cfg.caption_seed,
            "seed": cfg.seed,
            "reference_dir": m.reference_dir,
            "reference_cache": str(cache) if cache else None,
            "schedule": model.schedule.to_dict(),
        },
        "metrics": result,
    }
    path = out_dir / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))
    log.info("metrics: %s", {k: v for k, v in result.items() if k != "brightness"})
    log.info("wrote %s", path)
    return {"metrics": result, "path": path}


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from zsnr.training.cluster import inference_ranks

    with inference_ranks(cfg.devices, "evaluate", resolve_device(cfg.device)) as ranks:
        evaluate(cfg, ranks)


if __name__ == "__main__":
    main()
