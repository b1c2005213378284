"""The latent cache: shards of VAE posteriors and text states, and the manifest that says what made them.

Stable Diffusion trains on a *sample* of the VAE posterior, drawn afresh every step (LDM's
`encode_first_stage(x).sample()`; diffusers' `latent_dist.sample()`), not on its mean. So the cache stores the
posterior itself, as `{key}.posterior.safetensors` with
    mean         [C, h, w]  posterior mean, already multiplied by the scaling factor
    std          [C, h, w]  posterior standard deviation, likewise scaled (absent in pixel space: no noise)
    text_states  [L, D]     the frozen text encoder's hidden states
in float32, bfloat16 or float16, and the training step draws x0 = mean + std * eps with that step's generator
(zsnr.training.DiffusionModule), exactly as it does when it encodes images itself. Beside them, as int64,
`original_size` and `crop_top_left` of the image's crop (zsnr.data.decode). With aspect-ratio buckets
(zsnr.data.buckets) each sample keeps its bucket's shape, [C, h / 8, w / 8] for SD, and the stream batches
equal shapes together.

`latents.json` beside the shards records the format, the encoder signature (model, resolution, scaling
factor: zsnr.models.encoder_signature) and what the storage dtype costs; a run whose model does not match is
refused before anything heavy starts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from zsnr.data.shards import BadData, Source

MEMBER = "posterior.safetensors"
MANIFEST = "latents.json"
FORMAT = "zsnr-latent-posterior/1"
BATCH_KEYS = {"mean": "latent_mean", "std": "latent_std", "text_states": "text_states"}
CROP_KEYS = ("original_size", "crop_top_left")  # stored and read back as they are (int64)
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def encode_sample(
    mean: torch.Tensor,
    std: torch.Tensor | None,
    text: torch.Tensor,
    dtype: str,
    crop: Mapping[str, torch.Tensor] | None = None,
) -> bytes:
    """One sample's member bytes, in the storage dtype; `crop`: its CROP_KEYS, kept as int64."""
    from safetensors.torch import save

    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"latent storage dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}")
    tensors = {"mean": mean, "text_states": text} | ({} if std is None else {"std": std})
    tensors = {k: v.detach().to(STORAGE_DTYPES[dtype]) for k, v in tensors.items()}
    tensors |= {k: v.detach().long() for k, v in (crop or {}).items() if k in CROP_KEYS}
    return save({k: v.cpu().contiguous() for k, v in tensors.items()})


def decode_sample(data: bytes) -> dict[str, torch.Tensor]:
    """Member bytes -> {"latent_mean", "latent_std" (if any), "text_states"} as float32, and the CROP_KEYS
    the cache has (caches written before them have none)."""
    from safetensors.torch import load

    if len(data) == 0:
        raise BadData("empty_member", f"zero-byte .{MEMBER}")
    try:
        tensors = load(data)
    except Exception as exn:  # safetensors raises its own error types for truncated or foreign bytes
        raise BadData("tensor_decode", f".{MEMBER} does not load: {exn!r}") from None
    if "mean" not in tensors or "text_states" not in tensors:
        raise BadData("tensor_decode", f".{MEMBER} holds {sorted(tensors)}, not mean/std/text_states")
    return {BATCH_KEYS[k]: v.float() for k, v in tensors.items() if k in BATCH_KEYS} | {
        k: v for k, v in tensors.items() if k in CROP_KEYS
    }


def storage_error(
    mean: torch.Tensor, std: torch.Tensor | None, dtype: str, generator: torch.Generator
) -> dict[str, float]:
    """What storing the posterior in `dtype` costs: x0 drawn from the rounded posterior minus x0 drawn from the
    float32 one with the same noise, as max |diff| and RMS, and the RMS relative to x0's standard deviation."""
    noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32)
    std = torch.zeros_like(mean) if std is None else std
    exact = mean.float() + std.float() * noise
    kind = STORAGE_DTYPES[dtype]
    rounded = mean.to(kind).float() + std.to(kind).float() * noise
    diff = rounded - exact
    rms = float(diff.square().mean().sqrt())
    return {"max_abs": float(diff.abs().max()), "rms": rms, "relative_rms": rms / float(exact.std())}


def write_manifest(folder: str | Path, content: Mapping[str, Any]) -> Path:
    path = Path(folder) / MANIFEST
    path.write_text(json.dumps({"format": FORMAT, **content}, indent=1))
    return path


def read_manifest(sources: Sequence[Source]) -> tuple[Path, dict[str, Any]]:
    """The manifest beside the first shard; refuses caches it cannot vouch for."""
    first = sources[0].urls[0]
    first = first[len("file:") :] if first.startswith("file:") else first
    if "://" in first or first.startswith("pipe:"):
        raise ValueError(
            f"data.decode=latents: the cache's {MANIFEST} is read beside its first shard, which must be a local "
            f"file; got {first}. Copy the cache (shards and {MANIFEST}) to a local or shared file system."
        )
    path = Path(first).parent / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"data.decode=latents: no {MANIFEST} beside the shards ({path}), so nothing says which model, "
            "resolution and scaling factor made them. Write the cache with launch/encode_latents.py."
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(
            f"{path}: format {manifest.get('format')!r}, not {FORMAT!r}. Caches of posterior means (older "
            "encode_latents) train on the mean where SD trains on posterior samples: re-encode with "
            "launch/encode_latents.py."
        )
    return path, manifest


def check_cache(sources: Sequence[Source], expected: Mapping[str, Any] | None) -> dict[str, Any]:
    """Refuse a cache whose encoder signature differs from the run's (`expected`; None checks the format only)."""
    path, manifest = read_manifest(sources)
    if expected is None:
        return manifest
    saved = manifest.get("encoder", {})
    differ = {k: (saved.get(k), v) for k, v in expected.items() if saved.get(k) != v}
    if differ:
        found = "; ".join(f"{k}: cache {a!r}, this run {b!r}" for k, (a, b) in differ.items())
        raise ValueError(
            f"the latent cache {path.parent} was made for another model than this run's ({found}). Train with "
            f"the settings it was made with (it printed: {manifest.get('train_command')}), or encode the data "
            "again with this run's model settings (launch/encode_latents.py)."
        )
    return manifest
