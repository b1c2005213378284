"""launch/evaluate.py on a tiny checkpoint with tiny feature extractors (the only difference from a real run):
metrics.json against torchmetrics run end to end on the saved PNGs, the reference cache, the phi sweep."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_checkpoint import TinyFeatures, shared_tiny_checkpoint, tiny_clip_score
from training_helpers import compose, launch_module

from zsnr.evaluation.images import save_png

ROOT = Path(__file__).resolve().parents[2]
CAPTIONS = [
    "a solid black background",
    "a white background",
    "a red circle",
    "a gray square",
    "snow",
    "night",
]
TINY_METRICS = [
    "~metrics.feature_extractor.weights",
    "metrics.feature_extractor._target_=tiny_checkpoint.TinyFeatures",
    "~metrics.clip.model_name",
    "~metrics.clip.weights",
    "metrics.clip._target_=tiny_checkpoint.tiny_clip_score",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    (tmp / "captions.json").write_text(
        json.dumps({"annotations": [{"caption": c} for c in CAPTIONS]})
    )  # COCO
    for i in range(10):  # reference images, not square: center-cropped and resized to 32 px
        level = torch.tensor([i * 25, 255 - i * 25, 128], dtype=torch.uint8).view(3, 1, 1)
        save_png(
            (level + torch.arange(40, dtype=torch.uint8).view(1, 1, 40)).expand(3, 48, 40),
            tmp / "ref" / f"{i}.png",
        )
    common = [
        f"checkpoint={shared_tiny_checkpoint(tmp_path_factory)}", f"captions={tmp / 'captions.json'}",
        f"metrics.reference_dir={tmp / 'ref'}", f"metrics.reference_cache={tmp / 'cache'}", "num_steps=3",
    ]  # fmt: skip
    return tmp, common


def evaluate(overrides):
    cfg = compose("evaluate", overrides)
    return launch_module("evaluate").evaluate(cfg)


def load_pngs(files, size=None):
    out = []
    for f in files:
        with Image.open(f) as im:
            im = im.convert("RGB")
            if size:  # the reference preparation: center crop (40 x 40 of 40 x 48), resize
                im = im.crop((0, 4, 40, 44)).resize((size, size), Image.BICUBIC)
            out.append(torch.from_numpy(np.array(im)).permute(2, 0, 1))
    return torch.stack(out)


def test_metrics_match_torchmetrics_on_the_saved_images(setup):
    from torchmetrics.image.fid import FrechetInceptionDistance

    tmp, common = setup
    out = tmp / "run"
    result = evaluate(
        common + TINY_METRICS + ["num_images=5", "batch_size=2", "save_images=-1", f"out_dir={out}"]
    )
    record = json.loads(result["path"].read_text())
    m, s = record["metrics"], record["settings"]
    assert s["guidance_rescale"] == 0.7 and s["num_images"] == 5 and s["guidance_scale"] == 7.5
    index = json.loads((out / "images" / "index.json").read_text())
    assert [e["seed"] for e in index] == [0, 1, 2, 3, 4] and len({e["caption"] for e in index}) == 5
    fake = load_pngs(out / "images" / e["file"] for e in index)
    real = load_pngs(sorted((tmp / "ref").glob("*.png")), size=32)

    class FirstOutput(torch.nn.Module):  # torchmetrics' own path: its update() runs the extractor
        def __init__(self):
            super().__init__()
            self.net = TinyFeatures()

        def forward(self, x):
            return self.net(x)[0]

    fid = FrechetInceptionDistance(feature=FirstOutput())
    fid.update(real, real=True)
    fid.update(fake, real=False)
    assert m["fid"] == pytest.approx(float(fid.compute()), rel=1e-4, abs=1e-6)
    assert m["fid_reference_images"] == 10 and 1.0 <= m["inception_score"] <= 10
    clip = tiny_clip_score().per_image(fake, [e["caption"] for e in index])
    assert m["clip_score"] == pytest.approx(clip.mean().item(), rel=1e-5, abs=1e-6)
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(1, 3, 1, 1)
    light = ((fake.double() / 127.5 - 1) * luma).sum(1).mean((1, 2))
    assert m["brightness"]["mean"] == pytest.approx(light.mean().item(), abs=1e-6)  # float32 luma
    ref_light = ((real.double() / 127.5 - 1) * luma).sum(1).mean((1, 2))
    assert m["brightness"]["reference"]["mean"] == pytest.approx(ref_light.mean().item(), abs=1e-6)
    # the second run reads the cached reference statistics
    cache = Path(s["reference_cache"])
    mtime = cache.stat().st_mtime_ns
    again = evaluate(common + TINY_METRICS + ["num_images=2", "save_images=0", f"out_dir={tmp / 'run2'}"])
    assert json.loads(again["path"].read_text())["settings"]["reference_cache"] == str(cache)
    assert cache.stat().st_mtime_ns == mtime and not (tmp / "run2" / "images").exists()


def test_missing_weights_fail_before_sampling(setup, tmp_path):
    _, common = setup
    overrides = common + [
        "num_images=2",
        f"metrics.feature_extractor.weights={tmp_path / 'inception.pth'}",
        f"out_dir={tmp_path}",
    ]
    with pytest.raises(
        Exception, match="InceptionV3 weights.*never downloads"
    ):  # in Hydra's InstantiationException
        evaluate(overrides)
    assert not (tmp_path / "metrics.json").exists()


def test_phi_sweep_multirun_writes_the_summary(setup):
    tmp, common = setup
    sweep = tmp / "sweep"
    cmd = [sys.executable, "launch/evaluate.py", "-m", *common, *TINY_METRICS, "metrics.clip=null", "num_images=3",
           "batch_size=3", "guidance.rescale=0,1.0", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    path = os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Callback" not in proc.stderr  # Hydra turns callback errors into warnings
    with (sweep / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["guidance_rescale"]) for r in rows] == [0.0, 1.0]
    for row in rows:
        metrics = json.loads((sweep / row["run"] / "metrics.json").read_text())["metrics"]
        assert float(row["fid"]) == pytest.approx(metrics["fid"])
    assert (sweep / "summary.md").read_text().startswith("| guidance_rescale | fid |")
    for png in ("metrics_vs_guidance_rescale.png", "grid_guidance_rescale.png"):
        assert (sweep / png).read_bytes()[:4] == b"\x89PNG"
