"""Landmarks on disk, computed once per image: keyed like the decoded-image cache (path, size, mtime, settings).

An entry is a (1 + 2 x 33, 4) float32 array: row 0 = (found, width, height, 0), then the image landmarks, then
the world landmarks; a miss of the detector is stored too (found 0), so nobody is looked for twice.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from posetune.data.cache import DiskCache
from posetune.pose.landmarks import NUM_LANDMARKS, OFFLINE_COMPLEXITY, Landmarks, extract_landmarks

CACHE_VERSION = 1  # bump when what an entry holds changes


def default_landmark_cache_dir() -> Path:
    from posetune.data.cache import default_cache_dir

    return default_cache_dir().parent / "landmarks"


def _pack(found: Landmarks | None, width: int, height: int) -> np.ndarray:
    entry = np.zeros((1 + 2 * NUM_LANDMARKS, 4), np.float32)
    entry[0, :3] = (found is not None, width, height)
    if found is not None:
        entry[1:1 + NUM_LANDMARKS], entry[1 + NUM_LANDMARKS:] = found.image, found.world
    return entry


def _unpack(entry: np.ndarray) -> tuple[Landmarks | None, int, int]:
    found, width, height = float(entry[0, 0]), int(entry[0, 1]), int(entry[0, 2])
    if not found:
        return None, width, height
    return Landmarks(image=np.array(entry[1:1 + NUM_LANDMARKS]), world=np.array(entry[1 + NUM_LANDMARKS:])), \
        width, height


class LandmarkCache:
    """``get_or_extract(path)`` -> (landmarks or None, width, height); ``hits``/``misses`` count what it did."""

    def __init__(self, root: str | Path | None = None, model_complexity: int = OFFLINE_COMPLEXITY):
        settings = f"blazepose|complexity={model_complexity}|v{CACHE_VERSION}"
        self.disk = DiskCache(root or default_landmark_cache_dir(), settings)
        self.model_complexity, self.hits, self.misses = model_complexity, 0, 0

    def get(self, path: str | os.PathLike) -> tuple[Landmarks | None, int, int] | None:
        entry = self.disk.get(str(path))
        if entry is None or entry.shape != (1 + 2 * NUM_LANDMARKS, 4):
            return None
        return _unpack(entry)

    def get_or_extract(self, path: str | os.PathLike, rgb: np.ndarray | None = None):
        """Cached landmarks of the image file at ``path``; decodes it (or uses ``rgb``, its pixels) on a miss."""
        cached = self.get(path)
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        if rgb is None:
            from PIL import Image, ImageOps

            with Image.open(path) as im:
                rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        height, width = rgb.shape[:2]
        found = extract_landmarks(rgb, self.model_complexity)
        self.disk.put(str(path), _pack(found, width, height))
        return found, width, height
