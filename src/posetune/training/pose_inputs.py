"""Landmark features beside the decoded images, for the `pose` and `NAME+pose` backbones.

Landmarks are found once per file, in the full image (the landmark cache), never again per crop: a random
resized crop keeps the body's pose, and the features are normalised to the body (hip centre, torso size), so
the crop's offset and scale do not change them. A horizontal flip is the one augmentation that does: there the
mirrored landmarks (left and right swapped, x reflected) are used, so pixels and features always agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from posetune.console import Reporter
from posetune.data.pipeline import SeededItems

if TYPE_CHECKING:
    from posetune.data.layouts import DataIndex
    from posetune.data.pipeline import DecodedDataset


class PoseDataset(SeededItems, torch.utils.data.Dataset):
    """((uint8 image, landmark features), label): a DecodedDataset's images with their landmark features.

    Augmented, it crops and flips with the images' TrainAugment, the features flipped with the image."""

    def __init__(self, base: DecodedDataset, features: torch.Tensor, mirrored: torch.Tensor, augment: bool):
        self.images, self.labels, self.preprocess = base.images, base.labels, base.preprocess
        self.features, self.mirrored = features, mirrored
        self.augment = base.augment  # its batch colour jitter runs in the training step, as for images
        self.crop_flip = base.augment if augment else None  # the images' own TrainAugment: same crops and flips

    def __len__(self) -> int:
        return len(self.images)

    def item(self, i: int, generator: torch.Generator | None):
        img = self.images[i]
        if self.crop_flip is None:
            return (self.preprocess.eval_crop(img), self.features[i]), self.labels[i]
        img, flipped = self.crop_flip.crop_and_flip(img, generator)
        return (img, (self.mirrored if flipped else self.features)[i]), self.labels[i]


def landmark_features(paths: list[str], reporter: Reporter) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, mirrored features) of every file, (N, FEATURE_DIM) each; BlazePose runs once per file."""
    from posetune.pose.cache import LandmarkCache
    from posetune.pose.landmarks import require_mediapipe
    from posetune.pose.matrix import feature_matrix

    require_mediapipe()  # the one-line install hint, before any image is read
    cache = LandmarkCache()
    plain = feature_matrix(paths, cache, reporter)
    mirrored = feature_matrix(paths, cache, None, flipped=[True] * len(paths))  # all cache hits now
    return torch.from_numpy(plain), torch.from_numpy(mirrored)


def attach_pose(index: DataIndex, datasets: dict[str, DecodedDataset], reporter: Reporter) -> tuple[dict[str, PoseDataset], dict[str, dict[str, int]]]:
    """Each split's dataset with landmark features, and {split: {class: images with no person found}}
    (printed as a table here; the run records it in model.json)."""
    from posetune.pose.matrix import no_person_counts

    out, missing = {}, {}
    for split, ds in datasets.items():
        paths = [s.path for s in index.split(split)]
        plain, mirrored = landmark_features(paths, reporter)
        out[split] = PoseDataset(ds, plain, mirrored, augment=ds.augment is not None)
        missing[split] = no_person_counts(plain.numpy(), ds.labels, index.classes)
    rows = [{"split": s, **counts, "total": sum(counts.values())} for s, counts in missing.items()]
    reporter.table("no person found (BlazePose): landmark features zero, presence 0", rows)
    return out, missing
