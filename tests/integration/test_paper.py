"""`make paper` end to end, shortened: the same launch/paper.py code path on a short demo (the numbers are far
too rough to agree with the paper; the artefacts, the claims table and the sampler's refusal are checked)."""

import json
import subprocess
import sys

import pytest
from demo_runs import ROOT, SHORT

PAPER_SHORT = (
    "samplers.unconditional_images=8", "samplers.images_per_prompt=2", "trajectory.seeds=2",
    "trajectory.num_steps=10", "trajectory.strip_steps=[0,1,5,9]", "phi.images_per_prompt=2",
    "fid.num_images=64", "fid.num_steps=10", "fid.classifier_steps=40", "fid.kid_subsets=4",
    "fid.kid_subset_size=32", "fid.batch_size=64",
)  # fmt: skip
FIGURES = (
    "figure2_schedules.png", "figure3_histograms.png", "figure3_grid_fixed.png", "figure4_samplers.png",
    "figure5_x0_fixed.png", "figure5_seeds_flawed.png", "figure6_phi.png", "ablation_0.png", "ablation_4.png",
)  # fmt: skip


@pytest.mark.demo
def test_shortened_paper_end_to_end(short_demo, tmp_path):
    demo_dir, out = short_demo[0], tmp_path / "paper"
    overrides = "[" + ",".join(f"'{o}'" for o in SHORT) + "]"
    subprocess.run(
        [sys.executable, str(ROOT / "launch" / "paper.py"), f"out_dir={out}", f"demo_dir={demo_dir}",
         f"demo_overrides={overrides}", *PAPER_SHORT],
        check=True, cwd=ROOT, timeout=1800,
    )  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"demo", "ablations", "samplers", "trajectory", "phi", "fid", "claims"}
    assert "epsilon prediction at t=999" in metrics["ablations"]["refusal"]  # the sampler refuses t = T
    assert len(metrics["ablations"]["metrics"]) == 5
    assert set(metrics["samplers"]["metrics"]) == {f"{s}, S = {n}" for s in ("leading", "linspace", "trailing")
                                                   for n in (5, 25)}  # fmt: skip
    assert set(metrics["fid"]["table"]) == {
        "training data (a floor)",
        "base",
        "flawed",
        "fixed",
        "offset_noise",
    }
    claims = metrics["claims"]
    assert len(claims) == 15 and {c["section"] for c in claims} >= {
        "Table 1",
        "Table 2",
        "Figure 5",
        "Table 3",
    }
    # the schedule claims are exact arithmetic: they agree at any training length
    assert all(c["agrees"] for c in claims if c["section"] in ("Table 1", "Algorithm 1", "Table 2"))
    report = (out / "report.md").read_text()
    assert report.index("## Claims:") < report.index("## Tables 1 and 2")
    for png in FIGURES:
        assert (out / png).stat().st_size > 1000, png
        assert png in report, png
