"""What `make paper` measures beyond the demo's statistics: the x0 a model predicts along its sampling steps
(the paper's Figure 5), over-exposure (Figure 6), and the claims table that compares each number with the
paper's statement of it.

Every function takes a loaded model (zsnr.sampling.InferenceModel) or uint8 images, so launch/paper.py and
the tests run the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from zsnr.sampling import SamplingSettings, autocast, decode_images, latent_shape, prepare


@torch.inference_mode()
def x0_trajectory(
    model, prompts: Sequence[str], seeds: Sequence[int], settings: SamplingSettings
) -> torch.Tensor:
    """The model's x0 prediction at every sampling step, as images in [-1, 1]: [steps, N, 3, H, W].

    Step 0 is the first timestep (t = T - 1 with trailing spacing). The paper's section 3.4 (Figure 5): with
    zero terminal SNR, at t = T the model cannot see the image in x_T, so its x0 prediction is the mean of the
    data given the prompt, nearly the same for every noise; detail comes in the later steps."""
    device = next(model.unet.parameters()).device
    predictions: list[torch.Tensor] = []
    with autocast(device, settings.torch_dtype):
        setup = prepare(model.unet, model.text_encoder, model.tokenizer, model.schedule, list(prompts),
                        list(seeds), latent_shape(model.autoencoder, model.resolution), settings)  # fmt: skip
        setup.sample(callback=lambda step: predictions.append(step["x0"]))
        return torch.stack([decode_images(model.autoencoder, x0).cpu() for x0 in predictions])


def spread_at_T(first: torch.Tensor, num_prompts: int) -> dict[str, float]:
    """Figure 5's claim in numbers, from the first step's x0 predictions [P * M, 3, H, W] (prompt-major: M noise
    seeds per prompt): `across_noise`, the standard deviation over the seeds of one prompt (mean over prompts
    and pixels), against `across_prompts`, that of the seed-averaged predictions over the prompts."""
    x = first.double().reshape(num_prompts, -1, *first.shape[1:])
    across_noise = x.std(dim=1).mean().item()
    across_prompts = x.mean(dim=1).std(dim=0).mean().item() if num_prompts > 1 else float("nan")
    return {
        "across_noise": across_noise,
        "across_prompts": across_prompts,
        "ratio": across_noise / across_prompts,
    }


def saturated_fraction(images: torch.Tensor, low: int = 3, high: int = 252) -> float:
    """Over-exposure (the paper's Figure 6): the fraction of uint8 channel values at the ends of the range
    (<= low or >= high), where guidance pushed values past what the data holds and they were clipped."""
    if images.dtype != torch.uint8:
        raise ValueError(f"saturated_fraction takes uint8 images, got {images.dtype}")
    return ((images <= low) | (images >= high)).double().mean().item()


@dataclass(frozen=True)
class Claim:
    """One row of the claims table: what the paper says, what the miniature measured, whether they agree."""

    section: str  # where the paper says it (table, figure or section)
    paper: str
    measured: str
    agrees: bool

    def row(self) -> str:
        return f"| {self.section} | {self.paper} | {self.measured} | {'yes' if self.agrees else '**no**'} |"


def claims_table(claims: Sequence[Claim]) -> list[str]:
    return ["| where | the paper | measured here | agrees |", "|---|---|---|---|", *(c.row() for c in claims)]


def best(values: dict[str, float], key: Callable[[float], float] = lambda v: v) -> str:
    """The name with the smallest key(value)."""
    return min(values, key=lambda k: key(values[k]))
