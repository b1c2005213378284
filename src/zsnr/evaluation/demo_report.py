"""The demo's report: report.md with the brightness tables, histograms and sample grids as PNG files."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from zsnr.evaluation.images import make_grid, save_png

COLUMNS = (
    ("mean", "mean"),
    ("std", "std"),
    ("p05", "p5"),
    ("p95", "p95"),
    ("frac_dark", "< -0.7"),
    ("frac_bright", "> +0.7"),
    ("wasserstein_to_reference", "W1 to data"),
)


def _row(label: str, stats: Mapping[str, Any]) -> str:
    cells = []
    for key, _ in COLUMNS:
        v = stats.get(key)
        cells.append("" if v is None else f"{100 * v:.0f}%" if key.startswith("frac") else f"{v:+.3f}")
    return f"| {label} | " + " | ".join(cells) + " |"


def stats_table(metrics: Mapping[str, Any], set_name: str, with_data: bool = True) -> list[str]:
    lines = ["| images | " + " | ".join(h for _, h in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    if with_data:
        lines.append(_row("data", metrics["data"][set_name]))
    for variant in (v for v in metrics if v != "data"):
        for seed, per_set in metrics[variant]["seeds"].items():
            lines.append(_row(f"{variant}, seed {seed}", per_set[set_name]))
    return lines


def extra_sets(metrics: Mapping[str, Any]) -> list[str]:
    """Sets measured for the models only (sampler checks), in their order."""
    first = next(v for v in metrics if v != "data")
    return [k for k in next(iter(metrics[first]["seeds"].values())) if k not in metrics["data"]]


def plot_histograms(brightness: Mapping[str, Mapping[str, torch.Tensor]], path: Path) -> Path:
    """One panel per image set: the data's brightness histogram against each model's (seeds pooled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(brightness["data"])
    fig, axes = plt.subplots(1, len(sets), figsize=(4 * len(sets), 3.2), squeeze=False)
    bins = torch.linspace(-1, 1, 41).numpy()
    styles = {"data": dict(color="0.6", alpha=0.6), "flawed": dict(color="C3", histtype="step", lw=2),
              "fixed": dict(color="C0", histtype="step", lw=2)}  # fmt: skip
    for ax, name in zip(axes[0], sets, strict=True):
        for who, per_set in brightness.items():
            values = per_set[name].clamp(-1, 1).numpy()
            ax.hist(values, bins=bins, density=True, label=who, **styles.get(who, {}))
        ax.set(title=name, xlabel="mean brightness ([-1, 1])", xlim=(-1.05, 1.05))
        ax.axvline(-0.7, color="0.3", ls=":", lw=1)
        ax.axvline(0.7, color="0.3", ls=":", lw=1)
    axes[0][0].set_ylabel("density")
    axes[0][0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_grid(images: Mapping[str, torch.Tensor], path: Path, columns: int = 12) -> Path:
    """One row per image set (its first `columns` images), uint8 images in, PNG out."""
    rows = [x[:columns] for x in images.values()]
    return save_png(make_grid(torch.cat(rows), columns=columns), path)


def write_report(
    out_dir: Path,
    metrics: Mapping[str, Any],
    brightness: Mapping[str, Mapping[str, torch.Tensor]],
    grids: Mapping[str, Path],
    prompt_sets: Mapping[str, Sequence[str]],
    setup: Mapping[str, Any],
) -> Path:
    """metrics.json, histograms.png and report.md under out_dir; returns the report's path."""
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot_histograms(brightness, out_dir / "histograms.png")
    lines = [
        "# zsnr demo: the paper in miniature",
        "",
        f"Command: `{setup['command']}`. Two tiny text-conditioned UNets with identical architecture, data, "
        f"steps and seeds ({setup['train_steps']} steps, batch {setup['batch']}, seeds {setup['seeds']}), "
        "trained by launch/train.py: **flawed** (`experiment=demo_flawed`: SD schedule, epsilon-prediction, "
        "leading steps, plain CFG) and **fixed** (`experiment=demo_fixed`: rescaled to zero terminal SNR, "
        "v-loss, trailing steps, CFG rescale phi = 0.7).",
        "",
        f"The models work in **pixel space** ({setup['resolution']} px RGB; the autoencoder is the identity with "
        f"{setup['patch_size']}x{setup['patch_size']} pixel patches folded into channels), so brightness is measured on exactly what the diffusion produced, "
        "not through a random VAE. Brightness = mean Rec. 601 luma of an image in [-1, 1]; the data row is "
        "the training set read through the same datamodule. Sampling: "
        f"{setup['sampler']}, {setup['num_steps']} steps, each model with its own spacing; prompt sets with "
        f"guidance w = {setup['guidance_scale']}; unconditional = empty prompt, no guidance. Same seeds for "
        f"both models. Wall time: {setup['minutes']:.1f} min.",
        "",
        "## Unconditional brightness distribution",
        "",
        *stats_table(metrics, "unconditional"),
        "",
    ]
    for name in extra_sets(metrics):
        lines += [f"### The same unconditional seeds, sampled with {name.split(', ')[1]}", ""]
        lines += [*stats_table(metrics, name, with_data=False), ""]
    for name, prompts in prompt_sets.items():
        lines += [f"## Prompt set `{name}`: " + ", ".join(f'"{p}"' for p in prompts), ""]
        lines += [*stats_table(metrics, name), ""]
    lines += ["## Summary (mean over seeds)", "", "| set | data mean | flawed mean | fixed mean | flawed W1 | fixed W1 |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for name in metrics["data"]:
        f, x = metrics["flawed"]["mean"][name], metrics["fixed"]["mean"][name]
        lines.append(
            f"| {name} | {metrics['data'][name]['mean']:+.3f} | {f['mean']:+.3f} | {x['mean']:+.3f} "
            f"| {f['wasserstein_to_reference']:.3f} | {x['wasserstein_to_reference']:.3f} |"
        )
    lines += ["", "![brightness histograms](histograms.png)", ""]
    for variant, grid in grids.items():
        lines += [
            f"**{variant}** (rows: " + ", ".join(brightness["data"]) + ")",
            "",
            f"![{variant}]({grid.name})",
            "",
        ]
    for note in setup.get("notes", []):
        lines += [note, ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
