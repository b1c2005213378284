"""Summary of a sweep (the paper's phi sweep): one table, one plot per metric, one image grid (Figure 6).

    python -m zsnr.evaluation.sweep SWEEP_DIR [--key guidance_rescale] [--grid-rows 4]

Every `metrics.json` under SWEEP_DIR (one per run, as launch/evaluate.py writes them) becomes a row, sorted by
the swept setting `key`. Written into SWEEP_DIR: summary.md, summary.csv, metrics_vs_<key>.png, and
grid_<key>.png, the first `grid_rows` images of each run (same prompts and seeds: same file names), one
column per value. The same code runs as a Hydra callback (`SweepSummary`) at the end of
`launch/evaluate.py -m guidance.rescale=...`. Files are replaced atomically, so parallel jobs that each
summarise on finishing (slurm/evaluate_sweep.sbatch) leave complete files.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

# Columns in this order when present; any other numeric metric follows.
PREFERRED = (
    "fid",
    "inception_score",
    "inception_score_std",
    "clip_score",
    "brightness.mean",
    "brightness.std",
    "brightness.p05",
    "brightness.p95",
    "brightness.frac_dark",
    "brightness.frac_bright",
    "brightness.wasserstein_to_reference",
)
SKIP = (
    "brightness.histogram",
    "brightness.reference",
    "brightness.dark_threshold",
    "brightness.bright_threshold",
    "brightness.n",
    "fid_reference_images",
    "num_images",
)
# Column titles of the image grid
LABELS = {"guidance_rescale": "phi", "guidance_scale": "w"}


def flatten(d: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict as {"a.b": value}; lists and strings are left out."""
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if name in SKIP:
            continue
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[name] = float(v)
    return out


def collect(sweep_dir: str | Path, key: str = "guidance_rescale") -> list[dict[str, Any]]:
    """One row per metrics.json: {"run": its folder, key: swept value, metric: value, ...}, sorted by key."""
    sweep_dir = Path(sweep_dir)
    rows = []
    for path in sorted(sweep_dir.rglob("metrics.json")):
        data = json.loads(path.read_text())
        settings = data.get("settings", {})
        if key not in settings:
            raise ValueError(f"{path} has no settings.{key}; valid keys there: {sorted(settings)}")
        rows.append(
            {"run": str(path.parent.relative_to(sweep_dir)), key: settings[key], **flatten(data["metrics"])}
        )
    if not rows:
        raise FileNotFoundError(
            f"no metrics.json under {sweep_dir}: is it the sweep folder of launch/evaluate.py -m?"
        )
    return sorted(rows, key=lambda r: (r[key], r["run"]))


