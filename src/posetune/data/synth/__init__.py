"""Synthetic yoga-pose images in the Kaggle "Yoga Poses Dataset" layout.

An articulated 2-D figure (forward kinematics from joint angles rooted at the pelvis) is
drawn with shaded, outlined capsules on a 2x canvas and box-downsampled for anti-aliasing,
then composited on a random background. Every nuisance factor (proportions, colours,
background, mat, lighting, blur, noise, JPEG quality, camera scale/position/roll, mirroring)
is drawn from one distribution shared by all poses, and the figure's bounding box is scaled
to the same size range for every pose, so only the body configuration identifies the class.

>>> import numpy as np
>>> render_pose("tree", np.random.default_rng(0), size=64).size
(64, 64)
"""

from __future__ import annotations

import colorsys
import math
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = ["KAGGLE_POSES", "POSES", "PoseTemplate", "render_dataset", "render_pose"]

Angles3 = tuple[float, float, float]


@dataclass(frozen=True)
class PoseTemplate:
    """Joint angles (degrees) of one asana, seen facing +x (mirrored at random when rendered).

    ``torso`` is the absolute direction pelvis -> neck (90 = upright). Limbs are relative to
    their parent: upper arm = torso - 180 + s*shoulder (0 = hanging, 90 = forward/out,
    180 = overhead), forearm = upper + s*elbow, hand = forearm + s*wrist; thigh =
    pelvis - 180 + s*hip, shin = thigh - s*knee, foot = shin + s*(90 + ankle); head =
    torso - neck. ``s`` is +1 for both limbs in a side view; in a front view limb 0 is on
    the -x side with s = -1, so symmetric poses list the same numbers twice.
    Limb 0 is the far limb in a side view (drawn behind the body, darker).
    """

    name: str
    description: str
    view: str  # "side" | "front"
    torso: float
    neck: float = 0.0
    pelvis: float | None = None  # absolute pelvis-axis direction; None = same as torso
    arms: tuple[Angles3, Angles3] = ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))  # shoulder, elbow, wrist
    legs: tuple[Angles3, Angles3] = ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))  # hip, knee, ankle


def _sym(a: Angles3) -> tuple[Angles3, Angles3]:
    return (a, a)


_TEMPLATES = [
    PoseTemplate("downdog", "inverted V: hands and feet on the floor, hips highest", "side",
                 torso=-42, neck=5, arms=_sym((172, 0, 48)), legs=_sym((96, 0, 36))),
    PoseTemplate("goddess", "wide squat, knees bent out, cactus arms", "front",
                 torso=90, arms=_sym((92, 88, 0)), legs=_sym((68, 72, 0))),
    PoseTemplate("plank", "straight body nearly horizontal on straight arms", "side",
                 torso=19, neck=0, arms=_sym((71, 0, 90)), legs=_sym((0, 0, -20))),
    PoseTemplate("tree", "one leg standing, other foot at the inner thigh, arms overhead", "front",
                 torso=90, arms=_sym((168, 28, 0)), legs=((3, 0, 0), (50, 145, 5))),
    PoseTemplate("warrior2", "wide stance, front knee ~90 deg, arms horizontal", "front",
                 torso=90, arms=_sym((90, 0, 0)), legs=((56, 0, -56), (80, 80, 0))),
    PoseTemplate("mountain", "standing straight, arms by the sides", "front",
                 torso=90, arms=_sym((9, 6, 0)), legs=_sym((3, 0, 0))),
    PoseTemplate("chair", "knees bent, hips back, torso forward, arms overhead", "side",
                 torso=62, neck=-8, arms=_sym((188, 0, 0)), legs=_sym((85, 77, 20))),
    PoseTemplate("cobra", "lying prone, chest lifted on straight arms, legs on the floor", "side",
                 torso=42, neck=-28, arms=_sym((43, 8, 85)), legs=_sym((-42, 0, -90))),
    PoseTemplate("triangle", "wide straight legs, torso sideways, one arm down one arm up", "front",
                 torso=15, pelvis=90, arms=((105, 0, 0), (75, 0, 0)), legs=_sym((35, 0, -35))),
    PoseTemplate("bridge", "on the back, hips lifted, knees bent, feet on the floor", "side",
                 torso=-141, neck=39, arms=_sym((-39, 0, 0)), legs=_sym((-29, 105, 5))),
    PoseTemplate("child", "kneeling folded forward, forehead down, arms forward", "side",
                 torso=-18, neck=35, arms=_sym((193, 0, 5)), legs=_sym((168, 150, -90))),
    PoseTemplate("boat", "balancing on the sit bones, legs and torso raised in a V", "side",
                 torso=120, neck=20, arms=_sym((60, 0, 0)), legs=_sym((105, 0, -75))),
    PoseTemplate("crow", "balancing on bent arms, knees on the upper arms, feet lifted", "side",
                 torso=-35, neck=-25, arms=_sym((115, 20, 80)), legs=_sym((177, 172, -80))),
    PoseTemplate("headstand", "inverted on head and forearms, legs straight up", "side",
                 torso=-90, arms=_sym((200, -110, 0)), legs=_sym((0, 0, -90))),
    PoseTemplate("warrior1", "lunge, back leg straight, torso upright, arms overhead", "side",
                 torso=90, neck=-10, arms=_sym((180, 0, 0)), legs=((-55, 0, 55), (80, 80, 0))),
]

