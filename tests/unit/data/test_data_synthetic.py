"""The synthetic set (deterministic, brightness spread, captions that name it) and making shards from files."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from shard_factory import read_keys_and_meta

from zsnr.data import LaionFilter, ShardStream, ensure_synthetic_shards, make_synthetic_shards, parse_sources
from zsnr.data.manifest import make_shards
from zsnr.data.synthetic import SyntheticSet, brightness_class, synthetic_samples

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_same_seed_same_bytes_other_seed_other_data():
    a, b = list(synthetic_samples(SyntheticSet(30, 32, 5))), list(synthetic_samples(SyntheticSet(30, 32, 5)))
    assert a == b
    assert [s["png"] for s in a] != [s["png"] for s in synthetic_samples(SyntheticSet(30, 32, 6))]


def test_a_subset_of_shapes(tmp_path):
    solid = [
        json.loads(s["json"])
        for s in synthetic_samples(SyntheticSet(200, 16, 0, shapes=("circle", "square", "triangle")))
    ]
    assert {m["shape"] for m in solid} == {None, "circle", "square", "triangle"}
    assert not any("stripes" in m["caption"] or "checkerboard" in m["caption"] for m in solid)
    every = [json.loads(s["json"]) for s in synthetic_samples(SyntheticSet(200, 16, 0))]
    assert {m["shape"] for m in every} == {None, "circle", "square", "triangle", "stripes", "checkerboard"}
    default = ensure_synthetic_shards(str(tmp_path), SyntheticSet(20, 16, 0, 8))
    assert "synthetic-r16-n20-s0-k8/" in default  # the default set keeps its folder
    subset = ensure_synthetic_shards(str(tmp_path), SyntheticSet(20, 16, 0, 8, shapes=["circle", "square"]))
    assert "synthetic-r16-n20-s0-k8-circle-square/" in subset
    with pytest.raises(ValueError, match="non-empty subset"):
        next(synthetic_samples(SyntheticSet(2, 16, 0, shapes=("hexagon",))))


def test_other_aspect_ratios_keep_about_the_squares_pixels(tmp_path):
    metas = [json.loads(s["json"]) for s in synthetic_samples(SyntheticSet(60, 32, 0, aspects=(0.5, 2)))]
    sizes = {(m["width"], m["height"]) for m in metas}
    assert sizes == {(23, 45), (45, 23)}  # round(32 / sqrt 2), round(32 sqrt 2): 1035 pixels against 1024
    urls = ensure_synthetic_shards(str(tmp_path), SyntheticSet(20, 16, 0, 8, aspects=[2, 0.5]))
    assert "synthetic-r16-n20-s0-k8-a2-0.5/" in urls
    with pytest.raises(ValueError, match=r"aspects \(width / height\) must lie in \[0.1, 10\]"):
        SyntheticSet(aspects=(0.0,))


def test_brightness_spans_black_to_white_and_captions_say_so(six_shards):
    metas = list(six_shards.meta.values())
    brightness = np.array([m["brightness"] for m in metas])
    assert 0.4 < brightness.std() < 0.65 and brightness.min() == -1.0 and brightness.max() == 1.0
    assert {m["brightness_class"] for m in metas} == {"dark", "mid", "bright"}
    for m in metas:
        assert m["brightness_class"] == brightness_class(m["brightness"])
        if m["caption"]:
            assert m["caption"].endswith(f"{m['background']} background") or "checkerboard" in m["caption"]
    plain = [m for m in metas if m["shape"] is None and m["background"] in ("black", "white")]
    assert plain and all(m["brightness"] == (-1.0 if m["background"] == "black" else 1.0) for m in plain)
    captions = {m["caption"] for m in metas}
    assert {"a white background", "a solid black background"} & captions


def test_stored_brightness_is_the_image_mean(tmp_path):
    urls = make_synthetic_shards(str(tmp_path), SyntheticSet(12, 16, 0, 12))
    for sample in ShardStream(
        parse_sources(urls), batch_size=12, resolution=16, filters=LaionFilter.off(), shuffle_buffer=0
    ):
        for key, image in zip(sample["key"], sample["image"], strict=True):
            meta = dict(read_keys_and_meta(urls))[key]
            assert abs(image.float().mean().item() / 127.5 - 1 - meta["brightness"]) < 1e-4


def test_ensure_is_idempotent_and_cheap(tmp_path):
    first = ensure_synthetic_shards(str(tmp_path), SyntheticSet(20, 16, 0, 8))
    shard = first.replace("{000000..000002}", "000000")
    stamp = os.path.getmtime(shard)
    start = time.perf_counter()
    assert ensure_synthetic_shards(str(tmp_path), SyntheticSet(20, 16, 0, 8)) == first
    assert time.perf_counter() - start < 0.05 and os.path.getmtime(shard) == stamp
    assert len(parse_sources(first)[0].urls) == 3 and all(
        os.path.exists(u) for u in parse_sources(first)[0].urls
    )
    assert (
        ensure_synthetic_shards(str(tmp_path), SyntheticSet(20, 16, 1, 8)) != first
    )  # other parameters, other folder


def write_images(folder) -> list[str]:
    os.makedirs(folder / "sub")
    paths = []
    for i, (size, ext) in enumerate([((600, 520), "jpg"), ((300, 700), "png"), ((520, 530), "webp")]):
        path = folder / ("sub" if i == 2 else "") / f"img.{i}.{ext}"
        Image.new("RGB", size, (i * 60, 0, 0)).save(path)
        path.with_suffix(".txt").write_text(f"caption {i}", encoding="utf-8")
        paths.append(str(path))
    (folder / "img.1.json").write_text(json.dumps({"punsafe": 0.5}))
    return paths


def test_make_shards_from_a_folder_and_from_a_csv(tmp_path):
    write_images(tmp_path / "imgs")
    urls = make_shards(str(tmp_path / "imgs"), str(tmp_path / "out"), samples_per_shard=2)
    samples = [s for u in parse_sources(urls)[0].urls for s in read_keys_and_meta(u)]
    assert [(m["caption"], m["original_width"], m["original_height"]) for _, m in samples] == [
        ("caption 0", 600, 520),
        ("caption 1", 300, 700),
        ("caption 2", 520, 530),
    ]
    assert samples[1][1]["punsafe"] == 0.5
    with open(tmp_path / "m.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerows(
            [
                ["path", "caption", "punsafe", "aesthetic"],
                ["imgs/img.0.jpg", "a", "0.01", "6"],
                ["imgs/sub/img.2.webp", "b", "", "3.5"],
            ]
        )
    urls = make_shards(str(tmp_path / "m.csv"), str(tmp_path / "out2"))
    batches = list(
        ShardStream(
            parse_sources(urls),
            batch_size=4,
            resolution=32,
            filters=LaionFilter(min_aesthetic=4.0, max_pwatermark=None),
        )
    )
    assert [b["caption"] for b in batches] == [["a"]]  # b: aesthetic 3.5 and no punsafe
    meta = read_keys_and_meta(urls)
    assert meta[0][1]["aesthetic"] == 6 and "punsafe" not in meta[1][1]


def test_make_shards_command_line(tmp_path):
    write_images(tmp_path / "imgs")
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch", "make_shards.py"), f"input={tmp_path / 'imgs'}", f"out={tmp_path / 'o'}", "hydra.run.dir=" + str(tmp_path / "h")],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    )  # fmt: skip
    assert out.stdout.strip() == str(tmp_path / "o" / "shard-000000.tar")
