"""Body landmarks (BlazePose, via the optional ``posetune[pose]`` extra) as features of their own.

- ``landmarks``: one shared mediapipe Pose per process; image -> 33 x (x, y, z, visibility) or None.
- ``features``: normalisation per MediaPipe's pose-classification guide, joint angles, distances, presence.
- ``mirroring``: the left<->right swap a horizontal flip needs.
- ``cache``: landmarks on disk, keyed like the decoded-image cache.
- ``drawing``: the skeleton over the photo (PIL), for overlays and reports.

mediapipe is imported lazily inside functions: ``import posetune`` never needs it.
"""

from posetune.pose.features import FEATURE_DIM, pose_features
from posetune.pose.landmarks import NUM_LANDMARKS, Landmarks, extract_landmarks, require_mediapipe
from posetune.pose.mirroring import mirror_landmarks

__all__ = ["FEATURE_DIM", "NUM_LANDMARKS", "Landmarks", "extract_landmarks", "mirror_landmarks", "pose_dim_of",
           "pose_features", "require_mediapipe"]


def pose_dim_of(spec) -> int | None:
    """The landmark feature size the model of a backbone spec takes: FEATURE_DIM for `pose` / `NAME+pose`
    (``spec.uses_pose``), None for an image backbone (posetune.backbones leaves it to the layers above)."""
    return FEATURE_DIM if spec.uses_pose else None
