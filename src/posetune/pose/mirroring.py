"""Horizontal mirroring of landmarks: x -> 1 - x, and every left joint trades places with its right twin."""

from __future__ import annotations

import numpy as np

from posetune.pose.landmarks import Landmarks

# BlazePose's 33 joints: 0 nose, then left/right pairs (mediapipe's PoseLandmark order)
LEFT_RIGHT_PAIRS = ((1, 4), (2, 5), (3, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16), (17, 18), (19, 20),
                    (21, 22), (23, 24), (25, 26), (27, 28), (29, 30), (31, 32))
SWAP_ORDER = np.arange(33)
for _left, _right in LEFT_RIGHT_PAIRS:
    SWAP_ORDER[_left], SWAP_ORDER[_right] = _right, _left


def mirror_rows(rows: np.ndarray, centred: bool = False) -> np.ndarray:
    """(33, >=1) rows mirrored: x negated (``centred``, world/normalised coords) or 1 - x (image coords)."""
    out = rows[SWAP_ORDER].copy()
    out[:, 0] = -out[:, 0] if centred else 1.0 - out[:, 0]
    return out


def mirror_landmarks(landmarks: Landmarks | None) -> Landmarks | None:
    """The landmarks of the horizontally flipped image (None stays None: nobody in either)."""
    if landmarks is None:
        return None
    return Landmarks(image=mirror_rows(landmarks.image), world=mirror_rows(landmarks.world, centred=True))
