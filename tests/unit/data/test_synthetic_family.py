"""The synthetic set's families: "shapes" exactly as before, "scenes" textured yet with the demo's captions.

The numbers checked are stated properties (the demo's needs, closed forms of zsnr.data.scenes.shade), and for
"shapes" hashes of what the code made before the family existed.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from shard_factory import passes_sd2_filters, read_keys_and_meta
from training_helpers import ROOT, compose

from zsnr.data import LaionFilter, ShardStream, ensure_synthetic_shards, parse_sources
from zsnr.data.scenes import ELEMENTS, S_EXTREME, S_MID, shade, texture
from zsnr.data.synthetic import SyntheticSet, synthetic_samples

SOLID = ("circle", "square", "triangle")  # the demo's shapes
PROMPTS = [p for ps in OmegaConf.load(ROOT / "configs" / "demo.yaml").prompt_sets.values() for p in ps]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pixels(sample: dict) -> np.ndarray:
    """The sample's image in [-1, 1] units, [H, W, 3]."""
    return np.asarray(Image.open(io.BytesIO(sample["png"])), dtype=np.float64) / 127.5 - 1


class Drawn:
    """The demo's set (4096 images of 16 px, seed 0): every sample's json, and plain backgrounds' pixels."""

    def __init__(self, family: str) -> None:
        spec = SyntheticSet(4096, 16, 0, shapes=SOLID, family=family)
        self.metas, self.plain = [], {}
        for sample in synthetic_samples(spec):
            meta = json.loads(sample["json"])
            self.metas.append(meta)
            if meta["shape"] is None:
                self.plain.setdefault(meta["background"], []).append(pixels(sample))


@pytest.fixture(scope="module", params=["shapes", "scenes"])
def drawn(request) -> tuple[str, Drawn]:
    return request.param, Drawn(request.param)


# sha256 of the PNG members, computed before the families existed
SHAPES_PNG_16 = [  # SyntheticSet(4, 16, 0, shapes=SOLID)
    "73053ecee04723d7a0a458dc083af733a4fa6d8e65270dedd3b6849dacba734d",
    "e8c1f1fed24fdbb67c56d02b8717a15e54d5e7df4ae94b254710a11172beb077",
    "313dab2a0024bd93ce191d86651f1c60b40676d119d84920c8cb1e8a4eee1a98",
    "67e025901b1083379e93d93689a1d3a046c7b5f1cf95fd828962cebafce42183",
]
SHAPES_PNG_64 = [  # SyntheticSet(3, 64, 0)
    "d8d10512b8fe79fc29218cb9e78b502f62c673d08ebdc82b31a26fa30942e901",
    "dfe4c8a2b733445ff4a9380b4a3b7a11cf6e4f264d536c55a33ee73758e3dd06",
    "b1df26cb84dd5d35fe465e11b245533cb5ea7e262b51619d1118843fe902fd81",
]
SHAPES_FILES = {  # ensure_synthetic_shards(root, SyntheticSet(20, 16, 0, 8)): shards and marker
    "synthetic-r16-n20-s0-k8/COMPLETE": "f0ecc9e56368824a7e3d7284fbbc496a3114ea3bc4d2aba120236552c68ea72e",
    "synthetic-r16-n20-s0-k8/shard-000000.tar": "efa14a1cfc55c8f172c6c8121da3ccc95fa27b922084f73259ea2a7d24738023",
    "synthetic-r16-n20-s0-k8/shard-000001.tar": "02bcc87747e78ab91200de0f020fa319005dec9917ec2156614ff4e9c1aff6ce",
    "synthetic-r16-n20-s0-k8/shard-000002.tar": "37b6cd58c5209bb4cf8b71078ecd18ca61ab491bbc5929f7c7a14930e27a9f9d",
}


def test_the_shapes_family_is_the_set_it_was(tmp_path):
    for spec, expected in (
        (SyntheticSet(4, 16, 0, shapes=SOLID), SHAPES_PNG_16),
        (SyntheticSet(3, 64, 0), SHAPES_PNG_64),
    ):
        assert [sha(s["png"]) for s in synthetic_samples(spec)] == expected
    ensure_synthetic_shards(str(tmp_path), SyntheticSet(20, 16, 0, 8, family="shapes"))
    files = {os.path.relpath(p, tmp_path): sha(Path(p).read_bytes()) for p in glob.glob(f"{tmp_path}/*/*")}
    assert files == SHAPES_FILES


