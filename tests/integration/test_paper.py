"""`make paper` end to end, shortened: the same launch/paper.py code path on a short demo (the numbers are far
too rough to agree with the paper; the artefacts, the claims table and the sampler's refusal are checked)."""

import json
import subprocess
import sys

import pytest
import yaml
from demo_runs import ROOT, SHORT

PAPER_SHORT = (
    "samplers.unconditional_images=8", "samplers.images_per_prompt=2", "trajectory.seeds=2",
    "trajectory.num_steps=10", "trajectory.strip_steps=[0,1,5,9]", "phi.images_per_prompt=2",
    "fid.num_images=64", "fid.num_steps=10", "fid.classifier_steps=40", "fid.kid_subsets=4",
    "fid.kid_subset_size=32", "fid.batch_size=64",
)  # fmt: skip
FID_MODELS = ("base", "flawed", "fixed", "offset_noise")
FIGURES = (
    "figure2_schedules.png", "figure3_histograms.png", "figure3_grid_fixed.png", "figure4_samplers.png",
    "figure5_x0_fixed.png", "figure5_seeds_flawed.png", "figure6_phi.png", "ablation_0.png", "ablation_4.png",
)  # fmt: skip


def _listed(overrides) -> str:
    return "[" + ",".join(f"'{o}'" for o in overrides) + "]"


@pytest.mark.demo
def test_shortened_paper_end_to_end(short_demo, tmp_path):
    """Two protocols as make paper runs them: x4 on the shortened demo (its runs reused), x1 (SD's schedule as it
    is) on shapes alone, shorter still, in its own folder."""
    demo_dir, out = short_demo[0], tmp_path / "paper"
    shorter = {"families": "[shapes]", "base.steps": "100", "finetune_steps": "50", "curves.base_every": "0",
               "curves.finetune_every": "0"}  # fmt: skip
    x1 = [o for o in SHORT if o.split("=")[0] not in shorter] + [f"{k}={v}" for k, v in shorter.items()]
    x1.append("snr_shift=1")
    subprocess.run(
        [sys.executable, str(ROOT / "launch" / "paper.py"), f"out_dir={out}",
         f"protocols.x4.demo_dir={demo_dir}", f"protocols.x4.demo_overrides={_listed(SHORT)}",
         f"protocols.x1.demo_dir={tmp_path / 'demo_x1'}", f"protocols.x1.demo_overrides={_listed(x1)}", *PAPER_SHORT],
        check=True, cwd=ROOT, timeout=1800,
    )  # fmt: skip
    combined = json.loads((out / "metrics.json").read_text())
    columns = combined["protocols"]
    assert list(columns) == ["x4", "x1"]
    # each column's schedule, read back from its own base's config: the leak is shift x 16^2 / 64^2
    assert (columns["x4"]["snr_shift"], columns["x4"]["leak"]) == (4.0, 0.25)
    assert (columns["x1"]["snr_shift"], columns["x1"]["leak"]) == (1.0, 0.0625)
    assert set(columns["x4"]["families"]) == {"shapes", "scenes"}
    assert set(columns["x1"]["families"]) == {"shapes"}
    x1_base = yaml.safe_load((tmp_path / "demo_x1" / "shapes" / "runs" / "base" / "config.yaml").read_text())
    assert (x1_base["diffusion"]["snr_shift"], x1_base["max_steps"]) == (1.0, 100)
    for name in columns:
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert set(metrics) >= {"demo", "ablations", "samplers", "trajectory", "phi", "fid", "claims"}
        assert "epsilon prediction at t=999" in metrics["ablations"]["refusal"]  # the sampler refuses t = T
        assert len(metrics["ablations"]["metrics"]) == 5
        assert set(metrics["samplers"]["metrics"]) == {f"{s}, S = {n}" for s in ("leading", "linspace", "trailing")
                                                       for n in (5, 25)}  # fmt: skip
        assert set(metrics["fid"]["table"]) == {"training data (a floor)", *FID_MODELS}
        # Figure 6: W1 per prompt set at every phi, besides the mean the claim reads
        assert set(metrics["phi"]["0.7"]["w1"]) == {"dark", "mid", "bright", "red", "blue", "green"}
        claims = metrics["claims"]
        assert claims == columns[name]["claims"]
        assert len(claims) == 15
        assert {c["section"] for c in claims} >= {"Table 1", "Table 2", "Figure 5", "Table 3"}
        # the schedule claims are exact arithmetic: they agree at any training length
        assert all(c["agrees"] for c in claims if c["section"] in ("Table 1", "Algorithm 1", "Table 2"))
        report = (out / name / "report.md").read_text()
        assert report.index("## Claims:") < report.index("## Tables 1 and 2")
        for png in FIGURES:
            assert (out / name / png).stat().st_size > 1000, png
            assert png in report, png
    report = (out / "report.md").read_text()
    table = report[report.index("## Claims:") : report.index("## Figure 3 on every data family")]
    assert "SD's schedule x 4 (leak 0.25 of SD 2.1's): measured" in table
    assert "SD's schedule (leak 0.0625 of SD 2.1's): measured" in table
    assert table.count("| Figure 4 |") == 1 and table.count("| Table 1 |") == 1  # one row per claim
    for png in ("x4/figure4_samplers.png", "x1/figure4_samplers.png", "x1/figure5_x0_flawed.png"):
        assert png in report, png
    assert "| x1 | shapes |" in report and "| x4 | scenes |" in report
