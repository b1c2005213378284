"""CLIP score: the formula on a model with known embeddings, and the OpenCLIP loading path with a tiny model."""

import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from torch import nn

from zsnr.evaluation.clip_score import OPENAI_MEAN, OPENAI_STD, CLIPScore, load_open_clip_score

TEXT = {"red": [1.0, 0.0, 0.0], "green": [0.0, 1.0, 0.0], "anti": [-1.0, -1.0, -1.0]}


class ColourCLIP(nn.Module):
    """Image embedding = mean normalised colour; text embedding = a fixed vector per caption."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def encode_image(self, pixels):
        return pixels.mean(dim=(2, 3))

    def encode_text(self, ids):
        return torch.tensor([list(TEXT.values())[int(i)] for i in ids])


def tokenize(captions):
    return torch.tensor([list(TEXT).index(c) for c in captions])


def test_score_formula():
    colours = [(200, 30, 30), (10, 240, 60), (90, 90, 200)]
    images = torch.tensor(colours, dtype=torch.uint8).view(3, 3, 1, 1).expand(3, 3, 16, 16).contiguous()
    captions = ["red", "green", "anti"]
    scores = CLIPScore(ColourCLIP(), tokenize, image_size=8).per_image(images, captions)
    for score, colour, caption in zip(scores, colours, captions, strict=True):
        e = (np.array(colour) / 255 - np.array(OPENAI_MEAN)) / np.array(OPENAI_STD)
        t = np.array(TEXT[caption])
        expected = 100 * max(e @ t / np.linalg.norm(e) / np.linalg.norm(t), 0.0)
        assert score.item() == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert scores[2] == 0.0  # negative cosine is clamped (torchmetrics' definition)
    with pytest.raises(ValueError, match="one caption per image"):
        CLIPScore(ColourCLIP(), tokenize).per_image(images, captions[:2])


TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def test_open_clip_from_local_file_and_preprocess_matches_open_clip(tmp_path):
    (tmp_path / "zsnr-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "zsnr-tiny-clip.json")
    weights = tmp_path / "tiny_clip.bin"
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_open_clip_score("zsnr-tiny-clip", weights)
    torch.manual_seed(0)
    torch.save(open_clip.create_model("zsnr-tiny-clip").state_dict(), weights)
    scorer = load_open_clip_score("zsnr-tiny-clip", weights)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    # open_clip's own eval transform on PIL images (no resize needed at 32 px: exact)
    transform = open_clip.image_transform(32, is_train=False)
    pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images]
    expected_pixels = torch.stack([transform(p) for p in pil])
    torch.testing.assert_close(scorer.preprocess(images), expected_pixels, atol=1e-5, rtol=0)
    # 64 px: resized; PIL's bicubic and torch's antialiased bicubic agree to a few grey levels
    big = torch.nn.functional.interpolate(images.float(), scale_factor=2, mode="nearest").to(torch.uint8)
    pil_big = torch.stack([transform(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in big])
    assert (scorer.preprocess(big) - pil_big).abs().mean() < 0.05
    scores = scorer.per_image(images, ["a photo of a cat", "a black background"])
    model = scorer.model
    with torch.no_grad():
        e = model.encode_image(expected_pixels).double()
        t = model.encode_text(
            open_clip.get_tokenizer("zsnr-tiny-clip")(["a photo of a cat", "a black background"])
        )
    cos = torch.nn.functional.cosine_similarity(e, t.double(), dim=-1)
    torch.testing.assert_close(scores, 100 * cos.clamp_min(0), atol=1e-3, rtol=1e-5)