def test_the_demo_prompts_are_captions_of_plain_backgrounds(drawn):
    family, d = drawn
    counts = {p: sum(m["caption"] == p for m in d.metas) for p in PROMPTS}
    assert min(counts.values()) >= 40, (family, counts)
    for m in d.metas:
        if m["caption"] in PROMPTS:
            assert m["shape"] is None and m["caption"].endswith(f"{m['background']} background")


def test_brightness_spans_black_to_white(drawn):
    family, d = drawn
    brightness = np.array([m["brightness"] for m in d.metas])
    assert 0.4 <= brightness.std() <= 0.65, family
    assert brightness.min() < -0.9 and brightness.max() > 0.9


def test_plain_black_and_white_stay_black_and_white(drawn):
    family, d = drawn
    black = np.array([image.mean() for image in d.plain["black"]])
    white = np.array([image.mean() for image in d.plain["white"]])
    # scenes: black lifted by S_EXTREME (t + 1) <= 2 S_EXTREME of [0, 1] per pixel, less than that on average
    assert np.all(black >= -1) and np.all(black < -1 + 4 * S_EXTREME) and np.all(black < -0.9)
    assert np.all(white <= 1) and np.all(white > 1 - 4 * S_EXTREME) and np.all(white > 0.9)
    if family == "shapes":
        assert np.all(black == -1) and np.all(white == 1)


def test_plain_backgrounds_are_flat_shapes_and_textured_scenes(drawn):
    family, d = drawn
    # each image's largest spatial std of one channel, and its largest range (a flat image: 0 in every channel)
    stds = {c: np.array([image.std(axis=(0, 1)).max() for image in images]) for c, images in d.plain.items()}
    ranges = {
        c: np.array([np.ptp(image, axis=(0, 1)).max() for image in images]) for c, images in d.plain.items()
    }
    for colour, std in stds.items():
        if family == "shapes":
            assert np.all(ranges[colour] == 0), colour
        else:  # black and white vary by S_EXTREME, the rest by more (about 0.1 of [-1, 1] for gray)
            assert np.all(std > 0.01), (colour, std.min())
    if family == "scenes":
        assert np.median(stds["gray"]) > 2 * np.median(stds["black"])


def test_shade_closed_forms():
    t = np.linspace(-1, 1, 11)[None, :]
    np.testing.assert_allclose(shade((0, 0, 0), t)[0, :, 0], S_EXTREME * (t[0] + 1))
    np.testing.assert_allclose(shade((255, 255, 255), t)[0, :, 0], 1 + S_EXTREME * (t[0] - 1))
    gray = shade((128, 128, 128), t)[
        0, :, 0
    ]  # m = 2 * 128 / 255 - 1, s = S_EXTREME + (S_MID - S_EXTREME)(1 - m)
    m = 2 * 128 / 255 - 1
    np.testing.assert_allclose(gray, 128 / 255 + (S_EXTREME + (S_MID - S_EXTREME) * (1 - m)) * (t[0] - m))
    grid = (np.arange(16)[None, :] + 0.5, np.arange(12)[:, None] + 0.5)
    field = texture(random.Random(0), grid)
    assert field.shape == (12, 16) and field.min() == -1 and field.max() == pytest.approx(1)


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_scenes_are_deterministic_at_each_size(resolution):
    spec = SyntheticSet(24, resolution, 3, family="scenes")
    first, again = list(synthetic_samples(spec)), list(synthetic_samples(spec))
    assert first == again
    other = SyntheticSet(24, resolution, 4, family="scenes")
    assert [s["png"] for s in first] != [s["png"] for s in synthetic_samples(other)]
    for sample in first:
        meta = json.loads(sample["json"])
        image = pixels(sample)
        assert image.shape == (resolution, resolution, 3)
        assert abs(image.mean() - meta["brightness"]) < 1e-4  # the json's brightness is the image mean