POSES: dict[str, PoseTemplate] = {t.name: t for t in _TEMPLATES}
KAGGLE_POSES: tuple[str, ...] = ("downdog", "goddess", "plank", "tree", "warrior2")

_SPLITS = {"TRAIN": 0, "TEST": 1}
_ANGLE_SD, _ANGLE_CLIP = 4.5, 11.0  # joint jitter (deg): big enough to vary, small enough to keep the asana
_MIN_SIZE = 32


def _check_pose(pose: str) -> PoseTemplate:
    if pose not in POSES:
        raise ValueError(f"unknown pose {pose!r}; valid poses: {', '.join(POSES)}")
    return POSES[pose]


def _unit(deg: float) -> tuple[float, float]:
    r = math.radians(deg)
    return math.cos(r), math.sin(r)


# --------------------------------------------------------------------------- figure geometry
# A part is (x0, y0, x1, y1, r0, r1, colour_key): a tapered capsule in world units
# (standing body height ~1, y up). A circle is a capsule with equal end points.
_Part = tuple[float, float, float, float, float, float, str]


@dataclass
class _Figure:
    chains: list[list[_Part]]  # draw order; each chain is outlined as one unit
    shade: list[float]  # per-chain brightness (far limbs darker)
    head: tuple[float, float, float, float]  # cx, cy, r, direction (deg)
    side_view: bool


