"""diffusers -> original SD 2.x key layout: diffusers' own single-file converters give every tensor back."""

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel

from zsnr.models.ldm_keys import TEXT_PREFIX, hf_text_to_open_clip, unet_to_ldm, vae_to_ldm
from zsnr.models.sd21 import SD21_TEXT_ENCODER, SD21_UNET, SD21_VAE
from zsnr.models.sd21_folder import REDUCED
from zsnr.models.text import OpenCLIPTextEncoder, Tokenizer


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("layers_per_block", [2, 1])
def test_unet_round_trips_through_diffusers_converter(layers_per_block):
    config = {**SD21_UNET, **REDUCED["unet"], "layers_per_block": layers_per_block}
    torch.manual_seed(0)
    state = UNet2DConditionModel(**config).state_dict()
    ldm = unet_to_ldm(state, config)
    assert (
        "model.diffusion_model.output_blocks.2.1.conv.weight" in ldm or layers_per_block != 2
    )  # SD's upsampler
    _same(convert_ldm_unet_checkpoint(ldm, config), state)


def test_vae_round_trips_with_attention_as_1x1_convolutions():
    config = {**SD21_VAE, **REDUCED["vae"]}
    torch.manual_seed(0)
    state = AutoencoderKL(**config).state_dict()
    ldm = vae_to_ldm(state, len(config["block_out_channels"]))
    assert ldm["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (128, 128, 1, 1)
    _same(convert_ldm_vae_checkpoint(ldm, config), state)


def test_text_tower_round_trips_and_its_identity_last_block_changes_nothing():
    config = CLIPTextConfig(
        **{**SD21_TEXT_ENCODER, "hidden_size": 32, "intermediate_size": 128, "num_attention_heads": 2}
    )
    torch.manual_seed(0)
    model = CLIPTextModel(config).eval()
    with torch.no_grad():  # move LayerNorms and biases off their initial values
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    ldm = hf_text_to_open_clip(state, config.num_hidden_layers)
    back = convert_open_clip_checkpoint(model, ldm)  # diffusers reads SD 2.x's 24 blocks as 23 (penultimate)
    _same(
        {k.removeprefix("text_model."): v for k, v in back.items()},
        {k.removeprefix("text_model."): v for k, v in state.items()},
    )

    tower = OpenCLIPTextEncoder(
        width=32, heads=2, layers=24
    )  # the OpenCLIP tower, as SD 2.x and the UIs run it
    tower.load_text_weights({k.removeprefix(TEXT_PREFIX): v for k, v in ldm.items()}, source="test")
    ids = Tokenizer()(["a solid black background", "a white background, 4k"])
    with torch.no_grad():
        expected = model(input_ids=ids).last_hidden_state
        torch.testing.assert_close(tower(ids), expected, atol=1e-5, rtol=1e-5)  # penultimate read-out
        every_block = tower.tower.forward_intermediates(
            ids, indices=[23], normalize_intermediates=True, intermediates_only=True, output_fmt="NLC"
        )["text_intermediates"][0]
        torch.testing.assert_close(
            every_block, expected, atol=1e-5, rtol=1e-5
        )  # the last block is the identity
