"""The demo's report: report.md with the checks and tables, metrics.json, the brightness histograms and one
labelled sample grid per model (4x nearest-neighbour, one row per image set)."""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from zsnr.evaluation.images import labelled_grid, save_png
from zsnr.experiments.demo_metrics import Check, held

COLUMNS = (
    ("mean", "mean"),
    ("std", "std"),
    ("frac_dark", "< -0.7"),
    ("frac_bright", "> +0.7"),
    ("wasserstein_to_reference", "W1 to data"),
    ("noise_median", "noise"),
    ("colour_agreement", "colour cos"),
    ("channel_spread", "tint"),
)
STYLES = {
    "data": dict(color="0.6", alpha=0.6),
    "base": dict(color="0.2", histtype="step", lw=1.5, ls="--"),
    "flawed": dict(color="C3", histtype="step", lw=2),
    "fixed": dict(color="C0", histtype="step", lw=2),
}


def _cell(key: str, v: Any) -> str:
    if v is None:
        return ""
    return (
        f"{100 * v:.0f}%"
        if key.startswith("frac")
        else f"{v:.3f}"
        if key.startswith(("noise", "channel"))
        else f"{v:+.2f}"
    )


def _row(label: str, stats: Mapping[str, Any]) -> str:
    return f"| {label} | " + " | ".join(_cell(k, stats.get(k)) for k, _ in COLUMNS) + " |"


