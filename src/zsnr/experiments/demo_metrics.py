"""The demo's numbers: brightness, noise and colour of each image set against the training data's, and the
checks that say whether the miniature shows what the paper claims.

Every number is computed from uint8 images, the values the saved PNGs hold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from zsnr.data import to_model_range
from zsnr.evaluation.brightness import brightness_stats, mean_brightness
from zsnr.evaluation.colour import channel_spread, colour_agreement, mean_rgb_offset
from zsnr.evaluation.noise import median_residual

MEAN_KEYS = ("mean", "std", "p05", "p95", "frac_dark", "frac_bright", "wasserstein_to_reference")


def image_stats(images: torch.Tensor, reference: torch.Tensor | None = None) -> dict[str, Any]:
    """Brightness statistics (zsnr.evaluation.brightness), the median-filter noise (median and p90 over
    images), the mean RGB offset from grey and, with a reference set, the colour agreement with it."""
    noise = median_residual(images)
    ref_brightness = None if reference is None else mean_brightness(to_model_range(reference))
    out = brightness_stats(mean_brightness(to_model_range(images)), ref_brightness)
    out["noise_median"] = noise.median().item()
    out["noise_p90"] = torch.quantile(noise, 0.9).item()
    out["rgb_offset"] = mean_rgb_offset(images).tolist()
    out["channel_spread"] = channel_spread(images)
    if reference is not None:
        out["colour_agreement"] = colour_agreement(images, reference)
    return out


def measure(images: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> dict[str, dict]:
    """image_stats of every set against the data's images of the same set (a sampler check such as
    "unconditional, ddim S=100" against the data's "unconditional")."""
    return {name: image_stats(x, reference[name.split(",")[0]]) for name, x in images.items()}


def mean_over_seeds(per_seed: Mapping[str, Mapping[str, dict]]) -> dict[str, dict[str, float]]:
    keys = (*MEAN_KEYS, "noise_median", "noise_p90", "colour_agreement", "channel_spread")
    seeds = list(per_seed.values())
    return {
        s: {k: sum(r[s][k] for r in seeds) / len(seeds) for k in keys if k in seeds[0][s]} for s in seeds[0]
    }


def summarize(data: Mapping[str, torch.Tensor], runs: Mapping[str, Mapping[Any, dict]]) -> dict[str, Any]:
    """metrics.json: {"data": stats per set, model: {"seeds": {seed: stats per set}, "mean": ...}}."""
    out: dict[str, Any] = {"data": {name: image_stats(x) for name, x in data.items()}}
    for model, per_seed in runs.items():
        out[model] = {"seeds": {str(s): m for s, m in per_seed.items()}, "mean": mean_over_seeds(per_seed)}
    return out


def prompt_noise_spread(sets: Mapping[str, torch.Tensor], seeds: int) -> dict[str, float]:
    """What decides the colour of a model's images, the prompt or the noise? `sets`: uint8 image sets [N, 3, H, W]
    whose first `seeds` images share their noise seeds across the sets (zsnr.experiments.samples.prompt_set: the
    first prompt of every set has seeds 0, 1, ...). From each image's mean RGB in [-1, 1]:
    - "over_prompts": the standard deviation over the sets for one noise seed (mean over seeds and channels);
    - "over_noise": the standard deviation over the noise seeds within one set (mean over sets and channels);
    - "seeds": how many shared noise seeds both were measured on.
    A model that follows its prompts has over_prompts >> over_noise; one whose noise decides, the reverse."""
    if len(sets) < 2 or seeds < 2:
        raise ValueError(f"need >= 2 sets and >= 2 shared seeds, got {len(sets)} sets and {seeds} seeds")
    short = {k: len(x) for k, x in sets.items() if len(x) < seeds}
    if short:
        raise ValueError(f"sets with fewer than {seeds} images: {short}")
    rgb = torch.stack([to_model_range(x[:seeds]).mean(dim=(2, 3)) for x in sets.values()])  # [sets, seeds, 3]
    return {
        "over_prompts": rgb.std(dim=0, correction=0).mean().item(),
        "over_noise": rgb.std(dim=1, correction=0).mean().item(),
        "seeds": seeds,
    }


def w1_flawed_over_fixed(flawed: Mapping[str, Any], fixed: Mapping[str, Any]) -> float:
    """A set's W1 to the data, the flawed model's over the fixed one's: inf where only the fixed model's is 0,
    1 where both are."""
    a, b = flawed["wasserstein_to_reference"], fixed["wasserstein_to_reference"]
    return a / b if b > 0 else (math.inf if a > 0 else 1.0)


@dataclass(frozen=True)
class Check:
    claim: str
    seed: str  # a fine-tuning seed, or "all"
    value: float
    bound: str  # e.g. ">= 0.85"
    ok: bool

    def row(self) -> str:
        return (
            f"| {self.claim} | {self.seed} | {self.value:.3f} | {self.bound} | {'yes' if self.ok else 'NO'} |"
        )


def held(checks: Sequence[Check]) -> str:
    """How many of the checks hold, as "N of M"."""
    return f"{sum(c.ok for c in checks)} of {len(checks)}"


def demo_checks(
    metrics: Mapping[str, Any],
    extremes: Sequence[str],
    colour_sets: Sequence[str],
    noise_max: float = 0.03,
    mean_tolerance: float = 0.1,
    spread_ratio: float = 0.85,
    w1_ratio: float = 3.0,
    colour_min: float = 0.8,
) -> list[Check]:
    """The claims `make demo` stands for, per fine-tuning seed:
    - clean images: both fine-tunes' median noise <= noise_max on every set;
    - fixed: the extreme (dark, bright) sets' mean brightness within mean_tolerance of the data's, and the
      unconditional brightness std >= spread_ratio x the data's;
    - flawed: W1 to the data on every extreme set >= w1_ratio x the fixed model's;
    - both follow colours that are not about brightness: colour agreement >= colour_min."""
    data, checks = metrics["data"], []
    seeds = list(metrics["fixed"]["seeds"])
    for seed in seeds:
        fixed, flawed = metrics["fixed"]["seeds"][seed], metrics["flawed"]["seeds"][seed]
        for model, sets in (("flawed", flawed), ("fixed", fixed)):
            worst = max(sets, key=lambda s: sets[s]["noise_median"])
            v = sets[worst]["noise_median"]
            checks.append(
                Check(
                    f"{model}: median noise, worst set ({worst})", seed, v, f"<= {noise_max}", v <= noise_max
                )
            )
        for name in extremes:
            gap = abs(fixed[name]["mean"] - data[name]["mean"])
            checks.append(Check(f"fixed: {name} mean brightness, distance to the data's ({data[name]['mean']:+.2f})",
                                seed, gap, f"<= {mean_tolerance}", gap <= mean_tolerance))  # fmt: skip
            ratio = w1_flawed_over_fixed(flawed[name], fixed[name])
            checks.append(
                Check(
                    f"{name}: W1 to the data, flawed / fixed",
                    seed,
                    ratio,
                    f">= {w1_ratio}",
                    ratio >= w1_ratio,
                )
            )
        ratio = fixed["unconditional"]["std"] / data["unconditional"]["std"]
        checks.append(Check("fixed: unconditional brightness std / the data's", seed, ratio, f">= {spread_ratio}",
                            ratio >= spread_ratio))  # fmt: skip
        for model, sets in (("flawed", flawed), ("fixed", fixed)):
            for name in colour_sets:
                v = sets[name]["colour_agreement"]
                checks.append(
                    Check(f"{model}: colour agreement, {name}", seed, v, f">= {colour_min}", v >= colour_min)
                )
    return checks
