"""The skeleton drawn over a photo (PIL): the overlays of ``predict --overlay`` and the evaluate report."""

from __future__ import annotations

from PIL import Image, ImageDraw

from posetune.pose.landmarks import Landmarks

# mediapipe's POSE_CONNECTIONS, written out so drawing never needs mediapipe
POSE_CONNECTIONS = (
    (0, 1), (1, 2), (2, 3), (3, 7), (0, 4), (4, 5), (5, 6), (6, 8), (9, 10),
    (11, 12), (11, 13), (13, 15), (15, 17), (15, 19), (15, 21), (17, 19), (12, 14), (14, 16), (16, 18), (16, 20),
    (16, 22), (18, 20), (11, 23), (12, 24), (23, 24), (23, 25), (24, 26), (25, 27), (26, 28), (27, 29), (28, 30),
    (29, 31), (30, 32), (27, 31), (28, 32),
)
LEFT_COLOUR, RIGHT_COLOUR, CENTRE_COLOUR = (255, 138, 0), (0, 217, 231), (255, 255, 255)
MIN_VISIBILITY = 0.3  # joints the model itself doubts are not drawn


def _colour(a: int, b: int) -> tuple[int, int, int]:
    if a % 2 and b % 2 and a > 10:
        return LEFT_COLOUR
    if not a % 2 and not b % 2 and a > 10:
        return RIGHT_COLOUR
    return CENTRE_COLOUR


def draw_skeleton(image: Image.Image, landmarks: Landmarks | None) -> Image.Image:
    """A copy of ``image`` with the skeleton drawn (left orange, right cyan); unchanged copy when nobody was found."""
    out = image.convert("RGB").copy()
    if landmarks is None:
        return out
    draw = ImageDraw.Draw(out)
    w, h = out.size
    width = max(2, round(min(w, h) / 150))
    points = [(float(x) * w, float(y) * h, float(v)) for x, y, _, v in landmarks.image]
    for a, b in POSE_CONNECTIONS:
        (xa, ya, va), (xb, yb, vb) = points[a], points[b]
        if va >= MIN_VISIBILITY and vb >= MIN_VISIBILITY:
            draw.line([(xa, ya), (xb, yb)], fill=_colour(a, b), width=width)
    r = width + 1
    for x, y, v in points:
        if v >= MIN_VISIBILITY:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=CENTRE_COLOUR, outline=(0, 0, 0))
    return out
