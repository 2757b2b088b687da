"""The articulated figure: forward kinematics from a pose's joint angles, and drawing it as capsules.

World units: standing body height ~1, y up, pelvis (the root) at the origin.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import ImageDraw

from posetune.data.synth.colours import Colour, darken, lighten
from posetune.data.synth.poses import Angles3, PoseTemplate

_ANGLE_SD, _ANGLE_CLIP = 4.5, 11.0  # joint jitter (deg): big enough to vary, small enough to keep the asana

# A part is (x0, y0, x1, y1, r0, r1, colour_key): a tapered capsule in world units.
# A circle is a capsule with equal end points.
Part = tuple[float, float, float, float, float, float, str]
Point = tuple[float, float]
ToCanvas = Callable[[float, float], Point]  # world point -> canvas pixel


def unit(deg: float) -> Point:
    """The unit vector pointing ``deg`` degrees anticlockwise from +x."""
    r = math.radians(deg)
    return math.cos(r), math.sin(r)


def _step(p: Point, deg: float, length: float) -> Point:
    d = unit(deg)
    return p[0] + d[0] * length, p[1] + d[1] * length


@dataclass
class Figure:
    chains: list[list[Part]]  # draw order; each chain is outlined as one unit
    shade: list[float]  # per-chain brightness (far limbs darker)
    head: tuple[float, float, float, float]  # cx, cy, r, direction (deg)
    side_view: bool

    @property
    def parts(self) -> list[Part]:
        return [p for chain in self.chains for p in chain]


@dataclass(frozen=True)
class _Body:
    """One random body's sizes in world units."""

    thickness: float  # limb radius factor
    bulk: float  # clothing radius factor (varies less than limb thickness)
    torso: float
    head_radius: float
    upper_arm: float
    forearm: float
    hand: float
    thigh: float
    shin: float
    foot: float
    shoulder_width: float
    hip_width: float


def _random_body(rng: np.random.Generator, side: bool) -> _Body:
    u = rng.uniform
    lim, th = u(0.92, 1.08), u(0.8, 1.25)  # limb length and thickness factors
    torso_len, head_r = 0.30 * u(0.9, 1.1), 0.062 * u(0.9, 1.12)
    upper, fore, hand = 0.165 * lim, 0.145 * lim, 0.06 * u(0.9, 1.1)
    thigh, shin = 0.24 * lim * u(0.95, 1.05), 0.235 * lim * u(0.95, 1.05)
    foot = 0.12 * u(0.9, 1.1) * (1.0 if side else 0.6)  # front view: feet foreshortened
    sw, hw = 0.21 * u(0.85, 1.15), 0.15 * u(0.85, 1.15)
    return _Body(thickness=th, bulk=math.sqrt(th), torso=torso_len, head_radius=head_r, upper_arm=upper,
                 forearm=fore, hand=hand, thigh=thigh, shin=shin, foot=foot, shoulder_width=sw, hip_width=hw)


def _limb_signs(side: bool) -> tuple[float, float]:
    return (1.0, 1.0) if side else (-1.0, 1.0)


def _trunk(b: _Body, side: bool, torso: float, pelvis: float, neck_dir: float,
           rng: np.random.Generator) -> tuple[list[Part], list[Point], list[Point], tuple[float, float, float, float]]:
    """The pelvis-torso-neck-head chain, the hip and shoulder joints, and the head circle."""
    th, tt, sw, hw = b.thickness, b.bulk, b.shoulder_width, b.hip_width
    tu = unit(torso)
    nb = (tu[0] * b.torso, tu[1] * b.torso)  # neck base
    if side:
        pelvis_part: Part = (0.0, 0.0, 0.0, 0.0, 0.072 * tt, 0.072 * tt, "bottom")
        torso_part: Part = (tu[0] * 0.02, tu[1] * 0.02, nb[0] - tu[0] * 0.05, nb[1] - tu[1] * 0.05,
                            0.066 * tt, 0.078 * tt, "top")
        hips = [(0.0, 0.0), (0.0, 0.0)]
        shoulders = [(nb[0] - tu[0] * 0.04, nb[1] - tu[1] * 0.04)] * 2
    else:
        signs = _limb_signs(side)
        pp = unit(pelvis - 90.0)
        hips = [(s * hw / 2 * pp[0], s * hw / 2 * pp[1]) for s in signs]
        pu = unit(pelvis)  # shorts-like trunk: waist down to the crotch, between the hip joints
        pelvis_part = (pu[0] * 0.035, pu[1] * 0.035, -pu[0] * 0.02, -pu[1] * 0.02,
                       0.085 * tt, 0.06 * tt, "bottom")
        tp = unit(torso - 90.0)
        torso_part = (tu[0] * 0.03, tu[1] * 0.03, nb[0] - tu[0] * 0.06, nb[1] - tu[1] * 0.06,
                      0.07 * tt, sw / 2 * 0.82 * tt, "top")
        shoulders = [(nb[0] - tu[0] * 0.035 + s * sw / 2 * tp[0], nb[1] - tu[1] * 0.035 + s * sw / 2 * tp[1])
                     for s in signs]
    head_r = b.head_radius
    hu = unit(neck_dir)
    neck_len = 0.045 * rng.uniform(0.85, 1.15)
    neck_top = (nb[0] + hu[0] * neck_len, nb[1] + hu[1] * neck_len)
    hc = (neck_top[0] + hu[0] * head_r * 0.85, neck_top[1] + hu[1] * head_r * 0.85)
    chain: list[Part] = [
        pelvis_part, torso_part,
        (nb[0] - hu[0] * 0.02, nb[1] - hu[1] * 0.02, neck_top[0], neck_top[1], 0.026 * th, 0.024 * th, "skin"),
        (hc[0], hc[1], hc[0], hc[1], head_r, head_r, "skin"),
    ]
    return chain, hips, shoulders, (hc[0], hc[1], head_r, neck_dir)


