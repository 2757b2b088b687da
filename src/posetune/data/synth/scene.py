"""Everything around the figure: backgrounds (gradient, texture, room, photo), clutter, the mat,
and the camera's blur, exposure, vignette and noise."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from posetune.data.synth.colours import darken, random_colour
from posetune.data.synth.figure import ToCanvas, unit

_PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick", "grass", "gravel",
                "moon", "hubble_deep_field", "immunohistochemistry", "coins", "text", "page")


@lru_cache(maxsize=1)
def _photos() -> tuple[Image.Image, ...]:
    """scikit-image's bundled photos as RGB images (empty when scikit-image is missing)."""
    try:
        from skimage import data as skdata  # optional, and slow to import: only when needed
    except ImportError:
        return ()
    out = []
    for name in _PHOTO_NAMES:
        try:
            arr = np.asarray(getattr(skdata, name)())
        except Exception:  # a missing or unfetchable image: just use the others
            continue
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.dtype != np.uint8:
            arr = (255 * (arr.astype(np.float32) / max(float(arr.max()), 1e-6))).astype(np.uint8)
        out.append(Image.fromarray(np.ascontiguousarray(arr[..., :3])))
    return tuple(out)


@lru_cache(maxsize=8)
def photos_for(size: int) -> tuple[Image.Image, ...]:
    # pre-shrunk once per output size so per-image crops resize only a little
    out = []
    for im in _photos():
        f = 1.5 * size / min(im.size)
        out.append(im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.BILINEAR)
                   if f < 1 else im)
    return tuple(out)


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1) - 0.5
    return xx, yy, (xx * xx + yy * yy) * 2.0


@lru_cache(maxsize=8)
def _noise_bank(size: int) -> np.ndarray:
    # one fixed Gaussian field; each image reads a random window (much cheaper than fresh noise)
    return np.random.default_rng(0x5EED).standard_normal((2 * size, 2 * size, 3), dtype=np.float32)


def gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    xx, yy, _ = _grid(size)
    c = unit(rng.uniform(0, 360))
    g = (xx * c[0] + yy * c[1]) * 1.41 + 0.5
    c0 = np.array(random_colour(rng), np.float32)
    c1 = np.array(random_colour(rng), np.float32)
    return c0 + g[..., None] * (c1 - c0)


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    k = int(rng.integers(3, 12))
    base = np.array(random_colour(rng), np.float32)
    amp = rng.uniform(20, 90)
    small = np.clip(base + amp * (rng.random((k, k, 3), dtype=np.float32) - 0.5), 0, 255).astype(np.uint8)
    arr = np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC), np.float32)
    if rng.random() < 0.5:  # fabric / wood-grain stripes
        xx, yy, _ = _grid(size)
        c = unit(rng.uniform(0, 180))
        stripes = np.sin((xx * c[0] + yy * c[1]) * rng.uniform(10, 90) + rng.uniform(0, 6.3))
        arr += (stripes * rng.uniform(6, 25))[..., None]
    return arr


def room(rng: np.random.Generator, size: int, a: float, b: float) -> np.ndarray:
    """Wall above, floor below the line y = a*x + b (image pixels)."""
    xx, yy, _ = _grid(size)
    px, py = (xx + 0.5) * (size - 1), (yy + 0.5) * (size - 1)
    floor = (py > a * px + b)[..., None]
    wall = np.array(random_colour(rng, 0.35, 0.97), np.float32)
    flo = np.array(random_colour(rng, 0.1, 0.8), np.float32)
    shade = (1.0 + (yy * rng.uniform(-0.3, 0.3)))[..., None]  # light falls off vertically
    arr = np.where(floor, flo, wall) * shade
    if rng.random() < 0.5:  # floor boards parallel to the wall line
        boards = np.sin((py - a * px) * rng.uniform(0.15, 0.6)) > 0.92
        arr = np.where(floor & boards[..., None], arr * 0.8, arr)
    if rng.random() < 0.5:  # skirting board
        edge = np.abs(py - (a * px + b)) < size * rng.uniform(0.008, 0.02)
        arr = np.where(edge[..., None], np.array(random_colour(rng), np.float32), arr)
    return arr


def photo(rng: np.random.Generator, size: int, photos: tuple[Image.Image, ...]) -> np.ndarray:
    im = photos[int(rng.integers(len(photos)))]
    side = min(im.size) * rng.uniform(0.35, 1.0)
    x0, y0 = rng.uniform(0, im.width - side), rng.uniform(0, im.height - side)
    crop = im.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    arr = np.asarray(crop, np.float32)
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    if rng.random() < 0.3:  # washed-out / desaturated variants
        g = arr.mean(axis=2, keepdims=True)
        arr = g + (arr - g) * rng.uniform(0.0, 0.6)
    return arr


def clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    for _ in range(int(rng.integers(1, 5))):
        x, y = rng.uniform(-0.1, 1.0, 2) * size
        w, h = rng.uniform(0.05, 0.4, 2) * size
        col = random_colour(rng)
        kind = rng.integers(4)
        if kind == 0:
            draw.rectangle([x, y, x + w, y + h], fill=col)
        elif kind == 1:
            draw.ellipse([x, y, x + w, y + h], fill=col)
        elif kind == 2:
            draw.polygon([tuple(p) for p in rng.uniform(0, 1, (3, 2)) * [w, h] + [x, y]], fill=col)
        else:  # frame (picture / window)
            draw.rectangle([x, y, x + w, y + h], outline=col, width=max(1, int(size * 0.015)))


def mat(draw: ImageDraw.ImageDraw, rng: np.random.Generator, to_canvas: ToCanvas, floor: float,
        contact: float) -> None:
    """A yoga mat on the ``floor`` centred at world x ``contact``, slightly seen from above.

    ``to_canvas`` maps to the 2x figure canvas; ``draw`` paints the 1x background.
    """
    half = rng.uniform(0.45, 0.75)
    mat_col = random_colour(rng, 0.2, 0.9)
    m0, m1 = contact - half, contact + half
    quad = [to_canvas(m0, floor + 0.012), to_canvas(m1, floor + 0.012), to_canvas(m1, floor - 0.03),
            to_canvas(m0, floor - 0.03)]
    draw.polygon([(x / 2, y / 2) for x, y in quad], fill=mat_col)
    edge = [to_canvas(m0, floor - 0.03), to_canvas(m1, floor - 0.03), to_canvas(m1, floor - 0.042),
            to_canvas(m0, floor - 0.042)]
    draw.polygon([(x / 2, y / 2) for x, y in edge], fill=darken(mat_col, 0.6))


def camera_effects(img: Image.Image, rng: np.random.Generator, size: int) -> Image.Image:
    """Blur, contrast/brightness, white balance, vignette and sensor noise on the finished picture."""
    u = rng.uniform
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.BoxBlur(u(0.4, 1.1)))
    arr = np.asarray(img, np.float32)
    contrast, bright = u(0.75, 1.2), u(-25, 25)
    gain = rng.uniform(0.92, 1.08, 3).astype(np.float32)  # white balance
    arr = ((arr - 128.0) * contrast + (128.0 + bright)) * gain
    if rng.random() < 0.3:
        arr *= (1.0 - u(0.1, 0.4) * _grid(size)[2])[..., None]  # vignette
    if rng.random() < 0.8:
        oy, ox = rng.integers(0, size, 2)
        arr += u(1.0, 9.0) * _noise_bank(size)[oy:oy + size, ox:ox + size]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
