"""An unseen domain for robustness tests (`data synth --shift`): the same figures, in a world training never saw.

Training renders gradients, textures, rooms and photos behind clothing of random hue (saturation <= 0.9) under
near-white light (white balance 0.92-1.08). The shifted render keeps every figure, camera and light direction
(it draws from a jumped copy of the image's random stream, so the main stream, and so the pose and its mask,
is unchanged) and replaces what is around it: bold geometric patterns (stripes, checks) behind, fully
saturated clothing, and a strong coloured light cast.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image

from posetune.data.synth.colours import Colour, contrasting, rgb


def side_stream(rng: np.random.Generator) -> np.random.Generator:
    """A generator independent of ``rng`` that leaves ``rng``'s own stream untouched."""
    return np.random.Generator(rng.bit_generator.jumped())


def _saturated(rng: np.random.Generator, value: float = 1.0) -> Colour:
    return rgb([x * 255 for x in colorsys.hsv_to_rgb(rng.random(), 1.0, value)])


def pattern_background(rng: np.random.Generator, size: int) -> Image.Image:
    """Stripes at an angle or a checkerboard, in two saturated colours."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    period = rng.uniform(0.05, 0.2)
    if rng.random() < 0.5:
        angle = rng.uniform(0, np.pi)
        on = (np.floor((xx * np.cos(angle) + yy * np.sin(angle)) / period) % 2).astype(bool)
    else:
        on = ((np.floor(xx / period) + np.floor(yy / period)) % 2).astype(bool)
    a, b = np.array(_saturated(rng, rng.uniform(0.5, 1.0))), np.array(_saturated(rng, rng.uniform(0.5, 1.0)))
    return Image.fromarray(np.where(on[..., None], a, b).astype(np.uint8))


def saturated_outfit(colours: dict[str, Colour], rng: np.random.Generator, bg_lum: float) -> dict[str, Colour]:
    """``colours`` with the clothes (wherever they were worn) replaced by fully saturated ones."""
    old_top, old_bottom = colours["top"], colours["bottom"]
    top, bottom = _saturated(rng), _saturated(rng, rng.uniform(0.6, 1.0))
    if abs(0.299 * top[0] + 0.587 * top[1] + 0.114 * top[2] - bg_lum) < 40:
        top = contrasting(rng, bg_lum)  # a figure lost in its background tests nothing
    swap = {old_top: top, old_bottom: bottom}
    return {part: swap.get(c, c) if part not in ("skin", "hair") else c for part, c in colours.items()}


def colour_cast(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A strong coloured light: one channel dimmed to 55-75 %, a brightness ramp across the picture."""
    arr = np.asarray(img, np.float32)
    gain = np.ones(3, np.float32)
    gain[int(rng.integers(3))] = rng.uniform(0.55, 0.75)
    ramp = np.linspace(rng.uniform(0.7, 1.0), rng.uniform(1.0, 1.3), arr.shape[1], dtype=np.float32)
    return Image.fromarray(np.clip(arr * gain * ramp[None, :, None], 0, 255).astype(np.uint8))
