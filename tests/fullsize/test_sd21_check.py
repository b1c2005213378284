"""Stable Diffusion 2.1 end to end through a real diffusers folder (tests/fullsize/sd21_check.py).

make test: the reduced-width folder (the same config files, classes and loaders, small channels), every stage
in this process. make test-all: full size, each stage its own process, and the README's memory goal checked.
"""

import json

import pytest
import torch
from sd21_check import check  # tests/fullsize is on sys.path (rootdir conftest)

from zsnr.models.sd21_folder import REDUCED


def _common_checks(out, report, resolution: int) -> None:
    diffusers = report["diffusers"]
    assert diffusers["yaml_scheduler_is_the_folders"]
    assert diffusers["default_image_size"] == [resolution, resolution]  # sample_size from the trained size
    assert json.loads((out / "export" / "unet" / "config.json").read_text())["sample_size"] == resolution // 8
    source = str(out / "sd21-base")
    workflow = json.loads((out / "export.comfyui.json").read_text())  # beside the single file, for ComfyUI
    nodes = {node["class_type"]: node["inputs"] for node in workflow.values()}
    assert nodes["CheckpointLoaderSimple"]["ckpt_name"] == "export.safetensors"
    assert (
        nodes["ModelSamplingDiscrete"]["sampling"] == "v_prediction"
        and nodes["ModelSamplingDiscrete"]["zsnr"]
    )
    assert nodes["EmptyLatentImage"]["width"] == resolution
    for path in [*(out / "export").rglob("*.json"), out / "export.yaml", out / "export.comfyui.json"]:
        assert source not in path.read_text(), path  # no path of the training machine in the export
    last = torch.load(out / "run_cache" / "checkpoints" / "last.ckpt", map_location="cpu", mmap=True)
    assert last["global_step"] == 1  # the command the latent cache printed trained
    errors = report["storage_error"]
    assert errors["float32"]["max_abs"] == 0.0
    for dtype, unit_roundoff in (("bfloat16", 2.0**-8), ("float16", 2.0**-11)):
        assert 0 < errors[dtype]["relative_rms"] < unit_roundoff


def test_reduced_sd21_folder_trains_resumes_exports_and_loads_in_diffusers(tmp_path):
    report = check(tmp_path, reduced=True, keep=True)
    _common_checks(tmp_path, report, resolution=64)
    assert report["diffusers"]["single_file_max_abs_diff"] == 0.0  # the same tensors, only renamed
    resumed = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", mmap=True)
    assert resumed["global_step"] == 3
    unet = json.loads((tmp_path / "sd21-base" / "unet" / "config.json").read_text())
    assert unet["block_out_channels"] == REDUCED["unet"]["block_out_channels"]


@pytest.mark.slow
def test_full_size_sd21_fits_a_24_gib_host(tmp_path):
    report = check(tmp_path, reduced=False)
    _common_checks(tmp_path, report, resolution=256)
    assert report["diffusers"]["single_file_max_abs_diff"] <= 1e-5
    for stage in ("train 2 steps + 2 saves", "resume 1 step + save"):
        assert report["stages"][stage]["peak_rss_gib"] <= 20.0, report["stages"][stage]  # the README's goal