def _build_figure(t: PoseTemplate, rng: np.random.Generator) -> _Figure:
    def j() -> float:
        return float(np.clip(rng.normal(0.0, _ANGLE_SD), -_ANGLE_CLIP, _ANGLE_CLIP))

    u = rng.uniform
    lim, th = u(0.92, 1.08), u(0.8, 1.25)  # limb length and thickness factors
    torso_len, head_r = 0.30 * u(0.9, 1.1), 0.062 * u(0.9, 1.12)
    upper, fore, hand = 0.165 * lim, 0.145 * lim, 0.06 * u(0.9, 1.1)
    thigh, shin = 0.24 * lim * u(0.95, 1.05), 0.235 * lim * u(0.95, 1.05)
    side = t.view == "side"
    foot = 0.12 * u(0.9, 1.1) * (1.0 if side else 0.6)  # front view: feet foreshortened
    sw, hw = 0.21 * u(0.85, 1.15), 0.15 * u(0.85, 1.15)
    tt = math.sqrt(th)  # clothing bulk varies less than limb thickness

    torso = t.torso + j()
    pelvis = (t.pelvis + j()) if t.pelvis is not None else torso
    neck_dir = torso - t.neck + j()
    tu = _unit(torso)
    nb = (tu[0] * torso_len, tu[1] * torso_len)  # neck base; pelvis (root) at the origin
    signs = (1.0, 1.0) if side else (-1.0, 1.0)

    # body chain: pelvis, torso, neck, head
    if side:
        pelvis_part: _Part = (0.0, 0.0, 0.0, 0.0, 0.072 * tt, 0.072 * tt, "bottom")
        torso_part: _Part = (tu[0] * 0.02, tu[1] * 0.02, nb[0] - tu[0] * 0.05, nb[1] - tu[1] * 0.05,
                            0.066 * tt, 0.078 * tt, "top")
        hips = [(0.0, 0.0), (0.0, 0.0)]
        sh = [(nb[0] - tu[0] * 0.04, nb[1] - tu[1] * 0.04)] * 2
    else:
        pp = _unit(pelvis - 90.0)
        hips = [(s * hw / 2 * pp[0], s * hw / 2 * pp[1]) for s in signs]
        pu = _unit(pelvis)  # shorts-like trunk: waist down to the crotch, between the hip joints
        pelvis_part = (pu[0] * 0.035, pu[1] * 0.035, -pu[0] * 0.02, -pu[1] * 0.02,
                       0.085 * tt, 0.06 * tt, "bottom")
        tp = _unit(torso - 90.0)
        torso_part = (tu[0] * 0.03, tu[1] * 0.03, nb[0] - tu[0] * 0.06, nb[1] - tu[1] * 0.06,
                      0.07 * tt, sw / 2 * 0.82 * tt, "top")
        sh = [(nb[0] - tu[0] * 0.035 + s * sw / 2 * tp[0], nb[1] - tu[1] * 0.035 + s * sw / 2 * tp[1])
              for s in signs]
    hu = _unit(neck_dir)
    neck_len = 0.045 * u(0.85, 1.15)
    neck_top = (nb[0] + hu[0] * neck_len, nb[1] + hu[1] * neck_len)
    hc = (neck_top[0] + hu[0] * head_r * 0.85, neck_top[1] + hu[1] * head_r * 0.85)
    body: list[_Part] = [
        pelvis_part, torso_part,
        (nb[0] - hu[0] * 0.02, nb[1] - hu[1] * 0.02, neck_top[0], neck_top[1], 0.026 * th, 0.024 * th, "skin"),
        (hc[0], hc[1], hc[0], hc[1], head_r, head_r, "skin"),
    ]

    def seg(p: tuple[float, float], deg: float, length: float) -> tuple[float, float]:
        d = _unit(deg)
        return p[0] + d[0] * length, p[1] + d[1] * length

    arms: list[list[_Part]] = []
    for i, (shoulder, elbow, wrist) in enumerate(t.arms):
        s = signs[i]
        a_up = torso - 180.0 + s * (shoulder + j())
        a_fo = a_up + s * (elbow + j())
        a_ha = a_fo + s * (wrist + j())
        e = seg(sh[i], a_up, upper)
        w = seg(e, a_fo, fore)
        h = seg(w, a_ha, hand)
        arms.append([
            (*sh[i], *e, 0.033 * th, 0.027 * th, "upper_arm"),
            (*e, *w, 0.026 * th, 0.021 * th, "forearm"),
            (*w, *h, 0.021 * th, 0.017 * th, "skin"),
        ])
    legs: list[list[_Part]] = []
    for i, (hip, knee, ankle) in enumerate(t.legs):
        s = signs[i]
        a_th = pelvis - 180.0 + s * (hip + j())
        a_sh = a_th - s * (knee + j())
        a_ft = a_sh + s * (90.0 + ankle + j())
        k = seg(hips[i], a_th, thigh)
        a = seg(k, a_sh, shin)
        heel = seg(a, a_ft, -0.22 * foot)  # the heel sticks out behind the ankle
        toe = seg(a, a_ft, foot)
        legs.append([
            (*hips[i], *k, 0.05 * th, 0.037 * th, "thigh"),
            (*k, *a, 0.036 * th, 0.024 * th, "shin"),
            (*heel, *toe, 0.023 * th, 0.017 * th, "foot"),
        ])
    if side:
        chains = [arms[0], legs[0], body, legs[1], arms[1]]
        shade = [0.78, 0.78, 1.0, 1.0, 1.0]
    else:
        chains = [legs[0], legs[1], body, arms[0], arms[1]]
        shade = [1.0] * 5
    return _Figure(chains, shade, (hc[0], hc[1], head_r, neck_dir), side)