def test_scenes_keep_the_json_and_the_filters():
    every = [json.loads(s["json"]) for s in synthetic_samples(SyntheticSet(700, 16, 0))]
    scenes = [json.loads(s["json"]) for s in synthetic_samples(SyntheticSet(700, 16, 0, family="scenes"))]
    assert [sorted(m) for m in every] == [sorted(m) for m in scenes]
    rejected = {m["key"] for m in every if not passes_sd2_filters(m)}
    assert rejected == {m["key"] for m in scenes if not passes_sd2_filters(m)}  # reasons come from the seed
    assert len(rejected) == 7 * 14  # each of 7 reasons: round(2% of 700) samples
    assert {m["shape"] for m in scenes} == {None, *ELEMENTS}
    sun = [
        json.loads(s["json"])
        for s in synthetic_samples(SyntheticSet(80, 16, 0, family="scenes", elements=["sun"]))
    ]
    assert {m["shape"] for m in sun} == {None, "sun"}
    assert all(m["caption"].endswith(" sky") for m in sun if m["shape"] and m["caption"])


def test_scenes_at_other_aspects():
    metas = [
        json.loads(s["json"])
        for s in synthetic_samples(SyntheticSet(40, 32, 0, aspects=(0.5, 2), family="scenes"))
    ]
    assert {(m["width"], m["height"]) for m in metas} == {(23, 45), (45, 23)}


def test_family_settings_are_checked_and_name_the_folder(tmp_path):
    with pytest.raises(ValueError, match="family must be one of"):
        SyntheticSet(family="clouds")
    with pytest.raises(ValueError, match="elements must be a non-empty subset"):
        SyntheticSet(family="scenes", elements=("tree",))
    with pytest.raises(ValueError, match="shapes must be a non-empty subset"):
        SyntheticSet(family="scenes", shapes=())
    urls = ensure_synthetic_shards(str(tmp_path), SyntheticSet(20, 16, 0, 8, shapes=SOLID, family="scenes"))
    assert "synthetic-r16-n20-s0-k8-scenes/" in urls  # scenes do not read `shapes`: not in the name
    with open(tmp_path / "synthetic-r16-n20-s0-k8-scenes" / "COMPLETE") as marker:
        assert json.load(marker) == {
            "num_samples": 20, "resolution": 16, "seed": 0, "family": "scenes", "elements": list(ELEMENTS)
        }  # fmt: skip
    subset = SyntheticSet(20, 16, 0, 8, family="scenes", elements=["blob", "sun"])
    assert "synthetic-r16-n20-s0-k8-scenes-blob-sun/" in ensure_synthetic_shards(str(tmp_path), subset)


def test_the_demo_config_composes_with_scenes(tmp_path):
    cfg = compose(
        "train",
        [
            "experiment=demo_base",
            f"data.root={tmp_path}",
            "data.synthetic.family=scenes",
            "data.synthetic.num_samples=64",
            "data.synthetic.samples_per_shard=32",
            "data.val_synthetic.num_samples=16",
            "data.val_synthetic.samples_per_shard=16",
        ],
    )
    datamodule = instantiate(cfg.data, resolution=cfg.model.resolution, batch_size=8, seed=0)
    assert datamodule.synthetic.family == datamodule.val_synthetic.family == "scenes"  # held out: same family
    datamodule.prepare_data()
    folder = tmp_path / "synthetic-r16-n64-s0-k32-scenes"
    assert sorted(os.listdir(folder)) == ["COMPLETE", "shard-000000.tar", "shard-000001.tar"]
    assert (tmp_path / "synthetic-r16-n16-s1-k16-scenes" / "COMPLETE").exists()
    metas = dict(read_keys_and_meta(str(folder / "shard-000000.tar")))
    assert {m["shape"] for m in metas.values()} <= {None, *ELEMENTS}
    stream = ShardStream(
        parse_sources(datamodule.urls),
        batch_size=8,
        resolution=16,
        filters=LaionFilter.off(),
        shuffle_buffer=0,
    )
    batch = next(iter(stream))
    assert batch["image"].shape == (8, 3, 16, 16) and len(batch["caption"]) == 8
