"""A ComfyUI workflow (API format) that samples a single-file export with the paper's settings.

    write_comfyui_workflow(model.schedule, "exported/zsnr-sd21.safetensors", resolution=512)
    # -> exported/zsnr-sd21.comfyui.json: load it with "Load" (or POST it to /prompt as {"prompt": ...})

ComfyUI reads neither the yaml nor the `v_pred` / `ztsnr` markers for SD 2.x checkpoints (it guesses SD 2.x's
prediction type from a weight statistic), so the settings live in the graph:

    CheckpointLoaderSimple -> ModelSamplingDiscrete (sampling v_prediction, zsnr on)
                           -> RescaleCFG (multiplier phi) -> KSampler (scheduler "simple": starts at sigma_max)

Node names and inputs are those of ComfyUI's nodes.py (CheckpointLoaderSimple, CLIPTextEncode,
EmptyLatentImage, KSampler, VAEDecode, SaveImage) and comfy_extras/nodes_model_advanced.py
(ModelSamplingDiscrete, RescaleCFG). ComfyUI's zero-SNR schedule clamps the last abar at 4.9e-8 instead of 0,
so its sigma_max is finite (about 4.5e3); sampling starts there, which is t = T in all but name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# zsnr prediction type -> ModelSamplingDiscrete's `sampling` ("x0" is in ComfyUI releases from 2024 on)
SAMPLING = {"v_prediction": "v_prediction", "epsilon": "eps", "sample": "x0"}
SCHEDULER = "simple"  # its first sigma is the model's sigma_max (t = T); "ddim_uniform" does not start there


def comfyui_workflow(
    ckpt_name: str,
    *,
    prediction_type: str,
    zero_terminal_snr: bool,
    guidance_rescale: float,
    resolution: int,
    prompt: str = "a solid black background",
    negative_prompt: str = "",
    steps: int = 30,
    cfg: float = 7.5,
    seed: int = 0,
    sampler_name: str = "euler",
) -> dict[str, dict[str, Any]]:
    """The API-format graph {node id: {"class_type", "inputs"}}; a link is [source node id, output index]."""
    if prediction_type not in SAMPLING:
        raise ValueError(f"ComfyUI's ModelSamplingDiscrete takes {sorted(SAMPLING)}, got {prediction_type!r}")
    if resolution % 8:
        raise ValueError(f"EmptyLatentImage needs a multiple of 8 px, got resolution {resolution}")
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {
            "class_type": "ModelSamplingDiscrete",
            "inputs": {"model": ["1", 0], "sampling": SAMPLING[prediction_type], "zsnr": zero_terminal_snr},
        },
        "3": {"class_type": "RescaleCFG", "inputs": {"model": ["2", 0], "multiplier": guidance_rescale}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["1", 1]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": negative_prompt, "clip": ["1", 1]}},
        "6": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": resolution, "height": resolution, "batch_size": 1},
        },
        "7": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["3", 0],
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": sampler_name,
                "scheduler": SCHEDULER,
                "positive": ["4", 0],
                "negative": ["5", 0],
                "latent_image": ["6", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "zsnr"}},
    }


def write_comfyui_workflow(schedule, single_file: str | Path, *, resolution: int) -> Path:
    """Write SINGLE_FILE's stem + .comfyui.json beside it, for `schedule` (a zsnr.models.Schedule)."""
    single_file = Path(single_file)
    graph = comfyui_workflow(
        single_file.name,
        prediction_type=schedule.prediction_type,
        zero_terminal_snr=bool(schedule.rescale_zero_terminal_snr),
        guidance_rescale=float(schedule.guidance_rescale),
        resolution=int(resolution),
    )
    path = single_file.with_name(single_file.stem + ".comfyui.json")
    path.write_text(json.dumps(graph, indent=2) + "\n")
    return path