# --------------------------------------------------------------------------- colours
_SKIN = np.array([[255, 224, 196], [241, 194, 125], [224, 172, 105], [198, 134, 66],
                  [141, 85, 36], [96, 60, 32], [234, 192, 160], [170, 110, 70]], np.float32)
_HAIR = [(20, 15, 10), (55, 38, 24), (110, 75, 40), (205, 170, 110), (150, 150, 150), (95, 35, 20)]


def _rgb(c: Sequence[float]) -> tuple[int, int, int]:
    return int(min(max(c[0], 0), 255)), int(min(max(c[1], 0), 255)), int(min(max(c[2], 0), 255))


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    return _rgb([x * 255 for x in colorsys.hsv_to_rgb(h, s, v)])


def _lum(c: Sequence[float]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _random_colour(rng: np.random.Generator, vmin: float = 0.1, vmax: float = 0.97) -> tuple[int, int, int]:
    sat = rng.uniform(0.0, 0.12) if rng.random() < 0.25 else rng.uniform(0.25, 0.9)  # 1 in 4 neutral
    return _hsv(rng.random(), sat, rng.uniform(vmin, vmax))


def _contrasting(rng: np.random.Generator, bg_lum: float, margin: float = 60.0) -> tuple[int, int, int]:
    """A clothing colour whose luminance differs from the background's by ``margin``."""
    c = _random_colour(rng)
    for _ in range(12):
        if abs(_lum(c) - bg_lum) >= margin:
            return c
        c = _random_colour(rng)
    return _hsv(rng.random(), rng.uniform(0.2, 0.8), 0.12 if bg_lum > 128 else 0.95)


def _mul(c: Sequence[float], f: float) -> tuple[int, int, int]:
    return _rgb([x * f for x in c])


def _lighten(c: Sequence[float], f: float) -> tuple[int, int, int]:
    return _rgb([x + (255 - x) * f for x in c])


# --------------------------------------------------------------------------- backgrounds
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
def _photos_for(size: int) -> tuple[Image.Image, ...]:
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


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    xx, yy, _ = _grid(size)
    c = _unit(rng.uniform(0, 360))
    g = (xx * c[0] + yy * c[1]) * 1.41 + 0.5
    c0 = np.array(_random_colour(rng), np.float32)
    c1 = np.array(_random_colour(rng), np.float32)
    return c0 + g[..., None] * (c1 - c0)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    k = int(rng.integers(3, 12))
    base = np.array(_random_colour(rng), np.float32)
    amp = rng.uniform(20, 90)
    small = np.clip(base + amp * (rng.random((k, k, 3), dtype=np.float32) - 0.5), 0, 255).astype(np.uint8)
    arr = np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC), np.float32)
    if rng.random() < 0.5:  # fabric / wood-grain stripes
        xx, yy, _ = _grid(size)
        c = _unit(rng.uniform(0, 180))
        stripes = np.sin((xx * c[0] + yy * c[1]) * rng.uniform(10, 90) + rng.uniform(0, 6.3))
        arr += (stripes * rng.uniform(6, 25))[..., None]
    return arr


def _room(rng: np.random.Generator, size: int, a: float, b: float) -> np.ndarray:
    """Wall above, floor below the line y = a*x + b (image pixels)."""
    xx, yy, _ = _grid(size)
    px, py = (xx + 0.5) * (size - 1), (yy + 0.5) * (size - 1)
    floor = (py > a * px + b)[..., None]
    wall = np.array(_random_colour(rng, 0.35, 0.97), np.float32)
    flo = np.array(_random_colour(rng, 0.1, 0.8), np.float32)
    shade = (1.0 + (yy * rng.uniform(-0.3, 0.3)))[..., None]  # light falls off vertically
    arr = np.where(floor, flo, wall) * shade
    if rng.random() < 0.5:  # floor boards parallel to the wall line
        boards = np.sin((py - a * px) * rng.uniform(0.15, 0.6)) > 0.92
        arr = np.where(floor & boards[..., None], arr * 0.8, arr)
    if rng.random() < 0.5:  # skirting board
        edge = np.abs(py - (a * px + b)) < size * rng.uniform(0.008, 0.02)
        arr = np.where(edge[..., None], np.array(_random_colour(rng), np.float32), arr)
    return arr


