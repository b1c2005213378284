"""launch/sample.py on a tiny checkpoint: files, seeds independent of batching, img2img with rescaled CFG."""

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_checkpoint import shared_tiny_checkpoint
from training_helpers import compose, launch_module

from zsnr.evaluation.images import save_png, to_uint8
from zsnr.sampling import SamplingSettings, generate, load_for_inference

PROMPTS = ["a solid black background", "a white background"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return shared_tiny_checkpoint(tmp_path_factory)


def sample_config(overrides):
    return compose("sample", overrides)


def test_writes_images_grid_settings(ckpt, tmp_path):
    out = tmp_path / "run"
    cfg = sample_config(
        [f"checkpoint={ckpt}", f"prompts=[{','.join(PROMPTS)}]", "images_per_prompt=2", "batch_size=3",
         "num_steps=5", "seed=10", f"out_dir={out}"]
    )  # fmt: skip
    launch_module("sample").sample(cfg)
    record = json.loads((out / "settings.json").read_text())
    assert record["settings"] == {
        "sampler": "ddim", "num_steps": 5, "spacing": "trailing", "eta": None, "guidance_scale": 7.5,
        "guidance_rescale": 0.7, "negative_prompt": "", "dtype": "float32",  # dtype auto on a CPU
        "start_timestep": None,
    }  # fmt: skip
    assert [(e["prompt"], e["seed"]) for e in record["images"]] == [
        (PROMPTS[0], 10), (PROMPTS[0], 11), (PROMPTS[1], 12), (PROMPTS[1], 13),
    ]  # fmt: skip
    files = [out / e["file"] for e in record["images"]]
    pngs = torch.stack([torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1) for f in files])
    # batches of 3 in the launcher; one batch of 4 here: a seed fixes the image whatever its batch
    model = load_for_inference(ckpt)
    direct = generate(
        model, [e["prompt"] for e in record["images"]], [10, 11, 12, 13], SamplingSettings(num_steps=5)
    )
    assert (pngs.int() - to_uint8(direct).int()).abs().max() <= 1
    with Image.open(out / "grid.png") as grid:
        assert grid.size == (2 * 34 + 2, 2 * 34 + 2)  # 2 x 2 images of 32 px, 2 px padding


def test_img2img_at_full_strength_is_txt2img_with_zero_snr(ckpt, tmp_path):
    """abar_T = 0: noising any image to t = T gives exactly the noise, so strength 1 ignores the init image."""
    model = load_for_inference(ckpt)
    settings = SamplingSettings(num_steps=5, guidance_rescale=0.7)
    init = torch.rand(3, 32, 32) * 2 - 1
    txt = generate(model, PROMPTS, [3, 4], settings, progress=False)
    img = generate(model, PROMPTS, [3, 4], settings, init_image=init, strength=1.0, progress=False)
    torch.testing.assert_close(img, txt, atol=1e-5, rtol=0)


def test_img2img_runs_the_last_steps_from_the_init_image(ckpt, tmp_path):
    model = load_for_inference(ckpt)
    seen = []
    hook = model.unet.register_forward_pre_hook(lambda m, args: seen.append(args[1].tolist()))
    init = torch.zeros(3, 32, 32)
    try:
        generate(
            model, ["a white background"], [0], SamplingSettings(num_steps=5), init_image=init, strength=0.4
        )
    finally:
        hook.remove()
    # strength 0.4 of 5 trailing steps (999 799 599 399 199): the last 2, one batched CFG call each
    assert seen == [[399, 399], [199, 199]]
    # through the launcher: an image file, center-cropped and resized to the model's 32 px
    init_file = save_png(torch.full((3, 48, 40), 30, dtype=torch.uint8), tmp_path / "init.png")
    cfg = sample_config(
        [f"checkpoint={ckpt}", "prompts=[a white background]", f"init_image={init_file}", "strength=0.4",
         "num_steps=5", f"out_dir={tmp_path / 'run'}", "guidance.rescale=0.5"]
    )  # fmt: skip
    result = launch_module("sample").sample(cfg)
    record = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert record["img2img"] == {"init_image": str(init_file), "strength": 0.4}
    assert record["settings"]["guidance_rescale"] == 0.5 and len(result["images"]) == 1


