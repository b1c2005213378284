"""zsnr's schedule in diffusers' terms: the betas both build the same way, and the DDIMScheduler that samples
as a zsnr checkpoint does, for the exported folder (zsnr.export) and for a single file's yaml
(zsnr.single_file), plus the scheduler config an original-layout single file stands for (zsnr.audit).

One module owns this mapping so that export, single file and audit read it without importing each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zsnr.models.schedule import Schedule

# zsnr.diffusion.make_betas kinds that diffusers builds the same way (same constants); others go as trained_betas
DIFFUSERS_BETAS = {
    "linear": {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02},
    "scaled_linear": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "cosine": {"beta_schedule": "squaredcos_cap_v2"},
}
MARKERS = ("v_pred", "ztsnr")  # a single file's marker keys: v-prediction; rescaled to zero terminal SNR
PARAMETERIZATION = {"v_prediction": "v", "epsilon": "eps", "sample": "x0"}  # LDM's names for prediction types


def ddim_scheduler(schedule: Schedule):
    """DDIMScheduler that samples like zsnr with this schedule; its betas are checked against zsnr's."""
    from diffusers import DDIMScheduler

    named = DIFFUSERS_BETAS.get(schedule.betas) if schedule.snr_shift == 1 else None
    betas = named or {
        "trained_betas": schedule.make_betas().float().tolist(),  # already rescaled when asked to be
    }
    scheduler = DDIMScheduler(
        num_train_timesteps=schedule.num_timesteps,
        **betas,
        rescale_betas_zero_snr=schedule.rescale_zero_terminal_snr and "trained_betas" not in betas,
        prediction_type=schedule.prediction_type,
        timestep_spacing=schedule.spacing,
        steps_offset=1,  # StableDiffusionPipeline forces 1; only "leading" reads it (then 901, not zsnr's 900)
        clip_sample=False,
        set_alpha_to_one=True,
    )
    # diffusers rescales in float32: its abar is within ~4e-7 of zsnr's float64 one
    worst = (scheduler.alphas_cumprod.double() - schedule.alphas_cumprod()).abs().max().item()
    if worst > 1e-5:
        raise RuntimeError(
            f"diffusers' DDIMScheduler abar differs from zsnr's for {schedule} by up to {worst:.3g}"
        )
    return scheduler


def scheduler_from_yaml(yaml_path: str | Path):
    """The DDIMScheduler a single file's yaml describes (its `zsnr` schedule), as the folder export writes it."""
    import yaml

    config = yaml.safe_load(Path(yaml_path).read_text())
    if "zsnr" not in config:
        raise ValueError(f"{yaml_path} has no zsnr section (not written by zsnr's export)")
    return ddim_scheduler(Schedule(**config["zsnr"]["schedule"]))


def scheduler_config(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """For zsnr.audit: the diffusers scheduler config a single file stands for (from the yaml beside it, else
    its marker keys, else SD 2.x's defaults), and notes saying which."""
    import yaml

    path = Path(path).expanduser()
    yaml_path = path.with_suffix(".yaml")
    markers = set(MARKERS) & set(_keys(path))
    if yaml_path.is_file():
        config = yaml.safe_load(yaml_path.read_text())
        if "zsnr" in config:
            scheduler = scheduler_from_yaml(yaml_path)
            return dict(scheduler.config) | {"_class_name": type(scheduler).__name__}, [
                f"schedule from {yaml_path}"
            ]
        params = config["model"]["params"]
        parameterization = params.get("parameterization", "eps")
        prediction = {v: k for k, v in PARAMETERIZATION.items()}[parameterization]
        betas = {
            "beta_start": params.get("linear_start", 0.00085),
            "beta_end": params.get("linear_end", 0.012),
        }
        source = f"prediction type and betas from {yaml_path}"
    else:
        prediction = "v_prediction" if "v_pred" in markers else "epsilon"
        betas = {k: v for k, v in DIFFUSERS_BETAS["scaled_linear"].items() if k != "beta_schedule"}
        source = f"no {yaml_path.name} beside the file: SD 2.x's betas assumed"
    notes = [source, f"marker keys: {sorted(markers) or 'none'}"]
    notes.append(
        "the file records no timestep spacing: the UI's scheduler decides (SD's leading assumed here)"
    )
    return {
        "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear", **betas,
        "prediction_type": prediction, "rescale_betas_zero_snr": "ztsnr" in markers,
        "timestep_spacing": "leading", "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False,
    }, notes  # fmt: skip


def _keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:  # the header only: no tensor is read
            return list(f.keys())
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # tensors stay on disk
    return list(state.get("state_dict", state))