def stats_table(metrics: Mapping[str, Any], set_name: str, with_data: bool = True) -> list[str]:
    lines = ["| images | " + " | ".join(h for _, h in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    if with_data:
        lines.append(_row("data", metrics["data"][set_name]))
    for model in (m for m in metrics if m != "data"):
        for seed, per_set in metrics[model]["seeds"].items():
            if set_name in per_set:
                lines.append(_row(f"{model}, seed {seed}", per_set[set_name]))
    return lines


def summary_table(metrics: Mapping[str, Any], models: Sequence[str]) -> list[str]:
    """Mean over seeds: brightness mean, W1 and noise of every model, one row per set."""
    head = ["set", "data mean"] + [f"{m} mean" for m in models] + [f"{m} W1" for m in models]
    head += ["data noise"] + [f"{m} noise" for m in models]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, d in metrics["data"].items():
        means = [metrics[m]["mean"][name] for m in models]
        cells = [name, f"{d['mean']:+.2f}", *(f"{x['mean']:+.2f}" for x in means)]
        cells += [f"{x['wasserstein_to_reference']:.2f}" for x in means]
        cells += [f"{d['noise_median']:.3f}", *(f"{x['noise_median']:.3f}" for x in means)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def spread_table(spread: Mapping[str, Mapping[str, float]]) -> list[str]:
    """zsnr.experiments.demo_metrics.prompt_noise_spread of every model, one row each."""
    seeds = ", ".join(sorted({str(v["seeds"]) for v in spread.values()}))
    return [
        f"What decides the colour of an image, the prompt or the noise: the standard deviation of the images' mean "
        f"RGB (in [-1, 1]) over the prompt sets for one noise seed, and over {seeds} noise seeds for one set.",
        "",
        "| model | over prompts | over noise seeds | prompts / noise |",
        "|---|---|---|---|",
        *(f"| {m} | {v['over_prompts']:.2f} | {v['over_noise']:.2f} | "
          f"{v['over_prompts'] / v['over_noise'] if v['over_noise'] > 0 else math.inf:.2f} |" for m, v in spread.items()),
    ]  # fmt: skip


def checks_table(checks: Sequence[Check]) -> list[str]:
    return [
        "| claim | seed | measured | bound | holds |",
        "|---|---|---|---|---|",
        *(c.row() for c in checks),
    ]


def plot_histograms(brightness: Mapping[str, Mapping[str, torch.Tensor]], path: Path) -> Path:
    """One panel per image set: the data's brightness histogram against each model's (seeds pooled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(brightness["data"])
    cols = min(4, len(sets))
    rows = -(-len(sets) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    bins = torch.linspace(-1, 1, 41).numpy()
    for ax, name in zip(axes.flat, sets, strict=False):
        for who, per_set in brightness.items():
            if name in per_set:
                values = per_set[name].clamp(-1, 1).numpy()
                ax.hist(values, bins=bins, density=True, label=who, **STYLES.get(who, {}))
        ax.set(title=name, xlabel="mean brightness ([-1, 1])", xlim=(-1.05, 1.05))
        ax.axvline(-0.7, color="0.3", ls=":", lw=1)
        ax.axvline(0.7, color="0.3", ls=":", lw=1)
    for ax in list(axes.flat)[len(sets) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("density")
    axes[0][0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_grid(
    images: Mapping[str, torch.Tensor],
    path: Path,
    prompt_sets: Mapping[str, Sequence[str]],
    columns: int = 10,
) -> Path:
    """Labelled: one row per image set (its first `columns` images), 4x nearest-neighbour."""
    captions = {
        name: "\n".join(textwrap.wrap(", ".join(f'"{p}"' for p in ps), 40))
        for name, ps in prompt_sets.items()
    }
    captions["unconditional"] = "empty prompt, no guidance"
    return save_png(labelled_grid(dict(images), columns, captions=captions), path)


def family_section(
    family: str, r: Mapping[str, Any], prompt_sets: Mapping[str, Sequence[str]], out_dir: Path
) -> list[str]:
    """One family's part of report.md (its figures under out_dir/family/, written here: histograms.png)."""
    metrics, checks = r["metrics"], r["checks"]
    hist = plot_histograms(r["brightness"], out_dir / family / "histograms.png")
    models = [m for m in metrics if m != "data"]
    lines = [
        f"## {family}: {held(checks)} checks hold",
        "",
        f"Data: {r['description']}.",
        "",
        *checks_table(checks),
        "",
        f"### {family}: summary (mean over the fine-tuning seeds)",
        "",
        *summary_table(metrics, models),
        "",
        *spread_table(r["spread"]),
        "",
        f"![{family}: brightness histograms]({family}/{hist.name})",
        "",
    ]
    for model, grid in r["grids"].items():
        lines += [f"**{family}, {model}**", "", f"![{family}, {model}]({family}/{grid.name})", ""]
    if r.get("curves_png"):
        steps = {m: c["steps"] for m, c in r["curves"].items()}
        lines += [
            f"### {family}: learning curves",
            "",
            "The prompt sets sampled from every checkpoint the runs kept (steps: "
            + "; ".join(f"{m} {v}" for m, v in steps.items())
            + "), the same seeds at every step, each model with its own sampler. Left: the base over its "
            "pretraining; middle: the extremes' mean brightness over fine-tuning (dotted: the data's); right: the "
            "colour cosine (mean over the colour sets) and the mid-tone's mean.",
            "",
            f"![{family}: learning curves]({family}/{r['curves_png'].name})",
            "",
        ]
    lines += [f"### {family}: per set and seed", ""]
    for name in metrics["data"]:
        prompts = ", ".join(f'"{p}"' for p in prompt_sets.get(name, [])) or "empty prompt, no guidance"
        lines += [f"#### `{name}`: {prompts}", "", *stats_table(metrics, name), ""]
    extra = [s for s in next(iter(metrics[models[-1]]["seeds"].values())) if s not in metrics["data"]]
    for name in extra:
        lines += [f"#### The unconditional seeds sampled with {name.split(', ')[1]}", ""]
        lines += [*stats_table(metrics, name, with_data=False), ""]
    return lines


def write_report(
    out_dir: Path,
    families: Mapping[str, Mapping[str, Any]],
    prompt_sets: Mapping[str, Sequence[str]],
    setup: Mapping[str, Any],
) -> Path:
    """metrics.json ({family: metrics and checks, learning curves}), each family's figures and report.md under
    out_dir; returns the report's path. `families`: {family: zsnr.experiments.demo's result for it}."""
    (out_dir / "metrics.json").write_text(
        json.dumps(
            {f: {**r["metrics"], "checks": [c.__dict__ for c in r["checks"]], "curves": r["curves"],
                 "spread": r["spread"]}
             for f, r in families.items()},
            indent=2,
        )
    )  # fmt: skip
    every = [c for r in families.values() for c in r["checks"]]
    lines = [
        "# zsnr demo: the paper in miniature",
        "",
        f"Command: `{setup['command']}` ({setup['minutes']:.1f} min).",
        "",
        setup["protocol"],
        "",
        f"Checks: {held(every)} hold: "
        + ", ".join(f"{f} {held(r['checks'])}" for f, r in families.items())
        + ".",
        "",
        "Brightness: the mean Rec. 601 luma of an image in [-1, 1]. W1: Wasserstein-1 distance of a set's "
        "brightness distribution to the data's. Noise: the median over images of mean |x - median3x3(x)| "
        "(x in [0, 1]; flat colours and clean shapes give 0, independent uniform pixels 0.22). Colour cos: cosine "
        "between the mean RGB offset from grey of the samples and of the training images with the same captions. "
        "Tint: the set's largest mean channel minus its smallest (0: neutral grey on average).",
        "",
    ]
    for family, r in families.items():
        lines += family_section(family, r, prompt_sets, out_dir)
    lines += [note + "\n" for note in setup.get("notes", [])]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
