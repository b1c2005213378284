"""A synthetic LAION-like data set: shapes and textures, or soft textured scenes, on backgrounds from black to
white.

What it is for: the embedded default, the tests and the brightness demo. The paper's claim is that a model
trained with the fixes can follow "a solid black background" / "a white background"; so backgrounds span the
whole brightness range (image mean brightness std about 0.5 in [-1, 1] units) and captions name them.
Each sample's json has LAION's fields, set so that a few samples fail each filter of LaionFilter's defaults,
plus "brightness" (image mean in [-1, 1]) and "brightness_class" (dark < -1/3 <= mid <= 1/3 < bright).
Deterministic from the seed (PNG members, fixed tar mtime). Two families of images (FAMILIES):
- "shapes" (the default): flat colours and clean edges; `shapes` picks a subset of SHAPES (the demo draws
  solid shapes only).
- "scenes" (zsnr.data.scenes): low-frequency light and shade on every background, soft-edged blobs, hills
  under a sky, suns; `elements` picks a subset of zsnr.data.scenes.ELEMENTS. Its plain backgrounds keep the
  same captions ("a solid black background") but are textured: black only lightens, white only darkens, each
  by at most 5% of the range, so a black image's mean brightness stays below -0.9.
Each family reads its own subset (`shapes` or `elements`); both are checked whichever family is drawn.
`aspects` makes images of other width / height ratios, at about the square's pixel count (to try
aspect-ratio buckets, zsnr.data.buckets).
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from zsnr.data.palette import COLORS, article, contrasting_color, pick_background, plain_caption
from zsnr.data.scenes import ELEMENTS, render_scene
from zsnr.data.shards import brace_pattern, write_shards

SHAPES = ("circle", "square", "triangle", "stripes", "checkerboard")
FAMILIES = ("shapes", "scenes")
# Each reason makes a sample fail one filter of LaionFilter's defaults ("missing_punsafe" tests on_missing).
REJECT_REASONS = ("width", "height", "punsafe", "pwatermark", "aesthetic", "caption", "missing_punsafe")
REJECT_FRACTION = 0.02  # per reason


def brightness_class(brightness: float) -> str:
    return "dark" if brightness < -1 / 3 else "bright" if brightness > 1 / 3 else "mid"


def render(
    rng: random.Random, resolution: int | tuple[int, int], shapes: tuple[str, ...] = SHAPES
) -> tuple[Image.Image, str, dict[str, Any]]:
    """One image of resolution^2 (or (width, height)) pixels, its caption and what it shows (a plain
    background, or one of `shapes` on one)."""
    width, height = (resolution, resolution) if isinstance(resolution, int) else resolution
    background = pick_background(rng)
    image = Image.new("RGB", (width, height), COLORS[background])
    if rng.random() < 0.25:  # plain background
        return image, plain_caption(rng, background), {"background": background, "shape": None, "color": None}
    color = contrasting_color(rng, background)
    shape = rng.choice(shapes)
    draw = ImageDraw.Draw(image)
    fg, r = COLORS[color], min(width, height)
    if shape in ("circle", "square", "triangle"):
        size = rng.uniform(0.25, 0.5) * r
        x, y = rng.uniform(0, width - size), rng.uniform(0, height - size)
        box = (x, y, x + size, y + size)
        if shape == "circle":
            draw.ellipse(box, fill=fg)
        elif shape == "square":
            draw.rectangle(box, fill=fg)
        else:
            draw.polygon([(x + size / 2, y), (x, y + size), (x + size, y + size)], fill=fg)
        caption = f"{article(color)} {shape} on {article(background)} background"
    else:
        period = max(2, int(r / rng.choice((4, 6, 8))))
        for i in range(0, width, period):
            for j in range(0, height, period) if shape == "checkerboard" else (0,):
                if shape == "stripes":
                    draw.rectangle((i, 0, i + period // 2 - 1, height), fill=fg)
                elif (i // period + j // period) % 2 == 0:
                    draw.rectangle((i, j, i + period - 1, j + period - 1), fill=fg)
        caption = (
            f"{color} stripes on {article(background)} background"
            if shape == "stripes"
            else f"{article(color)} and {background} checkerboard"
        )
    return image, caption, {"background": background, "shape": shape, "color": color}


def _reasons(num_samples: int, rng: random.Random) -> list[str | None]:
    per = max(1, round(REJECT_FRACTION * num_samples)) if num_samples >= 2 * len(REJECT_REASONS) else 0
    reasons: list[str | None] = [r for r in REJECT_REASONS for _ in range(per)]
    reasons += [None] * (num_samples - len(reasons))
    rng.shuffle(reasons)
    return reasons


def _metadata(rng: random.Random, reason: str | None) -> dict[str, Any]:
    """LAION fields that pass the default filters, except the one named by `reason`."""
    meta = {
        "original_width": rng.randint(512, 2048),
        "original_height": rng.randint(512, 2048),
        "punsafe": round(rng.uniform(0.0, 0.09), 4),
        "pwatermark": round(rng.uniform(0.0, 0.45), 4),
        "aesthetic": round(rng.uniform(4.5, 7.5), 3),
    }
    if reason == "width":
        meta["original_width"] = rng.randint(64, 511)
    elif reason == "height":
        meta["original_height"] = rng.randint(64, 511)
    elif reason == "punsafe":
        meta["punsafe"] = round(rng.uniform(0.1, 1.0), 4)
    elif reason == "pwatermark":
        meta["pwatermark"] = round(rng.uniform(0.5, 1.0), 4)
    elif reason == "aesthetic":
        meta["aesthetic"] = round(rng.uniform(2.0, 4.49), 3)
    elif reason == "missing_punsafe":
        del meta["punsafe"]
    return meta


def _check_subset(key: str, names: tuple[str, ...], known: tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(names)
    unknown = [s for s in names if s not in known]
    if not names or unknown:
        raise ValueError(f"synthetic {key} must be a non-empty subset of {known}, got {list(names)}")
    return names


@dataclass(frozen=True)
class SyntheticSet:
    """Everything one synthetic set is made from: its samples, its shards and its folder name follow from it.

    The keys of data.synthetic / data.val_synthetic (WebDataModule adds the run's resolution). Checked when
    made, so a bad setting fails before anything is generated.
    """

    num_samples: int = 2048
    resolution: int = 64
    seed: int = 0
    samples_per_shard: int = 256
    shapes: tuple[str, ...] = SHAPES
    aspects: tuple[float, ...] = (1.0,)  # width / height, one drawn per image, about resolution^2 pixels each
    family: str = "shapes"  # one of FAMILIES
    elements: tuple[str, ...] = ELEMENTS  # what family "scenes" draws ("shapes" draws `shapes`)

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.resolution < 8 or self.samples_per_shard < 1:
            raise ValueError(
                f"need num_samples >= 1, resolution >= 8, samples_per_shard >= 1; got {self.num_samples}, "
                f"{self.resolution}, {self.samples_per_shard}"
            )
        if self.family not in FAMILIES:
            raise ValueError(f"synthetic family must be one of {FAMILIES}, got {self.family!r}")
        object.__setattr__(
            self, "shapes", _check_subset("shapes", self.shapes, SHAPES)
        )  # a list becomes a tuple
        object.__setattr__(self, "elements", _check_subset("elements", self.elements, ELEMENTS))
        aspects = tuple(float(a) for a in self.aspects)
        if not aspects or not all(0.1 <= a <= 10 for a in aspects):
            raise ValueError(f"synthetic aspects (width / height) must lie in [0.1, 10]; got {list(aspects)}")
        object.__setattr__(self, "aspects", aspects)

    def size(self, index: int) -> tuple[int, int]:
        """(width, height) of image `index`: the square, or an aspect drawn from its own generator (so the
        square sets' images do not change)."""
        if self.aspects == (1.0,):
            return self.resolution, self.resolution
        aspect = random.Random(f"zsnr-synthetic-aspect/{self.seed}/{index}").choice(self.aspects)
        return round(self.resolution * math.sqrt(aspect)), round(self.resolution / math.sqrt(aspect))


def synthetic_samples(spec: SyntheticSet) -> Iterator[dict[str, Any]]:
    reasons = _reasons(spec.num_samples, random.Random(f"zsnr-synthetic-reasons/{spec.seed}"))
    for i in range(spec.num_samples):
        rng = random.Random(f"zsnr-synthetic/{spec.seed}/{i}")
        width, height = spec.size(i)
        if spec.family == "shapes":
            image, caption, what = render(rng, (width, height), spec.shapes)
        else:
            image, caption, what = render_scene(rng, (width, height), spec.elements)
        array = np.asarray(image, dtype=np.float64)
        brightness = round(float(array.mean() / 127.5 - 1.0), 5)
        meta = _metadata(rng, reasons[i])
        if reasons[i] == "caption":
            caption = ""
        meta.update(caption=caption, width=width, height=height, brightness=brightness)
        meta.update(brightness_class=brightness_class(brightness), **what)
        png = io.BytesIO()
        image.save(png, format="PNG")
        key = f"{i:08d}"
        yield {
            "__key__": key,
            "png": png.getvalue(),
            "txt": caption,
            "json": json.dumps({**meta, "key": key}),
        }


def make_synthetic_shards(out_dir: str, spec: SyntheticSet) -> str:
    """Write the synthetic set to out_dir/shard-NNNNNN.tar; returns the brace URL pattern of the shards."""
    paths = write_shards(
        synthetic_samples(spec),
        os.path.join(out_dir, "shard-%06d.tar"),
        maxcount=spec.samples_per_shard,
        total=spec.num_samples,
        desc="synthetic shards",
        mtime=0.0,
    )
    return brace_pattern(paths)


def synthetic_dir(root: str, spec: SyntheticSet) -> str:
    name = f"synthetic-r{spec.resolution}-n{spec.num_samples}-s{spec.seed}-k{spec.samples_per_shard}"
    if spec.family != "shapes":
        name += f"-{spec.family}"
    if spec.family == "shapes" and spec.shapes != SHAPES:
        name += "-" + "-".join(spec.shapes)
    if spec.family == "scenes" and spec.elements != ELEMENTS:
        name += "-" + "-".join(spec.elements)
    if spec.aspects != (1.0,):
        name += "-a" + "-".join(f"{a:g}" for a in spec.aspects)
    return os.path.join(root, name)


def _marker(spec: SyntheticSet) -> dict[str, Any]:
    """What the COMPLETE file records: the settings that made the set (the default family's keys as before)."""
    drawn = (
        {"shapes": list(spec.shapes)}
        if spec.family == "shapes"
        else {"family": spec.family, "elements": list(spec.elements)}
    )
    return (
        {"num_samples": spec.num_samples, "resolution": spec.resolution, "seed": spec.seed}
        | drawn
        | ({} if spec.aspects == (1.0,) else {"aspects": list(spec.aspects)})
    )


def synthetic_url_pattern(root: str, spec: SyntheticSet) -> str:
    """Where ensure_synthetic_shards puts (or put) this set; pure, so every rank can compute it."""
    out = synthetic_dir(root, spec)
    shards = math.ceil(spec.num_samples / spec.samples_per_shard)
    return brace_pattern([os.path.join(out, f"shard-{i:06d}.tar") for i in range(shards)])


def ensure_synthetic_shards(root: str, spec: SyntheticSet) -> str:
    """make_synthetic_shards into a folder named by the set, unless it is already complete.

    Cheap when the shards exist (one stat of a marker file). Written to a temporary folder and renamed, so
    an interrupted run or a concurrent rank never sees half a set.
    """
    out = synthetic_dir(root, spec)
    pattern = synthetic_url_pattern(root, spec)
    if os.path.exists(os.path.join(out, "COMPLETE")):
        return pattern
    tmp = f"{out}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    make_synthetic_shards(tmp, spec)
    with open(os.path.join(tmp, "COMPLETE"), "w") as marker:
        json.dump(_marker(spec), marker)
    try:
        os.rename(tmp, out)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.exists(os.path.join(out, "COMPLETE")):
            raise
    return pattern
