"""The sweep summary on a hand-made sweep folder: table values, plot and grid files."""

import csv
import json

import torch
from PIL import Image

from zsnr.evaluation import sweep
from zsnr.evaluation.images import save_png

PHIS = [0.7, 0.0, 1.0]  # written out of order: the summary sorts by phi


def make_sweep(root, with_images=True):
    for i, phi in enumerate(PHIS):
        run = root / str(i)
        metrics = {
            "fid": 20.0 + phi,
            "inception_score": 30.0 - phi,
            "inception_score_std": 0.5,
            "num_images": 3,
            "brightness": {
                "mean": -phi,
                "std": 0.1,
                "histogram": {"counts": [1, 2]},
                "reference": {"mean": 0.0},
            },
        }
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(
            json.dumps({"settings": {"guidance_rescale": phi}, "metrics": metrics})
        )
        if with_images:
            index = []
            for k in range(3):
                level = int(255 * phi) if k else 0
                save_png(torch.full((3, 8, 8), level, dtype=torch.uint8), run / "images" / f"{k:05d}.png")
                index.append({"file": f"{k:05d}.png", "caption": f"prompt {k}", "seed": k})
            (run / "images" / "index.json").write_text(json.dumps(index))
    return root


def test_summary_table_plot_and_grid(tmp_path):
    out = sweep.summarize(make_sweep(tmp_path), grid_rows=2)
    with out["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["guidance_rescale"]) for r in rows] == [0.0, 0.7, 1.0]
    assert [float(r["fid"]) for r in rows] == [20.0, 20.7, 21.0]
    assert [float(r["brightness.mean"]) for r in rows] == [0.0, -0.7, -1.0]
    assert list(rows[0])[:5] == [
        "guidance_rescale",
        "fid",
        "inception_score",
        "inception_score_std",
        "brightness.mean",
    ]
    assert "num_images" not in rows[0] and list(rows[0])[-1] == "run"
    assert "brightness.histogram.counts" not in rows[0] and "brightness.reference.mean" not in rows[0]
    md = out["markdown"].read_text().splitlines()
    assert md[0].startswith("| guidance_rescale | fid |") and md[3].startswith("| 0.7 | 20.7 |")
    for key in ("plot", "grid"):
        assert out[key].read_bytes()[:4] == b"\x89PNG"
    with Image.open(out["grid"]) as grid:
        assert grid.width > grid.height  # 3 columns (phi) x 2 rows
    assert not list(tmp_path.glob(".*.tmp"))


def test_summary_without_images_and_cli(tmp_path, capsys):
    make_sweep(tmp_path, with_images=False)
    assert sweep.main([str(tmp_path), "--key", "guidance_rescale"]) == 0
    assert "(no images in the runs)" in capsys.readouterr().out
    assert sweep.main([str(tmp_path / "nothing")]) == 2
    assert sweep.main([str(tmp_path), "--key", "guidance_scale"]) == 2
    assert "no settings.guidance_scale" in capsys.readouterr().err
