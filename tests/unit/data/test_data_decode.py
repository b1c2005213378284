"""Image decoding against torchvision's Resize + CenterCrop, draft mode, crops, flips, bad bytes."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin
from shard_factory import image_bytes
from torchvision import transforms as T

from zsnr.data import decode_image, to_model_range
from zsnr.data.decode import read_caption, read_metadata
from zsnr.data.shards import BadData


def reference(data: bytes, resolution: int) -> torch.Tensor:
    """The naive path: full decode, torchvision's resize of the short side (bilinear, antialiased), center crop."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    t = T.Compose([T.Resize(resolution), T.CenterCrop(resolution)])
    return torch.from_numpy(np.asarray(t(image)).copy()).permute(2, 0, 1)


def test_to_model_range_endpoints():
    x = torch.tensor([0, 255, 51], dtype=torch.uint8)
    assert torch.allclose(to_model_range(x), torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]))
    with pytest.raises(TypeError, match="uint8"):
        to_model_range(x.float())


@pytest.mark.parametrize(
    ("size", "fmt"), [((300, 200), "PNG"), ((200, 330), "PNG"), ((20, 24), "PNG"), ((400, 300), "JPEG")]
)
def test_matches_torchvision_resize_and_center_crop(size, fmt):
    data = image_bytes(*size, seed=3, fmt=fmt)
    ours = decode_image(data, 64)
    assert ours.shape == (3, 64, 64) and ours.dtype == torch.uint8
    diff = (ours.float() - reference(data, 64).float()).abs()
    assert diff.mean() < 1.5, diff.mean()


def test_large_jpeg_is_decoded_in_draft_mode_and_stays_close(monkeypatch):
    scales = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        before = self.size
        result = original(self, mode, size)
        scales.append(before[0] // self.size[0])
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    data = image_bytes(2048, 1536, seed=5)
    ours = decode_image(data, 128)
    assert scales == [8]  # 1536 / 8 = 192 >= 128 > 1536 / 16
    diff = (ours.float() - reference(data, 128).float()).abs()
    assert diff.mean() < 2.0, diff.mean()


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_any_mode_becomes_rgb(mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = decode_image(image_bytes(50, 40, fmt=fmt, mode=mode), 16)
    assert out.shape == (3, 16, 16)


def test_random_crop_moves_the_window_and_center_crop_does_not():
    # left third black, right third white: the crop's mean tells where the window is
    array = np.zeros((100, 300, 3), np.uint8)
    array[:, 200:] = 255
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    center = decode_image(buf.getvalue(), 50)
    assert center.float().mean() < 5  # the middle third is black
    means = {
        round(decode_image(buf.getvalue(), 50, random_crop=True, rng=random.Random(s)).float().mean().item())
        for s in range(60)
    }
    assert min(means) < 20 and max(means) > 235 and len(means) > 10


def test_flip_is_a_horizontal_mirror():
    data = image_bytes(60, 60, seed=1, fmt="PNG")
    plain = decode_image(data, 32)
    seed = next(s for s in range(100) if random.Random(s).random() < 0.5)
    flipped = decode_image(data, 32, random_flip=True, rng=random.Random(seed))
    assert torch.equal(flipped, plain.flip(-1))
    seed = next(s for s in range(100) if random.Random(s).random() >= 0.5)
    assert torch.equal(decode_image(data, 32, random_flip=True, rng=random.Random(seed)), plain)


def test_bad_image_bytes_raise_bad_data():
    with pytest.raises(BadData) as info:
        decode_image(b"not an image at all", 32)
    assert info.value.kind == "image_decode"
    with pytest.raises(BadData) as info:
        decode_image(image_bytes(80, 80)[:200], 32)  # truncated JPEG
    assert info.value.kind == "image_decode"
    with pytest.raises(BadData) as info:
        decode_image(b"", 32)
    assert info.value.kind == "empty_member"


def test_caption_and_metadata_parsing():
    assert read_caption({"txt": b" a dog \n"}, {}) == "a dog"
    assert read_caption({}, {"caption": "from json"}) == "from json"
    assert read_caption({"txt": b""}, {"caption": "fallback"}) == "fallback"
    with pytest.raises(BadData) as info:
        read_caption({"txt": "café".encode("latin-1")}, {})
    assert info.value.kind == "caption_encoding"
    assert read_metadata({"json": json.dumps({"a": 1}).encode()}, True) == {"a": 1}
    assert read_metadata({}, False) == {}
    for sample, kind in [
        ({}, "json_missing"),
        ({"json": b"{oops"}, "json_broken"),
        ({"json": b"[1]"}, "json_broken"),
        ({"json": b""}, "empty_member"),
    ]:
        with pytest.raises(BadData) as info:
            read_metadata(sample, True)
        assert info.value.kind == kind