def _photo(rng: np.random.Generator, size: int, photos: tuple[Image.Image, ...]) -> np.ndarray:
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


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    for _ in range(int(rng.integers(1, 5))):
        x, y = rng.uniform(-0.1, 1.0, 2) * size
        w, h = rng.uniform(0.05, 0.4, 2) * size
        col = _random_colour(rng)
        kind = rng.integers(4)
        if kind == 0:
            draw.rectangle([x, y, x + w, y + h], fill=col)
        elif kind == 1:
            draw.ellipse([x, y, x + w, y + h], fill=col)
        elif kind == 2:
            draw.polygon([tuple(p) for p in rng.uniform(0, 1, (3, 2)) * [w, h] + [x, y]], fill=col)
        else:  # frame (picture / window)
            draw.rectangle([x, y, x + w, y + h], outline=col, width=max(1, int(size * 0.015)))


# --------------------------------------------------------------------------- rendering
def _capsule(draw: ImageDraw.ImageDraw, x0: float, y0: float, x1: float, y1: float,
             r0: float, r1: float, fill: tuple[int, ...]) -> None:
    dx, dy = x1 - x0, y1 - y0
    length = math.hypot(dx, dy)
    if length > abs(r0 - r1) + 1e-6:
        ux, uy = dx / length, dy / length
        nx, ny = -uy, ux
        sin_p = (r0 - r1) / length  # tangent points of a tapered capsule
        cos_p = math.sqrt(max(0.0, 1.0 - sin_p * sin_p))
        ox, oy = nx * cos_p + ux * sin_p, ny * cos_p + uy * sin_p
        qx, qy = -nx * cos_p + ux * sin_p, -ny * cos_p + uy * sin_p
        draw.polygon([(x0 + r0 * ox, y0 + r0 * oy), (x1 + r1 * ox, y1 + r1 * oy),
                      (x1 + r1 * qx, y1 + r1 * qy), (x0 + r0 * qx, y0 + r0 * qy)], fill=fill)
        draw.ellipse([x1 - r1, y1 - r1, x1 + r1, y1 + r1], fill=fill)
    draw.ellipse([x0 - r0, y0 - r0, x0 + r0, y0 + r0], fill=fill)


def _draw_figure(draw: ImageDraw.ImageDraw, fig: _Figure, xf: Callable[[float, float], tuple[float, float]],
                 scale: float, colours: dict[str, tuple[int, int, int]], light: tuple[float, float],
                 outline: float, bun: bool) -> None:
    lx, ly = light
    for chain, shade in zip(fig.chains, fig.shade):
        px = []
        for x0, y0, x1, y1, r0, r1, key in chain:
            a, b = xf(x0, y0)
            c, d = xf(x1, y1)
            px.append((a, b, c, d, r0 * scale, r1 * scale, _mul(colours[key], shade)))
        # outline the chain as one unit first so joints inside a limb show no seams
        for a, b, c, d, r0, r1, col in px:
            _capsule(draw, a, b, c, d, r0 + outline, r1 + outline, _mul(col, 0.42) + (255,))
        for a, b, c, d, r0, r1, col in px:
            _capsule(draw, a, b, c, d, r0, r1, col + (255,))
        # a lighter stripe offset towards the light reads as a rounded, lit limb
        for a, b, c, d, r0, r1, col in px:
            dx, dy = c - a, d - b
            n = math.hypot(dx, dy)
            nx, ny = (-dy / n, dx / n) if n > 1e-6 else (lx, ly)
            if nx * lx + ny * ly < 0:
                nx, ny = -nx, -ny
            o0, o1 = 0.32 * r0, 0.32 * r1
            _capsule(draw, a + nx * o0, b + ny * o0, c + nx * o1, d + ny * o1, 0.42 * r0, 0.42 * r1,
                     _lighten(col, 0.22) + (255,))
        if chain is fig.chains[2]:
            _draw_hair(draw, fig, xf, scale, colours["hair"], bun)