def _arm(b: _Body, shoulder_joint: Point, torso: float, angles: Angles3, s: float,
         jitter: Callable[[], float]) -> list[Part]:
    shoulder, elbow, wrist = angles
    a_up = torso - 180.0 + s * (shoulder + jitter())
    a_fo = a_up + s * (elbow + jitter())
    a_ha = a_fo + s * (wrist + jitter())
    e = _step(shoulder_joint, a_up, b.upper_arm)
    w = _step(e, a_fo, b.forearm)
    h = _step(w, a_ha, b.hand)
    th = b.thickness
    return [
        (*shoulder_joint, *e, 0.033 * th, 0.027 * th, "upper_arm"),
        (*e, *w, 0.026 * th, 0.021 * th, "forearm"),
        (*w, *h, 0.021 * th, 0.017 * th, "skin"),
    ]


def _leg(b: _Body, hip_joint: Point, pelvis: float, angles: Angles3, s: float,
         jitter: Callable[[], float]) -> list[Part]:
    hip, knee, ankle = angles
    a_th = pelvis - 180.0 + s * (hip + jitter())
    a_sh = a_th - s * (knee + jitter())
    a_ft = a_sh + s * (90.0 + ankle + jitter())
    k = _step(hip_joint, a_th, b.thigh)
    a = _step(k, a_sh, b.shin)
    heel = _step(a, a_ft, -0.22 * b.foot)  # the heel sticks out behind the ankle
    toe = _step(a, a_ft, b.foot)
    th = b.thickness
    return [
        (*hip_joint, *k, 0.05 * th, 0.037 * th, "thigh"),
        (*k, *a, 0.036 * th, 0.024 * th, "shin"),
        (*heel, *toe, 0.023 * th, 0.017 * th, "foot"),
    ]


def build_figure(t: PoseTemplate, rng: np.random.Generator) -> Figure:
    """A random body bent into ``t``, each joint jittered a little."""
    def jitter() -> float:
        return float(np.clip(rng.normal(0.0, _ANGLE_SD), -_ANGLE_CLIP, _ANGLE_CLIP))

    side = t.view == "side"
    body = _random_body(rng, side)
    torso = t.torso + jitter()
    pelvis = (t.pelvis + jitter()) if t.pelvis is not None else torso
    neck_dir = torso - t.neck + jitter()
    trunk, hips, shoulders, head = _trunk(body, side, torso, pelvis, neck_dir, rng)
    signs = _limb_signs(side)
    arms = [_arm(body, shoulders[i], torso, angles, signs[i], jitter) for i, angles in enumerate(t.arms)]
    legs = [_leg(body, hips[i], pelvis, angles, signs[i], jitter) for i, angles in enumerate(t.legs)]
    if side:
        chains = [arms[0], legs[0], trunk, legs[1], arms[1]]
        shade = [0.78, 0.78, 1.0, 1.0, 1.0]
    else:
        chains = [legs[0], legs[1], trunk, arms[0], arms[1]]
        shade = [1.0] * 5
    return Figure(chains, shade, head, side)


# --------------------------------------------------------------------------- drawing
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


def draw_figure(draw: ImageDraw.ImageDraw, fig: Figure, to_canvas: ToCanvas, scale: float,
                colours: dict[str, Colour], light: Point, outline: float, hair_bun: bool) -> None:
    """Draw ``fig`` chain by chain: outline, fill, then a highlight towards the ``light`` direction."""
    lx, ly = light
    for chain, shade in zip(fig.chains, fig.shade):
        px = []
        for x0, y0, x1, y1, r0, r1, key in chain:
            a, b = to_canvas(x0, y0)
            c, d = to_canvas(x1, y1)
            px.append((a, b, c, d, r0 * scale, r1 * scale, darken(colours[key], shade)))
        # outline the chain as one unit first so joints inside a limb show no seams
        for a, b, c, d, r0, r1, col in px:
            _capsule(draw, a, b, c, d, r0 + outline, r1 + outline, darken(col, 0.42) + (255,))
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
                     lighten(col, 0.22) + (255,))
        if chain is fig.chains[2]:  # the trunk: hair goes over the head, under the near limbs
            _draw_hair(draw, fig, to_canvas, scale, colours["hair"], hair_bun)


def _draw_hair(draw: ImageDraw.ImageDraw, fig: Figure, to_canvas: ToCanvas, scale: float,
               col: Colour, bun: bool) -> None:
    cx, cy, r, hd = fig.head
    lo, hi = (hd - 55, hd + 140) if fig.side_view else (hd - 100, hd + 100)  # back of the head / crown
    pts = []
    for k in range(10):
        d = unit(lo + (hi - lo) * k / 9)
        pts.append(to_canvas(cx + d[0] * r * 1.05, cy + d[1] * r * 1.05))
    draw.polygon(pts, fill=col + (255,))
    if bun:
        d = unit(hd + (125 if fig.side_view else 0))
        bx, by = to_canvas(cx + d[0] * r * 1.0, cy + d[1] * r * 1.0)
        br = 0.42 * r * scale
        draw.ellipse([bx - br, by - br, bx + br, by + br], fill=col + (255,))
