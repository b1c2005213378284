"""`make demo` end to end, shortened: the same launch/demo.py code path with few steps and images.

Too short to learn brightness (that is what `make demo` measures); this checks every artefact the README and
the report promise exists and is consistent: metrics.json keys, the report's tables, PNG samples per model.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.demo
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, str(ROOT / "launch" / "demo.py"), f"out_dir={out}", "seeds=[0]", "train_steps=4",
           "sampling.unconditional_images=6", "sampling.images_per_prompt=2", "sampling.num_steps=3",
           "sampler_checks=[{sampler: dpmpp_2m, num_steps: 2}]",
           "train_overrides=['data.synthetic.num_samples=1024','data.num_workers=0']"]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=900)

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"data", "flawed", "fixed"}
    sets = {"unconditional", "dark", "mid", "bright"}
    assert set(metrics["data"]) == sets
    # the data's prompt sets are what their captions say: solid black, gray, solid white backgrounds
    assert metrics["data"]["dark"]["mean"] < -0.9 and metrics["data"]["bright"]["mean"] > 0.9
    assert abs(metrics["data"]["mid"]["mean"]) < 0.1
    assert metrics["data"]["unconditional"]["std"] > 0.4  # backgrounds span black to white
    for variant in ("flawed", "fixed"):
        per_set = metrics[variant]["seeds"]["0"]
        assert set(per_set) == sets | {"unconditional, dpmpp_2m S=2"}
        assert per_set["unconditional, dpmpp_2m S=2"]["n"] == 6
        assert per_set["unconditional"]["n"] == 6 and per_set["dark"]["n"] == 2 * 2
        for name in sets:
            pngs = sorted((out / "samples" / variant / "seed0" / name).glob("*.png"))
            assert len(pngs) == per_set[name]["n"]
            assert Image.open(pngs[0]).size == (32, 32)
        assert (out / "runs" / f"{variant}_seed0" / "checkpoints" / "last.ckpt").exists()
    report = (out / "report.md").read_text()
    assert "sampled with dpmpp_2m S=2" in report
    assert "| data |" in report and "| fixed, seed 0 |" in report and "| flawed, seed 0 |" in report
    for png in ("histograms.png", "grid_flawed.png", "grid_fixed.png"):
        assert (out / png).stat().st_size > 1000
