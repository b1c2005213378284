"""Aspect-ratio buckets: the bucket set, which bucket an image goes to, the recorded crop, one bucket per batch."""

from __future__ import annotations

import io
import json
import math
import random
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from shard_factory import image_bytes
from torch.utils.data import DataLoader
from torchvision.transforms import functional as TF
from training_helpers import compose

from zsnr.data import ShardStream, WebDataModule, parse_sources
from zsnr.data.buckets import BucketSpec, bucket_sizes, crop_share, nearest_bucket
from zsnr.data.decode import decode_crop
from zsnr.models import size_multiple
from zsnr.models.sd21 import SD21_UNET, SD21_VAE

TINY_BUCKETS = ((24, 40), (28, 36), (32, 32), (36, 28), (40, 24))  # resolution 32, step 4, max_aspect 2


def kept_fraction(width: int, height: int, size: tuple[int, int]) -> float:
    """How much of a width x height image survives being scaled to cover `size` (w, h) and cropped to it."""
    scale = max(size[0] / width, size[1] / height)
    return (size[0] / scale) * (size[1] / scale) / (width * height)


def brute_force_buckets(resolution: int, step: int, max_aspect: float) -> set[tuple[int, int]]:
    """Every (w, h) in whole steps with at most resolution^2 pixels whose long side could not grow by a step."""
    area, sides = resolution**2, range(step, resolution**2 // step + 1, step)
    return {
        (w, h)
        for w in sides
        for h in sides
        if w * h <= area < min(w, h) * (max(w, h) + step) and max(w, h) <= max_aspect * min(w, h)
    }


def test_the_buckets_of_sd_resolutions_written_out():
    assert bucket_sizes(512, BucketSpec(64, 2.0)) == (
        (384, 640),
        (448, 576),
        (512, 512),
        (576, 448),
        (640, 384),
    )
    assert bucket_sizes(768, BucketSpec(64, 2.0)) == (
        (576, 1024), (640, 896), (704, 832), (768, 768), (832, 704), (896, 640), (1024, 576),
    )  # fmt: skip
    assert bucket_sizes(32, BucketSpec(4, 2.0)) == TINY_BUCKETS
    assert bucket_sizes(512, None) == ((512, 512),)  # no buckets: the square of the paper


@pytest.mark.parametrize(
    ("resolution", "step", "max_aspect"),
    [(512, 64, 2.0), (512, 64, 4.0), (768, 64, 2.5), (500, 64, 3.0), (1024, 128, 2.0), (32, 4, 2.0)],
)
def test_buckets_hold_the_squares_pixels_within_a_step_in_whole_steps(resolution, step, max_aspect):
    sizes = bucket_sizes(resolution, BucketSpec(step, max_aspect))
    assert set(sizes) == brute_force_buckets(resolution, step, max_aspect)
    area = resolution**2
    for w, h in sizes:
        assert w % step == 0 and h % step == 0
        assert area - step * min(w, h) < w * h <= area  # equal pixel count up to one step of the long side
        assert max(w, h) <= max_aspect * min(w, h) and (h, w) in sizes
    ratios = [w / h for w, h in sizes]
    assert ratios == sorted(ratios) and len(set(ratios)) == len(ratios)


def test_an_image_goes_to_the_bucket_that_crops_least():
    rng = random.Random(0)
    sizes = bucket_sizes(512, BucketSpec(64, 2.5))
    for _ in range(2000):
        width, height = rng.randint(16, 4000), rng.randint(16, 4000)
        chosen = nearest_bucket(width, height, sizes)
        best = max(kept_fraction(width, height, s) for s in sizes)
        assert kept_fraction(width, height, chosen) == pytest.approx(best, rel=1e-12), (width, height)
        log_ratio = math.log(width / height)  # the same choice: the bucket nearest in log aspect ratio
        distances = [abs(math.log(w / h) - log_ratio) for w, h in sizes]
        assert abs(math.log(chosen[0] / chosen[1]) - log_ratio) == pytest.approx(min(distances), abs=1e-12)
        assert crop_share(width, height, chosen) == pytest.approx(kept_fraction(width, height, chosen))
    for size in sizes:  # an image of a bucket's own shape goes to that bucket, whole
        assert nearest_bucket(size[0] * 3, size[1] * 3, sizes) == size
        assert crop_share(size[0] * 3, size[1] * 3, size) == 1.0


@pytest.mark.parametrize(("width", "height"), [(300, 200), (200, 330), (90, 260), (77, 77), (20, 50)])
@pytest.mark.parametrize("mode", ["center", "random_crop", "flip"])
def test_the_recorded_crop_is_where_the_output_came_from(width, height, mode):
    """Resize the whole image with torchvision to cover the bucket, (mirror it,) cut the window at the recorded
    (top, left): that is the output, and original_size is the stored image's (height, width)."""
    sizes = bucket_sizes(64, BucketSpec(16, 3.0))
    data = image_bytes(width, height, seed=width, fmt="PNG")
    seed = 7
    crop = decode_crop(data, sizes, mode == "random_crop", mode == "flip", random.Random(seed))
    w, h = max(sizes, key=lambda s: kept_fraction(width, height, s))
    assert crop.image.shape == (3, h, w) and crop.original_size == (height, width)
    wide = (
        width * h >= height * w
    )  # the heights match, the width is cut (torchvision's int() of the other side)
    resized = (h, int(width * h / height)) if wide else (int(height * w / width), w)
    full = torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()).permute(2, 0, 1)
    reference = TF.resize(full, list(resized), antialias=True)
    if mode == "flip" and random.Random(seed).random() < 0.5:  # no crop draw: the flip is the first draw
        reference = reference.flip(-1)
    top, left = crop.crop_top_left
    if mode != "random_crop":
        assert (top, left) == (round((resized[0] - h) / 2), round((resized[1] - w) / 2))
    window = reference[:, top : top + h, left : left + w]
    assert (crop.image.float() - window.float()).abs().mean() < 1.5


