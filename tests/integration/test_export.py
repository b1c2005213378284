"""Export to diffusers: the folder loads offline in StableDiffusionPipeline, keeps the fixes in its scheduler
config, and samples the same images as zsnr does (DDIM, trailing, rescaled CFG)."""

import contextlib
import io
import json

import pytest
import torch
from tiny_checkpoint import shared_tiny_checkpoint
from training_helpers import compose, launch_module

from zsnr import audit
from zsnr.diffusers_interop import ddim_scheduler
from zsnr.export import clip_tokenizer, export_diffusers, open_clip_to_clip_text_model
from zsnr.models import IdentityAutoencoder
from zsnr.models.schedule import Schedule
from zsnr.models.text import OpenCLIPTextEncoder, Tokenizer
from zsnr.sampling import image_generators, initial_noise, load_for_inference

PROMPTS = ["a solid black background", "a white background, 4k (masterpiece)", ""]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    ckpt = shared_tiny_checkpoint(tmp_path_factory)
    out = tmp / "diffusers"
    cfg = compose("export", [f"checkpoint={ckpt}", f"out={out}", "single_file=false"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        launch_module("export").export(cfg)
    assert "none of the paper's flaws" in printed.getvalue()  # the audit runs after writing
    return ckpt, out


def test_folder_keeps_the_fixes(exported):
    _, out = exported
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "DDIMScheduler"
    assert sched["rescale_betas_zero_snr"] is True and sched["timestep_spacing"] == "trailing"
    assert sched["prediction_type"] == "v_prediction" and sched["clip_sample"] is False
    assert sched["set_alpha_to_one"] is True
    for sub in ("unet", "vae"):
        assert (out / sub / "diffusion_pytorch_model.safetensors").is_file()
    assert (out / "text_encoder" / "model.safetensors").is_file()
    assert not list(out.rglob("*.bin"))
    a = audit.audit(out)
    assert a.flaws == [] and a.terminal_snr == 0.0 and a.first_timestep[10] == 999


def test_diffusers_pipeline_samples_what_zsnr_samples(exported):
    from diffusers import StableDiffusionPipeline

    ckpt, out = exported
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    model = load_for_inference(ckpt)
    seeds = [0, 1, 2]
    x_T = initial_noise(image_generators(seeds), (4, 16, 16), "cpu")
    # S divides T: diffusers' DDIM steps to t - T // S, which is the next trailing timestep only then
    ours = model.generate(PROMPTS, seeds, num_steps=5, guidance_scale=7.5, guidance_rescale=0.7)
    theirs = pipe(
        PROMPTS, num_inference_steps=5, guidance_scale=7.5, guidance_rescale=0.7, latents=x_T.clone(),
        height=32, width=32, output_type="pt",
    ).images  # fmt: skip
    assert theirs.shape == ours.shape == (3, 3, 32, 32)
    torch.testing.assert_close(theirs * 2 - 1, ours, atol=1e-4, rtol=0)  # measured: 3e-6
    assert (ours[0] - ours[1]).abs().max() > 1e-2  # the prompts matter, so the text path is compared too


def test_single_file_refuses_what_the_original_layout_cannot_hold(tmp_path_factory, tmp_path):
    cfg = compose(
        "export", [f"checkpoint={shared_tiny_checkpoint(tmp_path_factory)}", f"out={tmp_path / 'x'}"]
    )
    with pytest.raises(ValueError, match="8 GroupNorm groups, LDM 32.*single_file=false"):
        launch_module("export").export(cfg)  # model=tiny's UNet and VAE; refused before anything is written
    assert not list(tmp_path.iterdir())


def test_text_encoder_and_tokenizer_conversion():
    torch.manual_seed(0)
    enc = OpenCLIPTextEncoder(width=32, heads=4, layers=3)
    with torch.no_grad():  # move LayerNorms and biases off their initial values
        for p in enc.parameters():
            p.add_(0.1 * torch.randn_like(p))
    tok = Tokenizer()
    prompts = PROMPTS + ["Über café naïve, don't 123", "word " * 100]  # accents, truncation at 77
    ids = tok(prompts)
    hf_ids = clip_tokenizer(tok)(
        prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    )
    assert torch.equal(hf_ids.input_ids, ids)
    hf = open_clip_to_clip_text_model(enc)
    assert hf.config.num_hidden_layers == 2  # the penultimate read-out
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).last_hidden_state, enc(ids), atol=1e-5, rtol=1e-5)


def test_scheduler_for_other_schedules_and_pixel_models_refused(tmp_path):
    s = ddim_scheduler(Schedule(betas="cosine_unclipped", rescale_zero_terminal_snr=False))
    assert s.config.trained_betas is not None and float(s.alphas_cumprod[-1]) == 0.0
    flawed = ddim_scheduler(
        Schedule(rescale_zero_terminal_snr=False, prediction_type="epsilon", spacing="leading")
    )
    assert flawed.config.rescale_betas_zero_snr is False and flawed.config.prediction_type == "epsilon"
    # a shifted schedule is not diffusers' named one: its own betas (rescaled already) go as trained_betas;
    # ddim_scheduler itself raises when diffusers' abar is not zsnr's
    shifted = ddim_scheduler(Schedule(snr_shift=16.0))
    assert shifted.config.trained_betas is not None and not shifted.config.rescale_betas_zero_snr
    assert float(shifted.alphas_cumprod[-1]) == 0.0

    class PixelModel:
        autoencoder = IdentityAutoencoder(patch_size=2)

    with pytest.raises(ValueError, match="pixel space"):
        export_diffusers(PixelModel(), tmp_path)
