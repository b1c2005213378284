"""The generation-metrics callback (callbacks=with_metrics) in a tiny training run through launch/train.py: eval/*
in the CSV log at steps 0, 1, 2, and the last step's numbers equal to launch/evaluate.py's measure of the EMA
checkpoint saved at that step (same captions, seeds and settings; tiny stand-in extractors)."""

import csv

import pytest
import torch
from tiny_checkpoint import TinyFeatures, tiny_clip_score
from training_helpers import compose, launch_module

from zsnr.evaluation.fid import reference_statistics
from zsnr.evaluation.images import save_png, to_uint8
from zsnr.evaluation.metrics import ImageMetrics
from zsnr.evaluation.training_metrics import GenerationMetrics, flatten
from zsnr.sampling import SamplingSettings, generate, load_for_inference

CAPTIONS = ["a solid black background", "a white background", "a gray background", "snow", "night"]
TINY = "callbacks.generation_metrics"


def test_metrics_are_logged_during_training(tmp_path):
    for i in range(6):
        level = torch.tensor([i * 40, 255 - i * 40, 128], dtype=torch.uint8).view(3, 1, 1)
        save_png(level.expand(3, 32, 32), tmp_path / "ref" / f"{i}.png")
    run_dir = tmp_path / "run"
    overrides = [
        "model=tiny", "data._target_=distributed_data.IndexedBatches", "logger=csv", "trainer=cpu",
        "global_batch_size=4", "micro_batch_size=4", "max_steps=2", f"run_dir={run_dir}",
        "checkpoint.every_n_steps=1", "samples.every_n_steps=0", "validation.every_n_steps=0",
        "callbacks=with_metrics", f"{TINY}.captions=[{','.join(CAPTIONS)}]", f"{TINY}.every_n_steps=1",
        f"{TINY}.batch_size=2", f"{TINY}.num_steps=2", f"{TINY}.reference_dir={tmp_path / 'ref'}",
        f"{TINY}.reference_cache={tmp_path / 'cache'}", f"~{TINY}.feature_extractor.weights",
        f"{TINY}.feature_extractor._target_=tiny_checkpoint.TinyFeatures", f"~{TINY}.clip.model_name",
        f"~{TINY}.clip.weights", f"{TINY}.clip._target_=tiny_checkpoint.tiny_clip_score",
    ]  # fmt: skip
    launch_module("train").train(compose("train", overrides))
    rows = [r for r in csv.DictReader((run_dir / "csv" / "metrics.csv").open()) if r.get("eval/fid")]
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    logged = {k: float(v) for k, v in rows[-1].items() if k.startswith("eval/") and v}
    assert {"eval/fid", "eval/clip_score", "eval/brightness_mean", "eval/brightness_w1"} <= logged.keys()

    model = load_for_inference(run_dir / "checkpoints" / "step=000002.ckpt")
    settings = SamplingSettings.for_schedule(model.schedule, num_steps=2)
    images = to_uint8(generate(model, CAPTIONS, list(range(5)), settings, batch_size=2, progress=False))
    reference, _, _ = reference_statistics(tmp_path / "ref", TinyFeatures(), 32, tmp_path / "cache")
    metrics = ImageMetrics(TinyFeatures(), reference, tiny_clip_score())
    metrics.update(images, CAPTIONS)
    want = flatten(metrics.compute())
    assert logged.keys() == want.keys()
    for key, value in want.items():
        assert logged[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_bad_settings_fail_before_training():
    with pytest.raises(ValueError, match="at least 2 captions"):
        GenerationMetrics(captions=["one"])
    with pytest.raises(ValueError, match="FID needs both"):
        GenerationMetrics(captions=CAPTIONS, reference_dir="ref")