def test_a_large_jpeg_records_its_stored_size_not_the_draft_size():
    crop = decode_crop(image_bytes(2048, 1024, seed=1), bucket_sizes(64, BucketSpec(16, 2.0)))
    assert crop.original_size == (1024, 2048) and crop.image.shape == (3, 48, 80)  # 2:1 -> the 80 x 48 bucket


def test_every_batch_is_one_bucket_and_every_sample_comes_once(aspect_shards):
    dataset = ShardStream(parse_sources(aspect_shards.urls), batch_size=4, resolution=32, shuffle_buffer=8,
                          buckets=BucketSpec(4, 2.0))  # fmt: skip
    batches = list(DataLoader(dataset, batch_size=None, num_workers=2))
    keys = [k for b in batches for k in b["key"]]
    assert len(keys) == len(set(keys)) and set(keys) == aspect_shards.accepted
    shapes = Counter()
    for batch in batches:
        h, w = batch["image"].shape[-2:]
        shapes[(w, h)] += 1
        for key, original in zip(batch["key"], batch["original_size"].tolist(), strict=True):
            meta = aspect_shards.meta[key]
            assert original == [meta["height"], meta["width"]]
            best = max(TINY_BUCKETS, key=lambda s: kept_fraction(meta["width"], meta["height"], s))
            assert (w, h) == best, key
    assert len(shapes) == 5  # every bucket was drawn
    # full batches, except at the end of the pass: at most one short batch per bucket and worker
    short = Counter((b["image"].shape[-1], b["image"].shape[-2]) for b in batches if len(b["key"]) < 4)
    assert all(n <= 2 for n in short.values())


def test_square_images_stay_square_and_wide_ones_are_not_squeezed(aspect_shards):
    """Without buckets every image is the square center crop; with them a 2:1 image keeps 24/40 more of its
    width than the square keeps (the 40 x 24 bucket against 32 x 32 from a 45 x 23 image)."""
    plain = ShardStream(parse_sources(aspect_shards.urls), batch_size=200, resolution=32, shuffle_buffer=0)
    (batch,) = list(plain)
    assert batch["image"].shape[-2:] == (32, 32)
    wide = [k for k, m in aspect_shards.meta.items() if k in batch["key"] and m["width"] > 1.9 * m["height"]]
    assert wide
    for key in wide:
        meta = aspect_shards.meta[key]
        square = kept_fraction(meta["width"], meta["height"], (32, 32))
        bucket = kept_fraction(meta["width"], meta["height"], (40, 24))
        assert square == pytest.approx(meta["height"] / meta["width"]) and bucket > square + 0.2


def test_bucket_settings_are_checked_before_any_shard_is_read(six_shards):
    assert BucketSpec.from_any({"enabled": False, "step": 64, "max_aspect": 2.0}) is None
    assert BucketSpec.from_any({"enabled": True, "step": 8}) == BucketSpec(8, 2.0)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['stpe'\]"):
        BucketSpec.from_any({"stpe": 8})
    common = {"urls": six_shards.urls, "resolution": 32, "batch_size": 4, "num_workers": 0}
    with pytest.raises(
        ValueError, match="gives no bucket around resolution 32.* at most resolution / 4 \\(8 here\\)"
    ):
        WebDataModule(**common, buckets={"enabled": True, "step": 64})
    with pytest.raises(ValueError, match="data.buckets.step=6 is not a multiple of 4"):
        WebDataModule(**common, buckets={"step": 6}, size_multiple=4)
    assert WebDataModule(**common, buckets={"step": 8}, size_multiple=4).sizes == (
        (24, 40),
        (32, 32),
        (40, 24),
    )


