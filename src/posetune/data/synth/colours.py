"""Colour helpers and palettes: skin, hair and clothing picked to stand out from the background."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np

Colour = tuple[int, int, int]

_SKIN = np.array([[255, 224, 196], [241, 194, 125], [224, 172, 105], [198, 134, 66],
                  [141, 85, 36], [96, 60, 32], [234, 192, 160], [170, 110, 70]], np.float32)
_HAIR = [(20, 15, 10), (55, 38, 24), (110, 75, 40), (205, 170, 110), (150, 150, 150), (95, 35, 20)]


def rgb(c: Sequence[float]) -> Colour:
    return int(min(max(c[0], 0), 255)), int(min(max(c[1], 0), 255)), int(min(max(c[2], 0), 255))


def hsv(h: float, s: float, v: float) -> Colour:
    return rgb([x * 255 for x in colorsys.hsv_to_rgb(h, s, v)])


def luminance(c: Sequence[float]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def random_colour(rng: np.random.Generator, vmin: float = 0.1, vmax: float = 0.97) -> Colour:
    sat = rng.uniform(0.0, 0.12) if rng.random() < 0.25 else rng.uniform(0.25, 0.9)  # 1 in 4 neutral
    return hsv(rng.random(), sat, rng.uniform(vmin, vmax))


def contrasting(rng: np.random.Generator, bg_lum: float, margin: float = 60.0) -> Colour:
    """A clothing colour whose luminance differs from the background's by ``margin``."""
    c = random_colour(rng)
    for _ in range(12):
        if abs(luminance(c) - bg_lum) >= margin:
            return c
        c = random_colour(rng)
    return hsv(rng.random(), rng.uniform(0.2, 0.8), 0.12 if bg_lum > 128 else 0.95)


def darken(c: Sequence[float], f: float) -> Colour:
    return rgb([x * f for x in c])


def lighten(c: Sequence[float], f: float) -> Colour:
    return rgb([x + (255 - x) * f for x in c])


def outfit_colours(rng: np.random.Generator, bg_lum: float) -> dict[str, Colour]:
    """Colour of each body-part key: skin, clothes (contrasting with ``bg_lum``), sleeves, legwear, hair."""
    skin = rgb(_SKIN[int(rng.integers(len(_SKIN)))] + rng.uniform(-12, 12, 3))
    top_c, bottom_c = contrasting(rng, bg_lum), contrasting(rng, bg_lum)
    sleeves, legwear = rng.random(), rng.random()
    return {
        "skin": skin, "top": top_c, "bottom": bottom_c,
        "upper_arm": top_c if sleeves < 0.65 else skin,
        "forearm": top_c if sleeves < 0.25 else skin,
        "thigh": bottom_c if legwear < 0.9 else skin,
        "shin": bottom_c if legwear < 0.65 else skin,
        "foot": skin if rng.random() < 0.85 else random_colour(rng),
        "hair": _HAIR[int(rng.integers(len(_HAIR)))],
    }
