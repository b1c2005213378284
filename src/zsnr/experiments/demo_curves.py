"""The demo's learning curves: the prompt sets sampled from every checkpoint a run kept (the base's pretraining, the
arms' fine-tunes), measured like the final models, and plotted against training steps. They show where the base
and fine-tuning lengths put the models: whether the extremes and the colours have settled, or are still moving.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from zsnr.data import to_model_range
from zsnr.evaluation.brightness import mean_brightness
from zsnr.evaluation.colour import channel_spread, colour_agreement

STEP_FILE = re.compile(r"step=(\d+)\.ckpt")


def kept_checkpoints(run_dir: Path) -> dict[int, Path]:
    """{step: file} of the step checkpoints a run kept (run_dir/checkpoints/step=NNNNNN.ckpt)."""
    found = {}
    for path in (run_dir / "checkpoints").glob("step=*.ckpt"):
        match = STEP_FILE.fullmatch(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def sample_checkpoints(
    ckpts: Mapping[int, Path],
    sampling: Mapping,
    prompt_sets: Mapping[str, Sequence[str]],
    images_per_prompt: int,
    seed_stride: int,
    threads: int | None = None,
) -> dict[int, dict[str, torch.Tensor]]:
    """{step: {set: uint8 images}}: every prompt set, the first `images_per_prompt` seeds of each prompt as
    zsnr.experiments.samples.sample_sets numbers them with `seed_stride` images per prompt (so the last step's
    images are those of the final model's sets), with each checkpoint's own spacing and phi. A function of plain
    values (runs in a worker)."""
    from zsnr.experiments.samples import model_settings, prompt_set
    from zsnr.sampling import load_for_inference

    if threads:
        torch.set_num_threads(threads)
    out = {}
    for step, ckpt in ckpts.items():
        model = load_for_inference(ckpt)
        settings = model_settings(model, sampling)
        out[step] = {
            name: prompt_set(model, settings, prompts, images_per_prompt, sampling["batch_size"], seed_stride,
                             progress=False)
            for name, prompts in prompt_sets.items()
        }  # fmt: skip
    return out


def curve(
    per_step: Mapping[int, Mapping[str, torch.Tensor]],
    data: Mapping[str, torch.Tensor],
    colour_sets: Sequence[str],
) -> dict[str, Any]:
    """{"steps": [...], set: [mean brightness per step], "colour": [mean colour cosine over colour_sets],
    "mid tint": [channel_spread of the mid (grey) set per step] when there is one}."""
    steps = list(per_step)
    out: dict[str, Any] = {"steps": steps}
    for name in next(iter(per_step.values())):
        out[name] = [mean_brightness(to_model_range(per_step[s][name])).mean().item() for s in steps]
    if "mid" in out:
        out["mid tint"] = [channel_spread(per_step[s]["mid"]) for s in steps]
    out["colour"] = [
        sum(colour_agreement(per_step[s][c], data[c]) for c in colour_sets) / len(colour_sets) for s in steps
    ]
    return out


def plot_curves(
    curves: Mapping[str, Mapping[str, Any]],
    data_means: Mapping[str, float],
    extremes: Sequence[str],
    title: str,
    path: Path,
) -> Path:
    """Three panels: the base's extremes and colour over its pretraining; the arms' extremes over fine-tuning
    against the data's (dotted); the arms' colour cosine and the grey set's mean and tint over fine-tuning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"base": "0.2", "flawed": "C3", "fixed": "C0"}
    marks = dict(zip(extremes, ("v", "^"), strict=False))
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    panels = (
        (axes[0], ["base"], "base: pretraining step"),
        (axes[1], ["flawed", "fixed"], "fine-tuning step"),
        (axes[2], ["flawed", "fixed"], "fine-tuning step"),
    )
    for ax, models, xlabel in panels[:2]:
        for model in (m for m in models if m in curves):
            c = curves[model]
            for name in extremes:
                ax.plot(c["steps"], c[name], marker=marks.get(name, "o"), color=colours[model],
                        label=f"{model}: {name}")  # fmt: skip
            if model == "base":
                ax.plot(c["steps"], c["colour"], marker="o", color="C2", label="base: colour cos")
        for name in extremes:
            ax.axhline(data_means[name], color="0.5", ls=":", lw=1)
        ax.set(xlabel=xlabel, ylabel="mean brightness / cosine", ylim=(-1.08, 1.08))
        ax.legend(fontsize=8, loc="best")
    axes[0].set_title("base: extremes and colour")
    axes[1].set_title("extremes (dotted: the data's)")
    ax = axes[2]
    for model in (m for m in ("flawed", "fixed") if m in curves):
        c = curves[model]
        ax.plot(c["steps"], c["colour"], marker="o", color=colours[model], label=f"{model}: colour cos")
        if "mid" in c:
            ax.plot(
                c["steps"], c["mid"], marker="s", ls="--", color=colours[model], label=f"{model}: grey's mean"
            )
            ax.plot(
                c["steps"],
                c["mid tint"],
                marker="x",
                ls=":",
                color=colours[model],
                label=f"{model}: grey's tint",
            )
    if "mid" in data_means:
        ax.axhline(data_means["mid"], color="0.5", ls=":", lw=1)
    ax.set(xlabel="fine-tuning step", ylim=(-1.08, 1.08), title="colour cosine; grey's mean and tint")
    ax.legend(fontsize=8, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
