"""Precompute latents: `python launch/encode_latents.py model=... data=... out=DIR` (configs/encode_latents.yaml).

One pass over the data set (no resampling, no augmentation) through the frozen autoencoder and text encoder;
each sample becomes {key}.posterior.safetensors (the VAE posterior's mean and std, already multiplied by the
scaling factor, and the text hidden states [L, D]) and {key}.txt, in `dtype`; latents.json beside the shards
records the model, resolution and scaling factor (zsnr.data.latents). It prints the training command: the
training step then skips both encoders and draws each step's x0 from the stored posterior.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from zsnr.data import check_no_run_keys, to_model_range, write_shards
from zsnr.data.latents import CROP_KEYS, STORAGE_DTYPES, encode_sample, storage_error, write_manifest
from zsnr.data.shards import brace_pattern
from zsnr.models import Components, Tokenizer, build_components, encoder_signature, size_multiple

log = logging.getLogger("zsnr.encode_latents")
CONFIGS = str(Path(__file__).resolve().parent.parent / "configs")


@torch.no_grad()
def encoded_samples(
    parts: Components, batches: Any, device: torch.device, dtype: str, errors: dict
) -> Iterator[dict]:
    for batch in batches:
        mean, std = parts.autoencoder.posterior(to_model_range(batch["image"].to(device)))
        text = parts.text_encoder(batch["input_ids"].to(device))
        if not errors:  # what each storage dtype costs, measured on the first batch
            g = torch.Generator().manual_seed(0)
            cpu_std = None if std is None else std.cpu()
            errors.update({d: storage_error(mean.cpu(), cpu_std, d, g) for d in STORAGE_DTYPES})
        for i, key in enumerate(batch["key"]):
            crop = {k: batch[k][i] for k in CROP_KEYS}
            yield {
                "__key__": key,
                "posterior.safetensors": encode_sample(
                    mean[i], None if std is None else std[i], text[i], dtype, crop
                ),
                "txt": batch["caption"][i],
            }


def train_command(overrides: Sequence[str], pattern: str) -> str:
    """`python launch/train.py` with the model settings this cache was encoded with and the cache as data."""
    kept = [o for o in overrides if _key(o) in ("model", "data") or _key(o).startswith("model.")]
    return " ".join(
        [
            "python launch/train.py",
            *map(shlex.quote, kept),
            f"\"data.urls='{pattern}'\"",
            "data.decode=latents",
        ]
    )


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def encode_latents(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Writes the latent shards and latents.json beside them; returns the shard pattern, the manifest and the
    training command (`overrides`: the command line's, to repeat the model settings in it)."""
    if cfg.dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(STORAGE_DTYPES)}, got {cfg.dtype!r}")
    spec = OmegaConf.to_container(cfg.model, resolve=True)
    signature = encoder_signature(spec)  # checks the model files before anything loads
    check_no_run_keys(
        cfg.data, {"resolution": "model.resolution", "batch_size": "batch_size", "seed": "seed"}
    )
    datamodule = instantiate(  # before the model loads: a bad data setting fails at once
        cfg.data,
        resolution=int(spec["resolution"]),
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        tokenizer=Tokenizer(),
        resampled=False,
        epoch_length=None,
        random_crop=False,
        random_flip=False,
        decode="images",
        size_multiple=size_multiple(spec),  # data.buckets: each bucket is a latent shape the cache stores
    )
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else "cpu")
    if cfg.device not in ("auto", None):
        device = torch.device(cfg.device)
    parts = build_components(spec)
    parts.autoencoder.to(device)
    parts.text_encoder.to(device)
    out, errors = Path(cfg.out), {}
    paths = write_shards(
        encoded_samples(parts, datamodule.train_dataloader(), device, cfg.dtype, errors),
        str(out / "latents-%06d.tar"),
        maxcount=cfg.samples_per_shard,
        desc="encoding latents",
    )
    pattern = brace_pattern(paths)
    command = train_command(overrides, pattern)
    manifest = write_manifest(
        out,
        {
            "shards": pattern,
            "encoder": signature,
            "dtype": cfg.dtype,
            "latent_channels": parts.autoencoder.latent_channels,
            "image_sizes": [list(size) for size in datamodule.sizes],  # (w, h): one, or the buckets
            "text_hidden_size": int(parts.text_encoder.hidden_size),
            "storage_error": errors,
            "train_command": command,
        },
    )
    e = errors[cfg.dtype]
    log.info(
        "wrote %d shards and %s (storage %s: x0 off by up to %.3g, RMS %.3g = %.2g of x0's std); train with:\n  %s",
        len(paths), manifest, cfg.dtype, e["max_abs"], e["rms"], e["relative_rms"], command,
    )  # fmt: skip
    return {"shards": pattern, "manifest": manifest, "train_command": command}


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="encode_latents")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    encode_latents(cfg, HydraConfig.get().overrides.task)


if __name__ == "__main__":
    main()
