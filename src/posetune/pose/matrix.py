"""Landmark features of many images at once: the block a `pose` / `NAME+pose` training reads.

Landmarks are found once per file (the landmark cache); a horizontal flip is applied to the landmarks, not
looked for again in the flipped pixels, so augmentation and features stay consistent.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from posetune.console import Reporter
from posetune.pose.cache import LandmarkCache
from posetune.pose.features import FEATURE_DIM, pose_features, presence
from posetune.pose.mirroring import mirror_landmarks


def feature_matrix(paths: Sequence[str | os.PathLike], cache: LandmarkCache, reporter: Reporter | None = None,
                   flipped: Sequence[bool] | None = None) -> np.ndarray:
    """(len(paths), FEATURE_DIM) float32; row i mirrored when ``flipped[i]``; a row of zeros (presence 0) where
    nobody was found. A file that cannot be decoded raises as the image decoder does (callers skip it first)."""
    out = np.zeros((len(paths), FEATURE_DIM), np.float32)
    advance = reporter.start("landmarks (BlazePose, cached)", len(paths)) if reporter else None
    try:
        for i, path in enumerate(paths):
            found, width, height = cache.get_or_extract(path)
            if flipped is not None and flipped[i]:
                found = mirror_landmarks(found)
            out[i] = pose_features(found, width, height)
            if advance:
                advance(1)
    finally:
        if reporter:
            reporter.stop()
    return out


def no_person_counts(features: np.ndarray, labels: Sequence[int], classes: Sequence[str]) -> dict[str, int]:
    """{class: images with no person found}, every class listed (0 included): what training prints and records."""
    missing = presence(features) == 0
    counts = np.bincount(np.asarray(labels, dtype=np.int64)[missing], minlength=len(classes))  # an empty split too
    return {name: int(n) for name, n in zip(classes, counts)}
