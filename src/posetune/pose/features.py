"""Landmark features, normalised as in MediaPipe's pose-classification guide.

Landmarks go to pixel units (x*w, y*h, z*w) so the body keeps its shape whatever the image's aspect; the hip
centre is subtracted; everything is divided by the pose size = max(2.5 x torso size, the largest distance from
the hip centre); z is down-weighted (BlazePose's depth is the least reliable coordinate). Features: the 33
normalised (x, y, z), joint angles (elbows, shoulders, hips, knees) as angle / pi, selected pairwise distances,
and a presence flag. No person: all zeros, presence 0.
"""

from __future__ import annotations

import numpy as np

from posetune.pose.landmarks import NUM_LANDMARKS, Landmarks

TORSO_SIZE_MULTIPLIER = 2.5
Z_WEIGHT = 0.5
L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = 11, 12, 13, 14, 15, 16
L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = 23, 24, 25, 26, 27, 28

# (a, vertex, b): the angle at the vertex
JOINT_ANGLES = (
    (L_SHOULDER, L_ELBOW, L_WRIST), (R_SHOULDER, R_ELBOW, R_WRIST),  # elbows
    (L_HIP, L_SHOULDER, L_ELBOW), (R_HIP, R_SHOULDER, R_ELBOW),  # shoulders
    (L_SHOULDER, L_HIP, L_KNEE), (R_SHOULDER, R_HIP, R_KNEE),  # hips
    (L_HIP, L_KNEE, L_ANKLE), (R_HIP, R_KNEE, R_ANKLE),  # knees
)
# the guide's embedding distances: one joint, two joints, across the body
PAIRWISE_DISTANCES = (
    (L_SHOULDER, L_ELBOW), (R_SHOULDER, R_ELBOW), (L_ELBOW, L_WRIST), (R_ELBOW, R_WRIST),
    (L_HIP, L_KNEE), (R_HIP, R_KNEE), (L_KNEE, L_ANKLE), (R_KNEE, R_ANKLE),
    (L_SHOULDER, L_WRIST), (R_SHOULDER, R_WRIST), (L_HIP, L_ANKLE), (R_HIP, R_ANKLE),
    (L_HIP, L_WRIST), (R_HIP, R_WRIST), (L_SHOULDER, L_ANKLE), (R_SHOULDER, R_ANKLE),
    (L_ELBOW, R_ELBOW), (L_KNEE, R_KNEE), (L_WRIST, R_WRIST), (L_ANKLE, R_ANKLE),
)
FEATURE_DIM = NUM_LANDMARKS * 3 + len(JOINT_ANGLES) + len(PAIRWISE_DISTANCES) + 1


def normalise(landmarks: Landmarks, width: int, height: int) -> np.ndarray:
    """(33, 3) hip-centred, pose-size-scaled coordinates (y grows downwards, as in the image)."""
    xyz = landmarks.image[:, :3].astype(np.float64) * np.array([width, height, width * Z_WEIGHT])
    hip_centre = (xyz[L_HIP] + xyz[R_HIP]) / 2
    shoulder_centre = (xyz[L_SHOULDER] + xyz[R_SHOULDER]) / 2
    centred = xyz - hip_centre
    torso = np.linalg.norm((shoulder_centre - hip_centre)[:2])
    pose_size = max(torso * TORSO_SIZE_MULTIPLIER, float(np.linalg.norm(centred[:, :2], axis=1).max()))
    return centred / max(pose_size, 1e-6)


def joint_angles(coords: np.ndarray) -> np.ndarray:
    """Each angle of JOINT_ANGLES in [0, 1] (angle / pi), from the x, y plane."""
    out = np.empty(len(JOINT_ANGLES))
    for i, (a, vertex, b) in enumerate(JOINT_ANGLES):
        u, v = coords[a, :2] - coords[vertex, :2], coords[b, :2] - coords[vertex, :2]
        cos = float(u @ v) / max(float(np.linalg.norm(u) * np.linalg.norm(v)), 1e-9)
        out[i] = np.arccos(np.clip(cos, -1.0, 1.0)) / np.pi
    return out


def pose_features(landmarks: Landmarks | None, width: int, height: int) -> np.ndarray:
    """A (FEATURE_DIM,) float32 vector for one image; zeros with presence 0 when nobody was found.

    >>> pose_features(None, 640, 480).shape == (FEATURE_DIM,)
    True
    """
    if landmarks is None:
        return np.zeros(FEATURE_DIM, np.float32)
    coords = normalise(landmarks, width, height)
    distances = [np.linalg.norm(coords[a] - coords[b]) for a, b in PAIRWISE_DISTANCES]
    return np.concatenate([coords.ravel(), joint_angles(coords), distances, [1.0]]).astype(np.float32)


def presence(features: np.ndarray) -> np.ndarray:
    """The presence flag(s) of one vector or a batch of them."""
    return features[..., -1]
