"""One picture: place the camera, build the scene behind the figure, dress and draw it, photograph it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from posetune.data.synth.colours import Colour, luminance, outfit_colours
from posetune.data.synth.figure import Figure, Point, build_figure, draw_figure
from posetune.data.synth.poses import PoseTemplate, check_pose
from posetune.data.synth.scene import camera_effects, clutter, gradient, mat, photo, photos_for, room, texture
from posetune.data.synth.shift import colour_cast, pattern_background, saturated_outfit, side_stream

MIN_SIZE = 32


def _rotate(x: float, y: float, mirror: float, cos_roll: float, sin_roll: float) -> Point:
    x *= mirror
    return x * cos_roll - y * sin_roll, x * sin_roll + y * cos_roll


@dataclass(frozen=True)
class Camera:
    """Maps world points (y up) to pixels of the 2x figure canvas (y down)."""

    mirror: float
    cos_roll: float
    sin_roll: float
    box_left: float  # figure bounding box after mirror and roll, world units
    box_top: float
    scale: float  # canvas pixels per world unit
    left: float  # where the bounding box lands on the canvas, pixels
    top: float
    width: float
    height: float

    def to_canvas(self, x: float, y: float) -> Point:
        rx, ry = _rotate(x, y, self.mirror, self.cos_roll, self.sin_roll)
        return self.left + (rx - self.box_left) * self.scale, self.top + (self.box_top - ry) * self.scale


def place_camera(fig: Figure, rng: np.random.Generator, canvas: int) -> Camera:
    """Mirror, roll, then scale the bounding box to a pose-independent share of the ``canvas`` side."""
    u = rng.uniform
    mirror = 1.0 if rng.random() < 0.5 else -1.0
    roll = math.radians(u(-7, 7))
    cr, sr = math.cos(roll), math.sin(roll)
    xs, ys = [], []
    for x0, y0, x1, y1, r0, r1, _ in fig.parts:
        for x, y, r in ((x0, y0, r0), (x1, y1, r1)):
            rx, ry = _rotate(x, y, mirror, cr, sr)
            xs += [rx - r, rx + r]
            ys += [ry - r, ry + r]
    bx0, bx1, by0, by1 = min(xs), max(xs), min(ys), max(ys)
    scale = u(0.5, 0.85) * canvas / max(bx1 - bx0, by1 - by0)
    w, h = (bx1 - bx0) * scale, (by1 - by0) * scale
    left, top = u(0, canvas - w), u(0, canvas - h)
    if rng.random() < 0.1:  # cut the figure at a frame edge
        cut = u(0.08, 0.22)
        edge = rng.integers(4)
        if edge == 0:
            left = -cut * w
        elif edge == 1:
            left = canvas - (1 - cut) * w
        elif edge == 2:
            top = -cut * h
        else:
            top = canvas - (1 - cut) * h
    return Camera(mirror, cr, sr, bx0, by1, scale, left, top, w, h)


def _floor_and_contact(fig: Figure) -> tuple[float, float]:
    """The lowest body point's height, and the x midway between the parts near it (world frame, before roll)."""
    parts = fig.parts
    floor = min(min(p[1] - p[4], p[3] - p[5]) for p in parts)
    near = [x for p in parts for x, y, r in ((p[0], p[1], p[4]), (p[2], p[3], p[5])) if y - r < floor + 0.12]
    return floor, 0.5 * (min(near) + max(near))


def _background(rng: np.random.Generator, size: int, camera: Camera, floor: float) -> np.ndarray:
    photos = photos_for(size)
    kinds = ("gradient", "texture", "room", "photo") if photos else ("gradient", "texture", "room")
    probs = (0.22, 0.18, 0.3, 0.3) if photos else (0.32, 0.28, 0.4)
    kind = kinds[int(rng.choice(len(kinds), p=probs))]
    if kind == "gradient":
        return gradient(rng, size)
    if kind == "texture":
        return texture(rng, size)
    if kind == "room":
        wy = floor + rng.uniform(0.05, 0.4)  # wall/floor junction behind the figure
        (ax, ay), (cx, cy) = camera.to_canvas(-5.0, wy), camera.to_canvas(5.0, wy)
        slope = (cy - ay) / (cx - ax) if abs(cx - ax) > 1e-6 else 0.0
        return room(rng, size, slope, (ay - slope * ax) / 2)  # 2x canvas -> 1x pixels
    return photo(rng, size, photos)