def metric_columns(rows: list[dict[str, Any]], key: str) -> list[str]:
    present = {c for r in rows for c in r} - {"run", key}
    return [c for c in PREFERRED if c in present] + sorted(present - set(PREFERRED))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_tables(rows: list[dict[str, Any]], key: str, out_dir: Path) -> tuple[Path, Path]:
    cols = [key, *metric_columns(rows, key), "run"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path, md_path = out_dir / "summary.csv", out_dir / "summary.md"
    _atomic_write(csv_path, buf.getvalue().encode())

    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = [f"| {' | '.join(cols)} |", "|" + "---|" * len(cols)]
    lines += [f"| {' | '.join(cell(r.get(c)) for c in cols)} |" for r in rows]
    _atomic_write(md_path, ("\n".join(lines) + "\n").encode())
    return md_path, csv_path


def _figure_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def plot_metrics(rows: list[dict[str, Any]], key: str, path: Path) -> Path:
    """One panel per metric against the swept value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = metric_columns(rows, key)
    ncols = min(3, len(cols))
    nrows = -(-len(cols) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3 * nrows), squeeze=False)
    for ax, col in zip(axes.flat, cols, strict=False):
        pts = [(r[key], r[col]) for r in rows if col in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-")
        ax.set(xlabel=key, title=col)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(cols) :]:
        ax.axis("off")
    fig.tight_layout()
    _atomic_write(path, _figure_bytes(fig))
    plt.close(fig)
    return path


def image_grid(
    sweep_dir: Path, rows: list[dict[str, Any]], key: str, path: Path, grid_rows: int = 4
) -> Path | None:
    """Figure 6: rows = the first `grid_rows` images (same file names in every run), one column per value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    folders = [sweep_dir / r["run"] / "images" for r in rows]
    if not all(f.is_dir() for f in folders):
        return None
    names = sorted(set.intersection(*({p.name for p in f.glob("*.png")} for f in folders)))[:grid_rows]
    if not names:
        return None
    index = folders[0] / "index.json"
    captions = {e["file"]: e["caption"] for e in json.loads(index.read_text())} if index.is_file() else {}
    fig, axes = plt.subplots(len(names), len(rows), figsize=(2 * len(rows), 2 * len(names)), squeeze=False)
    for j, (row, folder) in enumerate(zip(rows, folders, strict=True)):
        value = f"{row[key]:g}" if isinstance(row[key], int | float) else str(row[key])
        axes[0, j].set_title(f"{LABELS.get(key, key)} = {value}")
        for i, name in enumerate(names):
            with Image.open(folder / name) as im:
                axes[i, j].imshow(im.convert("RGB"))
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if j == 0:
                axes[i, 0].set_ylabel(captions.get(name, name)[:40], fontsize=7)
    fig.tight_layout()
    _atomic_write(path, _figure_bytes(fig))
    plt.close(fig)
    return path


def summarize(
    sweep_dir: str | Path, key: str = "guidance_rescale", grid_rows: int = 4
) -> dict[str, Path | None]:
    sweep_dir = Path(sweep_dir).expanduser()
    rows = collect(sweep_dir, key)
    md, csv_path = write_tables(rows, key, sweep_dir)
    plot = plot_metrics(rows, key, sweep_dir / f"metrics_vs_{key}.png")
    grid = image_grid(sweep_dir, rows, key, sweep_dir / f"grid_{key}.png", grid_rows)
    return {"markdown": md, "csv": csv_path, "plot": plot, "grid": grid}


class SweepSummary:
    """Hydra callback (hydra.callbacks in configs/evaluate.yaml): summarise the sweep when a multirun ends.
    Hydra turns exceptions in callbacks into warnings, so a failed summary never hides the runs' results."""

    def __init__(self, key: str = "guidance_rescale", grid_rows: int = 4) -> None:
        self.key, self.grid_rows = key, grid_rows

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        out = summarize(config.hydra.sweep.dir, self.key, self.grid_rows)
        print(f"sweep summary: {out['markdown']}\n{out['markdown'].read_text()}")

    def on_run_start(self, config: Any, **kwargs: Any) -> None: ...
    def on_run_end(self, config: Any, **kwargs: Any) -> None: ...
    def on_multirun_start(self, config: Any, **kwargs: Any) -> None: ...
    def on_job_start(self, config: Any, **kwargs: Any) -> None: ...
    def on_job_end(self, config: Any, **kwargs: Any) -> None: ...


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Summarise a sweep folder of launch/evaluate.py runs.")
    p.add_argument("sweep_dir")
    p.add_argument(
        "--key", default="guidance_rescale", help="the swept setting in each metrics.json's settings"
    )
    p.add_argument("--grid-rows", type=int, default=4, help="images per column in the grid")
    args = p.parse_args(argv)
    try:
        out = summarize(args.sweep_dir, args.key, args.grid_rows)
    except (FileNotFoundError, ValueError) as err:
        print(f"zsnr.evaluation.sweep: {err}", file=sys.stderr)
        return 2
    print(out["markdown"].read_text())
    for name, path in out.items():
        print(f"{name}: {path if path else '(no images in the runs)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
