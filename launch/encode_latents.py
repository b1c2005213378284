"""Precompute latents: `python launch/encode_latents.py model=... data=... out=DIR` (configs/encode_latents.yaml).

One pass over the data set (no resampling, no augmentation) through the frozen autoencoder and text encoder;
each sample becomes {key}.latent.npy (x0: latents already multiplied by the scaling factor), {key}.text.npy
(text hidden states [L, D]) and {key}.txt. Train on the result with data.urls=<printed pattern>
data.decode=latents: the training step then skips both encoders.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from zsnr.data import to_model_range, write_shards
from zsnr.data.shards import brace_pattern
from zsnr.models import Components, Tokenizer, build_components

log = logging.getLogger("zsnr.encode_latents")
CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")


@torch.no_grad()
def encoded_samples(
    parts: Components, batches: Any, device: torch.device, dtype: torch.dtype
) -> Iterator[dict]:
    for batch in batches:
        x0 = parts.autoencoder.encode(to_model_range(batch["image"].to(device)))
        text = parts.text_encoder(batch["input_ids"].to(device))
        for i, key in enumerate(batch["key"]):
            yield {
                "__key__": key,
                "latent.npy": x0[i].to(dtype).cpu().numpy(),
                "text.npy": text[i].to(dtype).cpu().numpy(),
                "txt": batch["caption"][i],
            }


def encode_latents(cfg: DictConfig, model_choice: str = "...") -> str:
    """Writes the latent shards and a latents.json beside them; returns the brace pattern of the shards."""
    spec = OmegaConf.to_container(cfg.model, resolve=True)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else "cpu")
    if cfg.device not in ("auto", None):
        device = torch.device(cfg.device)
    dtype = getattr(torch, cfg.dtype)
    parts = build_components(spec)
    parts.autoencoder.to(device)
    parts.text_encoder.to(device)
    datamodule = instantiate(
        cfg.data,
        resolution=parts.resolution,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        tokenizer=Tokenizer(),
        resampled=False,
        epoch_length=None,
        random_crop=False,
        random_flip=False,
        decode="images",
    )
    out = Path(cfg.out)
    paths = write_shards(
        encoded_samples(parts, datamodule.train_dataloader(), device, dtype),
        str(out / "latents-%06d.tar"),
        maxcount=cfg.samples_per_shard,
        desc="encoding latents",
    )
    pattern = brace_pattern(paths)
    meta = {
        "shards": pattern,
        "model": spec,
        "resolution": parts.resolution,
        "latent_channels": parts.autoencoder.latent_channels,
        "scaling_factor": parts.autoencoder.scaling_factor,
        "text_hidden_size": int(parts.text_encoder.hidden_size),
        "dtype": cfg.dtype,
    }
    (out / "latents.json").write_text(json.dumps(meta, indent=1))
    log.info(
        "wrote %d shards; train on them with:\n  python launch/train.py model=%s \"data.urls='%s'\" data.decode=latents",
        len(paths),
        model_choice,
        pattern,
    )
    return pattern


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="encode_latents")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    encode_latents(cfg, HydraConfig.get().runtime.choices.get("model", "..."))


if __name__ == "__main__":
    main()
