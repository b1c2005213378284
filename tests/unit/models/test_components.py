"""Building the model parts: tiny from sizes, diffusers folders offline, clear errors for missing files."""

import pytest
import torch

from zsnr.models import IdentityAutoencoder, build_components, check_model_files

TINY = {"kind": "tiny", "resolution": 32}


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_tiny_has_sd_traits_and_is_small():
    parts = build_components(TINY)
    cfg = parts.unet.config
    assert 3e5 <= _count(parts.unet) <= 3e6
    assert cfg.use_linear_projection and "CrossAttnDownBlock2D" in cfg.down_block_types
    assert cfg.cross_attention_dim == parts.text_encoder.hidden_size
    assert cfg.in_channels == parts.autoencoder.latent_channels == 4
    assert parts.autoencoder.scaling_factor == pytest.approx(0.18215)
    for frozen in (parts.autoencoder, parts.text_encoder):
        assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in parts.unet.parameters())


def test_tiny_cross_attention_levels():
    cfg = build_components(TINY).unet.config  # SD's layout: every level but the deepest attends to the text
    assert list(cfg.down_block_types) == ["CrossAttnDownBlock2D", "DownBlock2D"]
    assert list(cfg.up_block_types) == ["UpBlock2D", "CrossAttnUpBlock2D"]
    deep = build_components({**TINY, "unet": {"cross_attention": [False, True]}}).unet.config
    assert list(deep.down_block_types) == ["DownBlock2D", "CrossAttnDownBlock2D"]
    assert list(deep.up_block_types) == ["CrossAttnUpBlock2D", "UpBlock2D"]
    with pytest.raises(ValueError, match="one flag per level"):
        build_components({**TINY, "unet": {"cross_attention": [True]}})


def test_tiny_is_deterministic_from_its_seed():
    a, b = build_components(TINY), build_components(TINY)
    c = build_components({**TINY, "init_seed": 1})
    for x, y in zip(a.unet.state_dict().values(), b.unet.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    assert not torch.equal(next(a.unet.parameters()), next(c.unet.parameters()))


def test_identity_autoencoder_is_exact_pixel_space():
    ae = IdentityAutoencoder(patch_size=2)
    x = torch.randn(2, 3, 8, 8)
    z = ae.encode(x)
    assert z.shape == (2, 12, 4, 4) and ae.scaling_factor == 1.0
    assert torch.equal(ae.decode(z), x)
    assert torch.equal(z.flatten(1).sort().values, x.flatten(1).sort().values)  # a permutation of the pixels
    parts = build_components({**TINY, "autoencoder": {"kind": "identity", "patch_size": 2}})
    assert parts.unet.config.in_channels == 12 and parts.unet.config.sample_size == 16


def test_diffusers_folder_loads_offline(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    tiny = build_components(TINY)
    tiny.unet.save_pretrained(tmp_path / "unet")
    tiny.autoencoder.vae.save_pretrained(tmp_path / "vae")
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, hidden_act="gelu",
    )  # fmt: skip
    CLIPTextModel(config).save_pretrained(tmp_path / "text_encoder")
    spec = {"kind": "diffusers", "path": str(tmp_path), "resolution": 32, "text_encoder": "transformers"}
    parts = build_components(spec)
    for x, y in zip(parts.unet.state_dict().values(), tiny.unet.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    assert parts.frozen_from_files
    ids = parts.tokenizer(["a white background"])
    assert parts.text_encoder(ids).shape == (1, 77, 32)
    fresh = build_components(spec, pretrained_unet=False)  # config only: weights come from a checkpoint
    assert fresh.unet.config.block_out_channels == tiny.unet.config.block_out_channels
    empty = build_components(spec, pretrained_unet=False, empty_unet=True)  # no memory until assigned
    assert all(p.is_meta for p in empty.unet.parameters()) and not any(
        p.is_meta for p in fresh.unet.parameters()
    )
    with pytest.raises(ValueError, match="pretrained_unet=False"):
        build_components(spec, empty_unet=True)


def test_missing_weights_fail_early_with_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="stable-diffusion-2-1-base.*copy it to"):
        check_model_files(
            {"kind": "diffusers", "path": str(tmp_path / "nope"), "text_encoder": "transformers"}
        )
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "unet").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks"):
        check_model_files({"kind": "diffusers", "path": str(tmp_path / "sd"), "text_encoder": "transformers"})
    with pytest.raises(FileNotFoundError, match="v2-1_512-ema-pruned"):
        check_model_files({"kind": "original", "checkpoint": str(tmp_path / "x.safetensors")})
    with pytest.raises(ValueError, match="model.kind"):
        check_model_files({"kind": "sd3"})
