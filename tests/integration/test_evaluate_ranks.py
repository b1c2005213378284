"""launch/evaluate.py and launch/sample.py on 2 CPU processes (gloo, devices=2) against 1: the same images, bit
for bit, and the same metrics.json (FID to float tolerance); the phi sweep on 2 processes per job."""

import csv
import json

import pytest
from ranks_helpers import run_entry_point
from test_evaluate import CAPTIONS, TINY_METRICS, setup  # noqa: F401  (the module's fixture)

pytestmark = pytest.mark.distributed


def evaluate_on(devices, common, out, extra=()):
    run_entry_point("evaluate", [*common, *TINY_METRICS, "num_images=5", "batch_size=2", "save_images=-1",
                                 f"devices={devices}", f"hydra.run.dir={out}", *extra], out.parent)  # fmt: skip
    return json.loads((out / "metrics.json").read_text())


def test_two_processes_write_the_images_and_metrics_of_one(setup):  # noqa: F811
    tmp, common = setup
    one = evaluate_on(1, common, tmp / "one")
    two = evaluate_on(2, common, tmp / "two")
    files = sorted(p.name for p in (tmp / "one" / "images").iterdir())
    assert files == ["00000.png", "00001.png", "00002.png", "00003.png", "00004.png", "index.json"]
    assert sorted(p.name for p in (tmp / "two" / "images").iterdir()) == files
    for name in files:  # batches {0, 1}, {4} on rank 0 and {2, 3} on rank 1: the batches of one process
        assert (tmp / "two" / "images" / name).read_bytes() == (tmp / "one" / "images" / name).read_bytes()
    assert two["settings"] == one["settings"]
    m1, m2 = one["metrics"], two["metrics"]
    assert m2["fid"] == pytest.approx(m1["fid"], rel=1e-9)
    assert {k: v for k, v in m2.items() if k != "fid"} == {k: v for k, v in m1.items() if k != "fid"}
    assert (tmp / "two" / "evaluate_process_1.log").exists()  # rank 1 ran in the run's directory


def test_more_processes_than_batches(setup):  # noqa: F811
    """One batch of 5 on 2 processes: rank 1 has nothing to make and still takes part in the gathers."""
    tmp, common = setup
    out = tmp / "idle"
    metrics = evaluate_on(2, common, out, ["batch_size=5", "metrics.clip=null"])["metrics"]
    assert metrics["num_images"] == 5 and "clip_score" not in metrics


def test_sample_on_two_processes(setup):  # noqa: F811
    tmp, common = setup
    args = [
        common[0],
        "prompts=[a red circle,snow,night]",
        "images_per_prompt=2",
        "batch_size=4",
        "num_steps=3",
    ]
    for devices in (1, 2):
        run_entry_point("sample", [*args, f"devices={devices}", f"hydra.run.dir={tmp / f's{devices}'}"], tmp)
    files = sorted(p.relative_to(tmp / "s1") for p in (tmp / "s1").rglob("*.png"))
    assert len(files) == 7  # 6 images and the grid
    for f in files:
        assert (tmp / "s2" / f).read_bytes() == (tmp / "s1" / f).read_bytes(), f
    index = [json.loads((tmp / d / "settings.json").read_text())["images"] for d in ("s1", "s2")]
    assert index[0] == index[1]


def test_phi_sweep_on_two_processes_per_job(setup):  # noqa: F811
    tmp, common = setup
    sweep = tmp / "sweep2"
    out = run_entry_point("evaluate", ["-m", *common, *TINY_METRICS, "metrics.clip=null", "num_images=3",
                                       "batch_size=1", "devices=2", "guidance.rescale=0,1.0",
                                       f"hydra.sweep.dir={sweep}"], tmp)  # fmt: skip
    assert "Callback" not in out  # Hydra turns callback errors into warnings
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["guidance_rescale"]) for r in rows] == [0.0, 1.0]
    for row in rows:
        assert (sweep / row["run"] / "evaluate_process_1.log").exists()
        assert json.loads((sweep / row["run"] / "metrics.json").read_text())["metrics"]["num_images"] == 3