def test_the_size_multiple_of_each_model(tmp_path):
    tiny, pixel = (compose("train", [f"model={m}"]).model for m in ("tiny", "tiny_pixel"))
    assert size_multiple(dict(tiny)) == 2 * 2  # KL autoencoder (16, 32): 2x; UNet of 2 levels: 2x
    assert size_multiple(dict(pixel)) == 2 * 2  # 2 x 2 pixel patches; the same UNet
    for part, config in (("vae", SD21_VAE), ("unet", SD21_UNET)):  # SD 2.1's own configs: 8x and 8x
        (tmp_path / part).mkdir()
        (tmp_path / part / "config.json").write_text(json.dumps(config))
    assert size_multiple({"kind": "diffusers", "path": str(tmp_path), "resolution": 512}) == 64


def test_the_paper_center_crops():
    assert compose("train", ["experiment=paper"]).data.buckets.enabled is False
    assert compose("train", ["data.buckets.enabled=true"]).data.buckets.step == 64


BUCKET_RUN = [
    "data.synthetic.aspects=[0.5,0.75,1,1.3333,2]",
    "data.buckets.enabled=true",
    "data.buckets.step=4",
]


def test_training_with_buckets_takes_steps_on_batches_of_different_shapes(tmp_path, data_root, monkeypatch):
    from training_helpers import launch_module, tiny_run

    from zsnr.training import DiffusionModule

    seen, micro_batch_loss = [], DiffusionModule.micro_batch_loss

    def recording_loss(self, batch):  # one call per micro-batch of the step's window
        loss, t = micro_batch_loss(self, batch)
        seen.append((tuple(batch["image"].shape[-2:]), loss.mean().item()))
        return loss, t

    monkeypatch.setattr(DiffusionModule, "micro_batch_loss", recording_loss)
    run = [*tiny_run(tmp_path, data_root, steps=4), *BUCKET_RUN, "samples.every_n_steps=0"]
    out = launch_module("train").train(compose("train", run))
    assert out["trainer"].global_step == 4 and len(seen) == 8  # 2 micro-batches of 4 per step
    assert {shape for shape, _ in seen} <= {(h, w) for w, h in TINY_BUCKETS}
    assert len({shape for shape, _ in seen}) >= 2 and all(np.isfinite(loss) for _, loss in seen)
    data_state = torch.load(out["last_checkpoint"], weights_only=True)["WebDataModule"]
    assert data_state["fingerprint"]["buckets"] == [
        4,
        2.0,
    ]  # a resume with other buckets is not taken as exact
    assert "buffered" in data_state["ranks"][0]["position"]["workers"][0]


def test_the_latent_cache_keeps_each_buckets_shape_and_the_crop(tmp_path, data_root):
    from training_helpers import launch_module, tiny_run

    from zsnr.data import to_model_range
    from zsnr.training import DiffusionModule

    data = [o for o in tiny_run(tmp_path, data_root) if o.startswith("data.")] + BUCKET_RUN
    cfg = compose("encode_latents", ["model=tiny", *data, f"out={tmp_path}/lat", "batch_size=16"])
    made = launch_module("encode_latents").encode_latents(cfg, data)
    assert json.loads(made["manifest"].read_text())["image_sizes"] == [list(s) for s in TINY_BUCKETS]
    cached = WebDataModule(urls=made["shards"], decode="latents", resolution=32, batch_size=4, num_workers=0)
    batches = list(cached.train_dataloader())
    images = WebDataModule(root=str(data_root), synthetic=dict(cfg.data.synthetic), resolution=32, batch_size=4,
                           num_workers=0, filters=dict(cfg.data.filters), buckets=dict(cfg.data.buckets))  # fmt: skip
    autoencoder = DiffusionModule(dict(cfg.model), {}).autoencoder
    reference = {}  # key -> what the bucketed images give: the encoder's posterior and the crop
    with torch.no_grad():
        for b in images.train_dataloader():
            mean, std = autoencoder.posterior(to_model_range(b["image"]))
            for j, key in enumerate(b["key"]):
                reference[key] = (mean[j], std[j], b["original_size"][j], b["crop_top_left"][j])
    assert sorted(k for b in batches for k in b["key"]) == sorted(reference)
    for batch in batches:  # one latent shape per batch: the bucket's, halved by the autoencoder
        for i, key in enumerate(batch["key"]):
            mean, std, original_size, crop_top_left = reference[key]
            torch.testing.assert_close(batch["latent_mean"][i], mean, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batch["latent_std"][i], std, atol=1e-5, rtol=1e-5)
            assert torch.equal(batch["original_size"][i], original_size)
            assert torch.equal(batch["crop_top_left"][i], crop_top_left)
    assert {tuple(b["latent_mean"].shape[-2:]) for b in batches} == {
        (h // 2, w // 2) for w, h in TINY_BUCKETS
    }
