"""`make demo` end to end: the same launch/demo.py code path, shortened (in make test) and in full (slow).

The shortened run (a short base, short fine-tunes, few images) is far too brief for the paper's numbers; it
checks every artefact the README and the report promise, and that the effect already points the right way on
the saved PNGs: the fixed model's dark set is darker than the flawed one's by a margin, and both fine-tunes' images
are far from noise. The full run asserts every threshold of the report's checks (configs/demo.yaml): all hold
but the one the README explains, which must fail with its measured value.
Each bound has the value measured when it was set beside it.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from demo_runs import ROOT, SHORT, run_demo
from PIL import Image

from zsnr.evaluation.noise import median_residual

SETS = {"unconditional", "dark", "mid", "bright", "red", "blue", "green"}


def _pngs(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


@pytest.mark.demo
def test_shortened_demo_end_to_end(short_demo):
    out, metrics = short_demo
    assert set(metrics) == {"data", "base", "flawed", "fixed", "checks"}
    assert set(metrics["data"]) == SETS
    # the data's prompt sets are what their captions say: solid black, gray, solid white backgrounds
    assert metrics["data"]["dark"]["mean"] < -0.9 and metrics["data"]["bright"]["mean"] > 0.9
    assert abs(metrics["data"]["mid"]["mean"]) < 0.1 and metrics["data"]["unconditional"]["std"] > 0.4
    for model, folder in (("base", "base"), ("flawed", "flawed_seed0"), ("fixed", "fixed_seed0")):
        per_set = metrics[model]["seeds"]["0"]
        assert set(per_set) == SETS
        assert per_set["unconditional"]["n"] == 16 and per_set["dark"]["n"] == 2 * 8
        for name in SETS:
            pngs = _pngs(out / "samples" / folder / name)
            assert pngs.shape == (per_set[name]["n"], 16, 16, 3)
        assert (out / "runs" / folder / "checkpoints" / "last.ckpt").exists()
    # the effect's direction, measured on the PNGs themselves
    dark = {m: _pngs(out / "samples" / f"{m}_seed0" / "dark").mean() / 127.5 - 1 for m in ("flawed", "fixed")}
    assert dark["fixed"] < dark["flawed"] - 0.4  # measured: fixed -0.632, flawed -0.100
    # both far from noise already (independent uniform pixels give 0.22); the full demo asks <= 0.03 of both
    bounds = {"fixed": 0.06, "flawed": 0.15}  # measured: 0.032 and 0.089 (median over the unconditional set)
    for model, bound in bounds.items():
        x = torch.from_numpy(_pngs(out / "samples" / f"{model}_seed0" / "unconditional")).permute(0, 3, 1, 2)
        assert float(median_residual(x).median()) < bound, model
    report = (out / "report.md").read_text()
    assert "## Checks:" in report and "| fixed, seed 0 |" in report and "| flawed, seed 0 |" in report
    for png in ("histograms.png", "grid_base.png", "grid_flawed.png", "grid_fixed.png"):
        assert (out / png).stat().st_size > 1000
    # a second run reuses every training run (nothing is trained again) and rewrites the report
    done = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "demo.py"), f"out_dir={out}", *SHORT],
        check=True, cwd=ROOT, timeout=600, capture_output=True, text=True,
    )  # fmt: skip
    assert done.stdout.count("reusing") == 3 and "$ " not in done.stdout


@pytest.mark.slow
def test_full_demo_meets_every_check(tmp_path):
    metrics = run_demo(tmp_path / "demo", timeout=3600)
    failed = [c for c in metrics["checks"] if not c["ok"]]
    # Every check holds but one per seed, measured and explained in the README: the flawed model's "a red
    # background" comes out pink (colour cosine 0.553 and 0.564, >= 0.8 asked). Anything else failing, or red
    # passing, fails here.
    red = "flawed: colour agreement, red"
    got = [(c["claim"], c["seed"], round(c["value"], 2)) for c in failed]
    assert got == [(red, "0", 0.55), (red, "1", 0.56)], failed
