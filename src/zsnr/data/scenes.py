"""The synthetic set's "scenes" family: soft, lit, textured images in place of flat shapes and clean edges.

Every image has a low-frequency texture: a few broad Gaussian blobs of light and shade, a vertical lighting
gradient and a vignette, rescaled to t in [-1, 1] and applied to a colour c (RGB in [0, 1], mean channel L) as
    c + s (t - (2 L - 1)),   s = S_EXTREME + (S_MID - S_EXTREME) (1 - |2 L - 1|),
so a mid colour varies by about +-S_MID, black only lightens and white only darkens, by at most
2 S_EXTREME (a textured black image's mean brightness lies in [-1, -1 + 4 S_EXTREME) in [-1, 1] units).
On it, one element (ELEMENTS) in a colour that stands out from the background, with soft edges:
    blob     a blurred blob, its outline wobbling  "a soft red blob on a black background"
    horizon  hills under a sky of another colour   "green hills under a blue sky" (background: the sky)
    sun      a glowing disc                        "a yellow sun in a navy sky"
or nothing (PLAIN_FRACTION of the images): "a black background", "a solid white background", as in "shapes".
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from zsnr.data.palette import COLORS, article, contrasting_color, pick_background, plain_caption

ELEMENTS = ("blob", "horizon", "sun")
PLAIN_FRACTION = 0.3  # more than the shapes' 0.25: each plain caption of the demo's prompt sets >= 40 in 4096
S_MID, S_EXTREME = 0.1, 0.025  # texture amplitude (of [0, 1]) on a mid-gray and on a black or white colour

Grid = tuple[np.ndarray, np.ndarray]  # pixel-centre x [1, W] and y [H, 1], in pixels


def texture(rng: random.Random, grid: Grid) -> np.ndarray:
    """Smooth light and shade [H, W], rescaled to span exactly [-1, 1]."""
    x, y = grid
    width, height = x.shape[1], y.shape[0]
    side = min(width, height)
    field = rng.uniform(-1, 1) * (2 * y / height - 1)  # light from above or below
    for _ in range(rng.randint(2, 4)):
        cx, cy, sigma = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.2, 0.5) * side
        field = field + rng.uniform(-1, 1) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))
    field = field - rng.uniform(0, 0.8) * ((x - width / 2) ** 2 + (y - height / 2) ** 2) / (side / 2) ** 2
    low, span = field.min(), np.ptp(field)
    return 2 * (field - low) / span - 1 if span > 0 else np.zeros_like(field)


def shade(rgb: tuple[int, int, int], t: np.ndarray) -> np.ndarray:
    """The colour under the texture t [H, W]: RGB in [0, 1], [H, W, 3] (equation in the module docstring)."""
    c = np.asarray(rgb, dtype=np.float64) / 255
    m = 2 * c.mean() - 1
    s = S_EXTREME + (S_MID - S_EXTREME) * (1 - abs(m))
    return np.clip(c + s * (t[..., None] - m), 0.0, 1.0)


def _soft_step(signed_distance: np.ndarray, width: float) -> np.ndarray:
    """1 inside (distance > 0), 0 outside, a logistic edge of scale `width` pixels."""
    return 1 / (1 + np.exp(-signed_distance / width))


def blob(rng: random.Random, grid: Grid) -> np.ndarray:
    """Coverage [H, W] of a blob 0.36-0.6 of the short side across, radius wobbling with the angle."""
    x, y = grid
    width, height = x.shape[1], y.shape[0]
    side = min(width, height)
    radius = rng.uniform(0.18, 0.3) * side
    cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
    angle = np.arctan2(y - cy, x - cx)
    wobble = 1 + sum(rng.uniform(0, 0.12) * np.sin(k * angle + rng.uniform(0, 2 * math.pi)) for k in (2, 3))
    distance = np.hypot(x - cx, y - cy)
    return _soft_step(radius * wobble - distance, rng.uniform(0.025, 0.06) * side)


def horizon(rng: random.Random, grid: Grid) -> np.ndarray:
    """Coverage [H, W] of the ground: below a hilly horizon at 0.45-0.7 of the height."""
    x, y = grid
    width, height = x.shape[1], y.shape[0]
    line = rng.uniform(0.45, 0.7) * height
    for period, amplitude in ((rng.uniform(0.6, 1.2), 0.06), (rng.uniform(0.3, 0.5), 0.025)):
        hill, phase = rng.uniform(0, amplitude) * height, rng.uniform(0, 2 * math.pi)
        line = line + hill * np.sin(2 * math.pi * x / (period * width) + phase)
    return _soft_step(y - line, max(0.5, 0.03 * height))


def sun(rng: random.Random, grid: Grid) -> np.ndarray:
    """Coverage [H, W] of a disc 0.12-0.2 of the short side in radius and its glow (half coverage at most)."""
    x, y = grid
    width, height = x.shape[1], y.shape[0]
    side = min(width, height)
    radius = rng.uniform(0.12, 0.2) * side
    cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.2, 0.6) * height
    distance = np.hypot(x - cx, y - cy)
    glow = 0.5 * np.exp(-(((distance - radius) / radius).clip(min=0) ** 2))
    return np.maximum(_soft_step(radius - distance, max(0.5, 0.03 * side)), glow)


DRAW: dict[str, Callable[[random.Random, Grid], np.ndarray]] = {"blob": blob, "horizon": horizon, "sun": sun}


def caption(element: str, color: str, background: str) -> str:
    if element == "blob":
        return f"a soft {color} blob on {article(background)} background"
    if element == "horizon":
        return f"{color} hills under {article(background)} sky"
    return f"{article(color)} sun in {article(background)} sky"


def render_scene(
    rng: random.Random, resolution: int | tuple[int, int], elements: tuple[str, ...] = ELEMENTS
) -> tuple[Image.Image, str, dict[str, Any]]:
    """One scene of resolution^2 (or (width, height)) pixels, its caption and what it shows: a textured plain
    background, or one of `elements` on one ("shape" names the element)."""
    width, height = (resolution, resolution) if isinstance(resolution, int) else resolution
    grid = (
        np.arange(width, dtype=np.float64)[None, :] + 0.5,
        np.arange(height, dtype=np.float64)[:, None] + 0.5,
    )
    background = pick_background(rng)
    pixels = shade(COLORS[background], texture(rng, grid))
    if rng.random() < PLAIN_FRACTION:
        what, text = {"background": background, "shape": None, "color": None}, plain_caption(rng, background)
    else:
        color, element = contrasting_color(rng, background), rng.choice(elements)
        cover = DRAW[element](rng, grid)[..., None]
        pixels = pixels * (1 - cover) + shade(COLORS[color], texture(rng, grid)) * cover
        what, text = (
            {"background": background, "shape": element, "color": color},
            caption(element, color, background),
        )
    return Image.fromarray(np.round(pixels * 255).astype(np.uint8), "RGB"), text, what