def _draw_hair(draw: ImageDraw.ImageDraw, fig: _Figure, xf: Callable[[float, float], tuple[float, float]],
               scale: float, col: tuple[int, int, int], bun: bool) -> None:
    cx, cy, r, hd = fig.head
    lo, hi = (hd - 55, hd + 140) if fig.side_view else (hd - 100, hd + 100)  # back of the head / crown
    pts = []
    for k in range(10):
        d = _unit(lo + (hi - lo) * k / 9)
        pts.append(xf(cx + d[0] * r * 1.05, cy + d[1] * r * 1.05))
    draw.polygon(pts, fill=col + (255,))
    if bun:
        d = _unit(hd + (125 if fig.side_view else 0))
        bx, by = xf(cx + d[0] * r * 1.0, cy + d[1] * r * 1.0)
        br = 0.42 * r * scale
        draw.ellipse([bx - br, by - br, bx + br, by + br], fill=col + (255,))


def render_pose(pose: str, rng: np.random.Generator, size: int = 224) -> Image.Image:
    """Render one RGB ``size`` x ``size`` image of ``pose``; all randomness comes from ``rng``."""
    template = _check_pose(pose)
    if size < _MIN_SIZE:
        raise ValueError(f"size must be at least {_MIN_SIZE} px, got {size}")
    u = rng.uniform
    fig = _build_figure(template, rng)

    # camera: mirror, roll, then scale the bounding box to a pose-independent size range
    mirror = 1.0 if rng.random() < 0.5 else -1.0
    roll = math.radians(u(-7, 7))
    cr, sr = math.cos(roll), math.sin(roll)

    def rot(x: float, y: float) -> tuple[float, float]:
        x *= mirror
        return x * cr - y * sr, x * sr + y * cr

    parts = [p for chain in fig.chains for p in chain]
    xs, ys = [], []
    for x0, y0, x1, y1, r0, r1, _ in parts:
        for x, y, r in ((x0, y0, r0), (x1, y1, r1)):
            rx, ry = rot(x, y)
            xs += [rx - r, rx + r]
            ys += [ry - r, ry + r]
    bx0, bx1, by0, by1 = min(xs), max(xs), min(ys), max(ys)
    big = 2 * size  # draw at 2x, box-downsample for anti-aliasing
    scale = u(0.5, 0.85) * big / max(bx1 - bx0, by1 - by0)
    w, h = (bx1 - bx0) * scale, (by1 - by0) * scale
    left, top = u(0, big - w), u(0, big - h)
    if rng.random() < 0.1:  # cut the figure at a frame edge
        cut = u(0.08, 0.22)
        edge = rng.integers(4)
        if edge == 0:
            left = -cut * w
        elif edge == 1:
            left = big - (1 - cut) * w
        elif edge == 2:
            top = -cut * h
        else:
            top = big - (1 - cut) * h

    def xf(x: float, y: float) -> tuple[float, float]:
        rx, ry = rot(x, y)
        return left + (rx - bx0) * scale, top + (by1 - ry) * scale

    # floor under the lowest body point (world frame, before roll)
    floor = min(min(p[1] - p[4], p[3] - p[5]) for p in parts)
    near = [x for p in parts for x, y, r in ((p[0], p[1], p[4]), (p[2], p[3], p[5])) if y - r < floor + 0.12]
    contact = 0.5 * (min(near) + max(near))

    # background (1x)
    photos = _photos_for(size)
    kinds = ("gradient", "texture", "room", "photo") if photos else ("gradient", "texture", "room")
    probs = (0.22, 0.18, 0.3, 0.3) if photos else (0.32, 0.28, 0.4)
    kind = kinds[int(rng.choice(len(kinds), p=probs))]
    if kind == "gradient":
        bg = _gradient(rng, size)
    elif kind == "texture":
        bg = _texture(rng, size)
    elif kind == "room":
        wy = floor + u(0.05, 0.4)  # wall/floor junction behind the figure
        (ax, ay), (cx, cy) = xf(-5.0, wy), xf(5.0, wy)
        slope = (cy - ay) / (cx - ax) if abs(cx - ax) > 1e-6 else 0.0
        bg = _room(rng, size, slope, (ay - slope * ax) / 2)  # 2x canvas -> 1x pixels
    else:
        bg = _photo(rng, size, photos)
    bg_img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    bgd = ImageDraw.Draw(bg_img)
    if rng.random() < 0.4:
        _clutter(bgd, rng, size)
    if rng.random() < 0.55:  # yoga mat under the contact points, slightly seen from above
        half = u(0.45, 0.75)
        mat_col = _random_colour(rng, 0.2, 0.9)
        m0, m1 = contact - half, contact + half
        quad = [xf(m0, floor + 0.012), xf(m1, floor + 0.012), xf(m1, floor - 0.03), xf(m0, floor - 0.03)]
        bgd.polygon([(x / 2, y / 2) for x, y in quad], fill=mat_col)
        edge = [xf(m0, floor - 0.03), xf(m1, floor - 0.03), xf(m1, floor - 0.042), xf(m0, floor - 0.042)]
        bgd.polygon([(x / 2, y / 2) for x, y in edge], fill=_mul(mat_col, 0.6))

    # colours: clothing must stand out from the background behind the figure
    region = np.asarray(bg_img)[max(0, int(top / 2)):max(1, int((top + h) / 2)),
                                max(0, int(left / 2)):max(1, int((left + w) / 2))]
    bg_lum = float(_lum(region.reshape(-1, 3).mean(axis=0))) if region.size else 128.0
    skin = _rgb(_SKIN[int(rng.integers(len(_SKIN)))] + rng.uniform(-12, 12, 3))
    top_c, bottom_c = _contrasting(rng, bg_lum), _contrasting(rng, bg_lum)
    sleeves, legwear = rng.random(), rng.random()
    colours = {
        "skin": skin, "top": top_c, "bottom": bottom_c,
        "upper_arm": top_c if sleeves < 0.65 else skin,
        "forearm": top_c if sleeves < 0.25 else skin,
        "thigh": bottom_c if legwear < 0.9 else skin,
        "shin": bottom_c if legwear < 0.65 else skin,
        "foot": skin if rng.random() < 0.85 else _random_colour(rng),
        "hair": _HAIR[int(rng.integers(len(_HAIR)))],
    }
    la = math.radians(u(200, 340))  # light from above (image y points down)
    light = (math.cos(la), math.sin(la))

    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    _draw_figure(ImageDraw.Draw(layer), fig, xf, scale, colours, light, 0.011 * scale,
                 bool(rng.random() < 0.35))
    layer = layer.reduce(2)  # 2x2 box filter over premultiplied alpha = supersampled edges

    if rng.random() < 0.55:  # soft drop shadow away from the light: helps figure/ground contrast
        alpha = layer.getchannel("A").filter(ImageFilter.BoxBlur(u(1.0, 3.0)))
        k = u(0.25, 0.55)
        shadow = alpha.point([int(v * k) for v in range(256)])
        off = u(0.005, 0.025) * size
        bg_img.paste((0, 0, 0), (int(round(-light[0] * off)), int(round(-light[1] * off))), shadow)
    bg_img.paste(layer, (0, 0), layer)

    if rng.random() < 0.3:
        bg_img = bg_img.filter(ImageFilter.BoxBlur(u(0.4, 1.1)))
    arr = np.asarray(bg_img, np.float32)
    contrast, bright = u(0.75, 1.2), u(-25, 25)
    gain = rng.uniform(0.92, 1.08, 3).astype(np.float32)  # white balance
    arr = ((arr - 128.0) * contrast + (128.0 + bright)) * gain
    if rng.random() < 0.3:
        arr *= (1.0 - u(0.1, 0.4) * _grid(size)[2])[..., None]  # vignette
    if rng.random() < 0.8:
        oy, ox = rng.integers(0, size, 2)
        arr += u(1.0, 9.0) * _noise_bank(size)[oy:oy + size, ox:ox + size]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------- dataset
