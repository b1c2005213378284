"""Tokenizer offline, the penultimate read-out, and agreement of the two text-encoder implementations."""

import pytest
import torch

from zsnr.models.text import HFCLIPTextEncoder, OpenCLIPTextEncoder, Tokenizer, load_open_clip_text


def test_tokenizer_is_offline_bpe_with_clip_ids():
    ids = Tokenizer()(["a white background", ""])
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    # CLIP's BPE: <start>=49406, "a</w>"=320, "white</w>"=1579, "background</w>"=5994, <end>=49407, pad 0
    assert ids[0, :5].tolist() == [49406, 320, 1579, 5994, 49407]
    assert ids[0, 5:].abs().sum() == 0
    assert ids[1, :2].tolist() == [49406, 49407]
    long = Tokenizer()(["word " * 200])
    assert long.shape == (1, 77) and long[0, -1] == 49407  # truncated, still ends with <end>


def _tiny_encoder(layers=3):
    torch.manual_seed(0)
    return OpenCLIPTextEncoder(width=32, heads=2, layers=layers).eval()


def test_penultimate_readout_matches_manual_forward():
    enc = _tiny_encoder()
    ids = Tokenizer()(["a solid black background", "a red circle"])
    tower = enc.tower
    x = tower.token_embedding(ids) + tower.positional_embedding
    for block in tower.transformer.resblocks[:-1]:  # every block but the last (SD 2.x's layer="penultimate")
        x = block(x, attn_mask=tower.attn_mask)
    expected = tower.ln_final(x)
    torch.testing.assert_close(enc(ids), expected, rtol=0, atol=1e-6)
    with torch.no_grad():  # the last block must not matter
        tower.transformer.resblocks[-1].mlp.c_fc.weight.mul_(10.0)
    torch.testing.assert_close(enc(ids), expected, rtol=0, atol=1e-6)


def test_transformers_clip_converted_by_diffusers_gives_the_same_states():
    """diffusers converts SD 2.x's OpenCLIP tower to a CLIPTextModel with one layer less; both read-outs agree."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    enc = _tiny_encoder(layers=3)
    ldm = {f"cond_stage_model.model.{k}": v for k, v in enc.tower.state_dict().items()}
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=32, layer_norm_eps=1e-5,
    )  # fmt: skip
    hf = CLIPTextModel(config).eval()
    converted = convert_open_clip_checkpoint(hf, ldm)
    own = hf.state_dict()
    if not any(k.startswith("text_model.") for k in own):  # transformers 5 names them without the prefix
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    missing = set(own) - set(converted) - {"text_model.embeddings.position_ids", "embeddings.position_ids"}
    assert not missing, missing
    hf.load_state_dict({k: v for k, v in converted.items() if k in own}, strict=False)
    ids = Tokenizer()(["a white background", "a cat"])
    torch.testing.assert_close(HFCLIPTextEncoder(hf)(ids), enc(ids), rtol=1e-4, atol=1e-4)


def test_open_clip_weights_load_from_file_with_prefix(tmp_path):
    enc = _tiny_encoder()
    arch = {"width": 32, "heads": 2, "layers": 3}
    full = {f"cond_stage_model.model.{k}": v for k, v in enc.tower.state_dict().items()}
    full["model.diffusion_model.x"] = torch.zeros(1)
    torch.save(full, tmp_path / "sd.ckpt")
    loaded = load_open_clip_text(tmp_path / "sd.ckpt", prefix="cond_stage_model.model.", arch=arch)
    ids = Tokenizer()(["a gray background"])
    torch.testing.assert_close(loaded(ids), enc(ids))
    torch.save({"visual.proj": torch.zeros(1)}, tmp_path / "not_clip.bin")
    with pytest.raises(ValueError, match="lacks .* text-tower tensors"):
        load_open_clip_text(tmp_path / "not_clip.bin", arch=arch)
    with pytest.raises(FileNotFoundError, match="open_clip_pytorch_model.bin"):
        load_open_clip_text(tmp_path / "absent.bin", arch=arch)