def test_bad_options_fail_before_loading(tmp_path):
    with pytest.raises(ValueError, match="spacing must be one of"):
        SamplingSettings(spacing="uniform")
    with pytest.raises(ValueError, match=r"phi\) must be in \[0, 1\]"):
        SamplingSettings(guidance_rescale=1.5)
    cfg = sample_config(["checkpoint=/nonexistent.ckpt", f"out_dir={tmp_path}"])
    with pytest.raises(ValueError, match="no prompts"):
        launch_module("sample").sample(cfg)


@pytest.mark.parametrize("sampler,eta", [("ddpm", None), ("euler_ancestral", None), ("ddim", 1.0)])
def test_stochastic_samplers_give_an_image_independent_of_its_batch(ckpt, sampler, eta):
    """Every draw is from the image's own generator, so image k of a prompt is the same in any batch."""
    model = load_for_inference(ckpt)
    settings = SamplingSettings(sampler=sampler, eta=eta, num_steps=4)
    prompts, seeds = [PROMPTS[0], PROMPTS[1], PROMPTS[0]], [5, 6, 7]
    together = generate(model, prompts, seeds, settings, batch_size=3, progress=False)
    alone = generate(model, prompts, seeds, settings, batch_size=1, progress=False)
    reordered = generate(model, prompts[::-1], seeds[::-1], settings, batch_size=2, progress=False)
    torch.testing.assert_close(alone, together, atol=1e-4, rtol=0)  # batch-size numerics: 1e-5
    torch.testing.assert_close(reordered.flip(0), together, atol=1e-4, rtol=0)
    deterministic = generate(
        model, prompts, seeds, SamplingSettings(num_steps=4), batch_size=3, progress=False
    )
    assert (together - deterministic).abs().max() > 1e-2  # the sampler's noise does matter


# Measured with this test's settings (the shared tiny checkpoint, 4 images, DDIM 10 steps, w 7.5, phi 0.7, CPU
# autocast), in two runs of different code versions: max |half - float32| bfloat16 0.0306-0.0311, float16
# 0.0047-0.0052 (rms 0.0061-0.0062 and 0.00075-0.00078; images in [-1, 1]), about 6-8x apart as the unit
# roundoffs 2^-8 and 2^-11 are. Bound: 2x the largest measured max, the margin for other CPUs' kernels and
# library versions.
HALF_PRECISION_MAX_DIFFERENCE = {"bfloat16": 2 * 0.0311, "float16": 2 * 0.0052}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)], ids=["cpu", "cuda"])
def test_half_precision_images_stay_close_to_float32(ckpt, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = load_for_inference(ckpt, device=device)
    prompts, seeds = [*PROMPTS, *PROMPTS], [0, 1, 2, 3]
    start = time.process_time()
    reference = generate(model, prompts, seeds, SamplingSettings(num_steps=10), progress=False)
    seconds = time.process_time() - start
    for dtype, bound in HALF_PRECISION_MAX_DIFFERENCE.items():
        start = time.process_time()
        half = generate(model, prompts, seeds, SamplingSettings(num_steps=10, dtype=dtype), progress=False)
        difference = (half - reference).abs()
        print(
            f"{device} {dtype}: max |half - float32| {difference.max():.4f}, rms "
            f"{difference.square().mean().sqrt():.5f}; CPU seconds {time.process_time() - start:.1f} (float32 "
            f"{seconds:.1f})"
        )
        assert (
            half.dtype == torch.float32 and difference.max() > 0
        )  # autocast ran: half precision changed them
        assert difference.max() < bound, (dtype, difference.max())
