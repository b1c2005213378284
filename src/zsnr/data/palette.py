"""The synthetic set's colours and the draws every family of it makes the same way (zsnr.data.synthetic):
a background weighted towards black and white, a caption for a plain one, a colour that stands out from it."""

from __future__ import annotations

import random

# name -> RGB. Backgrounds are weighted so that black and white, the paper's hard cases, are common.
COLORS = {
    "black": (0, 0, 0),
    "navy": (0, 0, 110),
    "maroon": (110, 0, 0),
    "dark green": (0, 90, 0),
    "dark gray": (64, 64, 64),
    "purple": (128, 0, 128),
    "red": (220, 20, 20),
    "blue": (30, 60, 230),
    "green": (30, 170, 30),
    "gray": (128, 128, 128),
    "orange": (255, 150, 0),
    "cyan": (0, 220, 230),
    "yellow": (250, 230, 30),
    "light gray": (200, 200, 200),
    "pink": (255, 190, 205),
    "beige": (240, 235, 215),
    "white": (255, 255, 255),
}
BACKGROUND_WEIGHTS = {"black": 3, "white": 3, "dark gray": 2, "light gray": 2, "navy": 1.5, "beige": 1.5}


def article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def luma(rgb: tuple[int, int, int]) -> float:
    return sum(rgb) / 3


def pick_background(rng: random.Random) -> str:
    names = list(COLORS)
    return rng.choices(names, weights=[BACKGROUND_WEIGHTS.get(n, 1.0) for n in names])[0]


def plain_caption(rng: random.Random, background: str) -> str:
    """ "a gray background"; black and white are "solid" half the time (the demo's prompts name both)."""
    solid = "solid " if background in ("black", "white") and rng.random() < 0.5 else ""
    return f"{article(solid + background)} background"


def contrasting_color(rng: random.Random, background: str) -> str:
    """A colour whose mean channel value differs from the background's by more than 60 of 255."""
    bg = luma(COLORS[background])
    return rng.choice([n for n in COLORS if abs(luma(COLORS[n]) - bg) > 60 and n != background])