def _image_rng(seed: int, split: str, pose: str, index: int) -> np.random.Generator:
    # crc32 (not hash()) so seeds are stable across processes and independent of the pose list
    return np.random.default_rng([seed, _SPLITS[split], zlib.crc32(pose.encode()), index])


def _label_font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, ValueError, OSError, ImportError):  # old Pillow / no FreeType
        return ImageFont.load_default()


def _contact_sheet(rows: list[tuple[str, list[Image.Image]]], thumb: int) -> Image.Image:
    cols = max((len(ims) for _, ims in rows), default=0)
    label_w, gap = max(110, thumb), 4
    sheet = Image.new("RGB", (label_w + cols * (thumb + gap) + gap, len(rows) * (thumb + gap) + gap),
                      (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _label_font(max(12, thumb // 7))
    for r, (name, ims) in enumerate(rows):
        y = gap + r * (thumb + gap)
        draw.text((8, y + thumb // 2), name, fill=(0, 0, 0), font=font, anchor="lm")
        for c, im in enumerate(ims):
            sheet.paste(im.resize((thumb, thumb), Image.BILINEAR), (label_w + gap + c * (thumb + gap), y))
    return sheet


def render_dataset(out: str | Path, poses: Sequence[str] | None = None, per_class: int = 60,
                   test_per_class: int = 20, size: int = 224, seed: int = 0,
                   progress: Callable[[int, int], None] | None = None) -> dict:
    """Write ``out/TRAIN/<pose>/<pose>_00000.jpg``, ``out/TEST/<pose>/...`` and ``out/preview.jpg``.

    Each image is seeded from (seed, split, pose, index), so the same arguments give the same
    bytes and an image does not depend on how many others are rendered. Stale
    ``<pose>_NNNNN.jpg`` files beyond the requested counts are removed; nothing else is touched.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     info = render_dataset(tmp, poses=["tree", "plank"], per_class=2, test_per_class=1, size=64)
    >>> info["train"], info["test"], info["poses"]
    (4, 2, ['tree', 'plank'])
    """
    names = list(KAGGLE_POSES if poses is None else poses)
    if not names:
        raise ValueError(f"no poses given; valid poses: {', '.join(POSES)}")
    for name in names:
        _check_pose(name)
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate pose names in {names}")
    if per_class < 0 or test_per_class < 0:
        raise ValueError("per_class and test_per_class must be >= 0")
    if size < _MIN_SIZE:
        raise ValueError(f"size must be at least {_MIN_SIZE} px, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")

    root = Path(out)
    total = len(names) * (per_class + test_per_class)
    done, n_cols = 0, 8
    examples: dict[str, list[Image.Image]] = {n: [] for n in names}
    pattern = re.compile(r"^(.+)_(\d{5})\.jpg$")
    for split, count in (("TRAIN", per_class), ("TEST", test_per_class)):
        for name in names:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.glob(f"{name}_*.jpg"):  # leftovers of a bigger earlier render
                m = pattern.match(old.name)
                if m and m.group(1) == name and int(m.group(2)) >= count:
                    old.unlink()
            for i in range(count):
                rng = _image_rng(seed, split, name, i)
                img = render_pose(name, rng, size)
                img.save(folder / f"{name}_{i:05d}.jpg", "JPEG", quality=int(rng.integers(60, 96)))
                if len(examples[name]) < n_cols:
                    examples[name].append(img)
                done += 1
                if progress is not None:
                    progress(done, total)
    preview = root / "preview.jpg"
    _contact_sheet([(n, examples[n]) for n in names], min(size, 112)).save(preview, "JPEG", quality=90)
    return {"out": str(root), "poses": names, "train": len(names) * per_class,
            "test": len(names) * test_per_class, "preview": str(preview)}