def _backdrop(rng: np.random.Generator, size: int, camera: Camera, floor: float, contact: float) -> Image.Image:
    """The 1x picture behind the figure: a background, maybe clutter, maybe a mat under the contact points."""
    img = Image.fromarray(np.clip(_background(rng, size, camera, floor), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    if rng.random() < 0.4:
        clutter(draw, rng, size)
    if rng.random() < 0.55:
        mat(draw, rng, camera.to_canvas, floor, contact)
    return img


def _luminance_behind(img: Image.Image, camera: Camera) -> float:
    """Mean luminance of ``img`` under the figure's bounding box (canvas pixels halved to 1x)."""
    left, top, w, h = camera.left, camera.top, camera.width, camera.height
    region = np.asarray(img)[max(0, int(top / 2)):max(1, int((top + h) / 2)),
                             max(0, int(left / 2)):max(1, int((left + w) / 2))]
    return float(luminance(region.reshape(-1, 3).mean(axis=0))) if region.size else 128.0


def _figure_layer(fig: Figure, camera: Camera, colours: dict[str, Colour], light: Point,
                  rng: np.random.Generator, size: int) -> Image.Image:
    """The figure alone on a transparent 1x layer, drawn at 2x and box-downsampled for anti-aliasing."""
    layer = Image.new("RGBA", (2 * size, 2 * size), (0, 0, 0, 0))
    draw_figure(ImageDraw.Draw(layer), fig, camera.to_canvas, camera.scale, colours, light, 0.011 * camera.scale,
                bool(rng.random() < 0.35))
    return layer.reduce(2)  # 2x2 box filter over premultiplied alpha = supersampled edges


def _drop_shadow(img: Image.Image, layer: Image.Image, light: Point, rng: np.random.Generator, size: int) -> None:
    """A soft copy of the figure's silhouette, darkening ``img`` away from the light."""
    u = rng.uniform
    alpha = layer.getchannel("A").filter(ImageFilter.BoxBlur(u(1.0, 3.0)))
    k = u(0.25, 0.55)
    shadow = alpha.point([int(v * k) for v in range(256)])
    off = u(0.005, 0.025) * size
    img.paste((0, 0, 0), (int(round(-light[0] * off)), int(round(-light[1] * off))), shadow)


MASK_ALPHA = 128  # a pixel belongs to the figure when the figure layer covers at least half of it


def render_pose(pose: str | PoseTemplate, rng: np.random.Generator, size: int = 224, with_mask: bool = False,
                shifted: bool = False) -> Image.Image | tuple[Image.Image, Image.Image]:
    """Render one RGB ``size`` x ``size`` image of ``pose``; all randomness comes from ``rng``.

    ``with_mask=True`` returns (image, mask): the mask is an 'L' image, 255 where the figure covers the pixel
    (its anti-aliased layer's alpha >= 128), 0 elsewhere. It is read off the figure layer the image is
    composited from, so the pixels and the draws from ``rng`` are the same either way. ``shifted=True``: the
    same figure in an unseen domain (:mod:`posetune.data.synth.shift`), its mask unchanged.

    >>> render_pose("plank", np.random.default_rng(0), size=48).mode
    'RGB'
    >>> image, mask = render_pose("plank", np.random.default_rng(0), size=48, with_mask=True)
    >>> mask.mode, mask.size
    ('L', (48, 48))
    """
    template = check_pose(pose)
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} px, got {size}")
    fig = build_figure(template, rng)
    camera = place_camera(fig, rng, 2 * size)
    floor, contact = _floor_and_contact(fig)
    img = _backdrop(rng, size, camera, floor, contact)
    colours = outfit_colours(rng, _luminance_behind(img, camera))  # clothing must stand out from what is behind
    if shifted:
        side = side_stream(rng)
        img = pattern_background(side, size)
        colours = saturated_outfit(colours, side, _luminance_behind(img, camera))
    la = math.radians(rng.uniform(200, 340))  # light from above (image y points down)
    light = (math.cos(la), math.sin(la))
    layer = _figure_layer(fig, camera, colours, light, rng, size)
    if rng.random() < 0.55:  # the shadow helps figure/ground contrast
        _drop_shadow(img, layer, light, rng, size)
    img.paste(layer, (0, 0), layer)
    img = camera_effects(img, rng, size)  # pixel effects only: the figure stays where the layer drew it
    if shifted:
        img = colour_cast(img, side)
    if with_mask:
        return img, layer.getchannel("A").point(lambda a: 255 if a >= MASK_ALPHA else 0)
    return img
