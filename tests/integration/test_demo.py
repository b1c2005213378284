"""`make demo` end to end: the same launch/demo.py code path, shortened (in make test) and in full (slow).

The shortened run (a short base, short fine-tunes, few images) is far too brief for the paper's numbers; it
checks every artefact the README and the report promise, and that the effect already points the right way on
the saved PNGs: the fixed model's dark set is darker than the flawed one's by a margin, and both fine-tunes' images
are far from noise. The full run asserts every threshold of the report's checks (configs/demo.yaml) on both data families: all hold
but the one docs/paper.md explains, which must fail with its measured value.
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
    assert set(metrics) == {"shapes", "scenes"}  # the data families, each its own base and fine-tunes
    for family in ("shapes", "scenes"):
        fam, folder_of = metrics[family], out / family
        assert set(fam) == {"data", "base", "flawed", "fixed", "checks", "curves", "spread"}
        assert set(fam["spread"]) == {"base", "flawed", "fixed"}
        assert set(fam["data"]) == SETS
        # the data's prompt sets are what their captions say: solid black, gray, solid white backgrounds
        assert fam["data"]["dark"]["mean"] < -0.8 and fam["data"]["bright"]["mean"] > 0.8, family
        assert abs(fam["data"]["mid"]["mean"]) < 0.1 and fam["data"]["unconditional"]["std"] > 0.4, family
        for model, folder in (("base", "base"), ("flawed", "flawed_seed0"), ("fixed", "fixed_seed0")):
            per_set = fam[model]["seeds"]["0"]
            assert set(per_set) == SETS
            assert per_set["unconditional"]["n"] == 16 and per_set["dark"]["n"] == 2 * 8
            for name in SETS:
                pngs = _pngs(folder_of / "samples" / folder / name)
                assert pngs.shape == (per_set[name]["n"], 16, 16, 3)
            assert (folder_of / "runs" / folder / "checkpoints" / "last.ckpt").exists()
        # the learning curves: one point per kept checkpoint (SHORT keeps the base's every 150 of 300 steps and
        # the fine-tunes' every 50 of 100), each set's mean brightness and the colour cosine at every point
        curves = fam["curves"]
        assert curves["base"]["steps"] == [150, 300] and curves["fixed"]["steps"] == [50, 100]
        for c in curves.values():
            assert {"dark", "bright", "mid", "red", "colour"} <= set(c)
            assert all(len(v) == len(c["steps"]) for v in c.values())
        # the last point is the final model with the first 2 of its 8 seeds per prompt: exactly those PNGs
        for model, folder in (("base", "base"), ("fixed", "fixed_seed0")):
            pngs = _pngs(folder_of / "samples" / folder / "dark")[[0, 1, 8, 9]]
            luma = torch.from_numpy(pngs).double() @ torch.tensor([0.299, 0.587, 0.114], dtype=torch.double)
            assert curves[model]["dark"][-1] == pytest.approx((luma / 127.5 - 1).mean().item(), abs=1e-5)
        for png in ("histograms.png", "grid_base.png", "grid_flawed.png", "grid_fixed.png", "curves.png"):
            assert (folder_of / png).stat().st_size > 1000
    # the effect's direction on both families, measured on the PNGs themselves
    for family in ("shapes", "scenes"):
        samples = out / family / "samples"
        dark = {m: _pngs(samples / f"{m}_seed0" / "dark").mean() / 127.5 - 1 for m in ("flawed", "fixed")}
        # measured: fixed -0.716 / -0.717, flawed -0.052 / -0.072 (shapes / scenes)
        assert dark["fixed"] < dark["flawed"] - 0.4, family
        # both far from noise already (independent uniform pixels give 0.22); the full demo asks <= 0.03 of both
        bounds = {"fixed": 0.06, "flawed": 0.15}  # measured: 0.028 / 0.015 and 0.072 / 0.061 (unconditional)
        for model, bound in bounds.items():
            x = torch.from_numpy(_pngs(samples / f"{model}_seed0" / "unconditional")).permute(0, 3, 1, 2)
            assert float(median_residual(x).median()) < bound, (family, model)
    report = (out / "report.md").read_text()
    assert report.index("## shapes:") < report.index("## scenes:")
    assert "| fixed, seed 0 |" in report and "| flawed, seed 0 |" in report
    assert "| model | over prompts | over noise seeds | prompts / noise |" in report
    for png in ("shapes/curves.png", "scenes/grid_fixed.png", "scenes/histograms.png"):
        assert f"]({png})" in report, png
    # a second run reuses every training run (nothing is trained again) and rewrites the report
    done = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "demo.py"), f"out_dir={out}", *SHORT],
        check=True, cwd=ROOT, timeout=600, capture_output=True, text=True,
    )  # fmt: skip
    assert done.stdout.count("reusing") == 6 and "$ " not in done.stdout


@pytest.mark.slow
def test_full_demo_meets_every_check(tmp_path):
    metrics = run_demo(tmp_path / "demo", "families=[shapes,scenes]", timeout=3600)
    failed = [(family, c["claim"], c["seed"], round(c["value"], 2))
              for family, m in metrics.items() for c in m["checks"] if not c["ok"]]  # fmt: skip
    # Every check holds on both families but one, measured and explained in docs/paper.md: on shapes the flawed
    # model's "a red background" does not come out red (colour cosine -0.35, >= 0.8 asked). Anything else
    # failing, or red passing, fails here.
    assert failed == [("shapes", "flawed: colour agreement, red", "0", -0.35)], failed
