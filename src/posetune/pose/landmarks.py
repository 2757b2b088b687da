"""BlazePose landmarks for one image, through mediapipe's legacy ``solutions.pose`` (offline, complexity 1)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from dataclasses import dataclass

import numpy as np

from posetune.errors import UsageError

NUM_LANDMARKS = 33
OFFLINE_COMPLEXITY = 1  # the only model the 0.10.14 wheel ships; 0 and 2 download theirs at first use
INSTALL_HINT = ("posetune[pose] needs mediapipe 0.10.14 (wheels for CPython 3.8-3.12): "
                "pip install 'posetune[pose]' on Python <= 3.12")

_pose = None  # one per process: creating one costs ~0.1 s
_pose_lock = threading.Lock()  # and it is not thread-safe


@dataclass(frozen=True)
class Landmarks:
    """33 rows of (x, y, z, visibility): x, y normalised to [0, 1] of the image's width and height (mediapipe's
    image landmarks), z on x's scale; ``world`` the same joints in metres around the hip centre."""

    image: np.ndarray  # (33, 4) float32
    world: np.ndarray  # (33, 4) float32

    def as_json(self) -> list[list[float]]:
        """[[x, y, visibility], ... 33 rows], 4 decimals: the ``pose.landmarks`` field of predict's JSON (x, y are
        mediapipe's, normalised to the image as given; a joint outside the frame may fall just outside 0..1)."""
        return [[round(float(x), 4), round(float(y), 4), round(float(v), 4)] for x, y, _, v in self.image]


def require_mediapipe():
    """The mediapipe module, or a one-line UsageError (exit 2) saying how to get it."""
    if sys.version_info >= (3, 13):
        raise UsageError(f"{INSTALL_HINT}; this is Python {sys.version_info[0]}.{sys.version_info[1]}")
    # mediapipe's C++ side logs INFO lines (absl, TFLite) to stderr at import and first use
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import mediapipe
        from mediapipe.python.solutions import pose  # noqa: F401  (0.10.31+ removed solutions)
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return mediapipe


def check_complexity(model_complexity: int) -> None:
    if model_complexity != OFFLINE_COMPLEXITY:
        raise UsageError(f"pose model complexity {model_complexity} downloads its model at first use (posetune runs "
                         f"offline): use model complexity {OFFLINE_COMPLEXITY}, the model mediapipe's wheel ships")


@contextlib.contextmanager
def _quiet_native_stderr():
    """TFLite and absl print INFO/W lines from C++ before any log level applies: fd 2 goes to /dev/null for the
    Pose's creation and first image only (Python exceptions still propagate with their messages)."""
    try:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _shared_pose():
    """(the process's Pose, whether it is new: its first image logs too)."""
    global _pose
    if _pose is None:
        mp = require_mediapipe()
        with _quiet_native_stderr():
            _pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=OFFLINE_COMPLEXITY,
                                           enable_segmentation=False)
        return _pose, True
    return _pose, False


def _as_rows(landmark_list) -> np.ndarray:
    return np.array([[p.x, p.y, p.z, p.visibility] for p in landmark_list.landmark], dtype=np.float32)


def extract_landmarks(rgb: np.ndarray, model_complexity: int = OFFLINE_COMPLEXITY) -> Landmarks | None:
    """Landmarks of the most prominent person in an HxWx3 uint8 RGB array, or None when nobody is found.

    >>> from skimage.data import astronaut
    >>> extract_landmarks(astronaut()).image.shape
    (33, 4)
    """
    check_complexity(model_complexity)
    rgb = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    if rgb.ndim != 3 or min(rgb.shape[:2]) < 2:
        return None  # nothing a detector could find a body in
    with _pose_lock, warnings.catch_warnings():
        # mediapipe 0.10.14 calls a protobuf API that protobuf 4.x marks deprecated, on every image
        warnings.filterwarnings("ignore", message="SymbolDatabase.GetPrototype", category=UserWarning)
        pose, new = _shared_pose()
        with _quiet_native_stderr() if new else contextlib.nullcontext():
            result = pose.process(rgb)
    if result.pose_landmarks is None:
        return None
    world = _as_rows(result.pose_world_landmarks) if result.pose_world_landmarks is not None else \
        np.zeros((NUM_LANDMARKS, 4), np.float32)
    return Landmarks(image=_as_rows(result.pose_landmarks), world=world)
