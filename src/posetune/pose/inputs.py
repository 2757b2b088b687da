"""One image to predict (a path, PIL image or array) -> its landmark features and landmarks, at full size.

BlazePose looks at the whole image as given, never at the model's crop (as in training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from posetune.data.images import load_image, to_rgb
from posetune.pose.features import pose_features
from posetune.pose.landmarks import Landmarks, extract_landmarks


def full_rgb(item) -> np.ndarray:
    """HxWx3 uint8 RGB of ``item`` at its own size (raises ImageError for an unreadable file)."""
    if isinstance(item, (str, Path)):
        img = load_image(item)
    elif isinstance(item, Image.Image):
        img = to_rgb(item)
    else:
        img = to_rgb(Image.fromarray(np.asarray(item, dtype=np.uint8)))
    return np.asarray(img, dtype=np.uint8)


def image_pose(item) -> tuple[np.ndarray, Landmarks | None]:
    """(FEATURE_DIM float32 features, landmarks or None when nobody was found)."""
    rgb = full_rgb(item)
    found = extract_landmarks(rgb)
    return pose_features(found, rgb.shape[1], rgb.shape[0]), found
