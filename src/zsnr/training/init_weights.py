"""Start a run from trained weights (`init_from=PATH`): the UNet of a zsnr checkpoint or of a diffusers folder.

This is not a resume. The new run keeps its own diffusion config (the paper's protocol: SD 2.1-base, trained
with epsilon-prediction on SD's schedule, fine-tuned as a v-prediction model on the rescaled schedule), starts
a fresh optimizer and LR schedule at step 0, and its EMA starts from these weights. `resume=` continues a run
and still refuses a changed schedule.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zsnr.models.checkpoint import PREFIXES, TrainingCheckpoint
from zsnr.models.files import load_state_dict

log = logging.getLogger("zsnr.init")
WEIGHTS = tuple(PREFIXES)
DIFFUSERS_UNET_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


@dataclass
class InitWeights:
    unet: dict[str, torch.Tensor]
    frozen: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # random frozen parts (tiny)
    description: str = ""


def load_init_weights(source: str | Path, weights: str = "ema") -> InitWeights:
    """The UNet weights to start from. `source`: a zsnr checkpoint (file or run directory) or a diffusers
    folder (a pipeline with unet/, or a UNet folder itself). `weights`: "ema" or "raw" for a zsnr checkpoint;
    a diffusers folder holds one set of weights (a zsnr export holds the EMA)."""
    if weights not in WEIGHTS:
        raise ValueError(f"init_weights must be one of {WEIGHTS}, got {weights!r}")
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"init_from={source}: no such file or folder. Give a zsnr checkpoint (.ckpt or run directory) "
            "or a diffusers folder (with unet/)"
        )
    unet_dir = path / "unet" if (path / "unet").is_dir() else path
    if path.is_dir() and (unet_dir / "config.json").is_file():
        return InitWeights(
            _diffusers_unet(unet_dir), description=f"the UNet of the diffusers folder {unet_dir}"
        )
    ckpt = TrainingCheckpoint.open(path, "init_from")
    return InitWeights(
        ckpt.unet(weights), ckpt.frozen, f"the {weights} UNet of {ckpt.where} (step {ckpt.step})"
    )


def _diffusers_unet(unet_dir: Path) -> dict[str, torch.Tensor]:
    for name in DIFFUSERS_UNET_FILES:
        if (unet_dir / name).is_file():
            return load_state_dict(unet_dir / name)
    index = unet_dir / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():  # a sharded UNet: every shard the index names
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_state_dict(unet_dir / shard))
        return state
    raise FileNotFoundError(f"init_from: {unet_dir} has a config.json but none of {DIFFUSERS_UNET_FILES}")


def apply_init_weights(
    init: InitWeights, unet: torch.nn.Module, frozen: dict[str, torch.nn.Module], model_name: str
) -> None:
    """Load into the run's UNet (strictly: every weight, same shapes) and into its random frozen parts."""
    try:
        unet.load_state_dict(init.unet, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"init_from: {init.description} does not fit this run's UNet ({model_name}); use the model= "
            f"settings it was trained with. {str(err)[:600]}"
        ) from err
    for name, part in frozen.items():
        if name in init.frozen:
            part.load_state_dict(init.frozen[name])
    log.info("init_from: started from %s", init.description)
