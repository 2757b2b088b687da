"""What every engine returns, and the batching loop they share: items -> decoded pixels -> Predictions.

Torch-free: the ONNX engine uses it in deployments without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np

from posetune.checks import Float
from posetune.data.images import ImageError, is_image_path, map_threaded
from posetune.errors import UsageError

if TYPE_CHECKING:
    from posetune.pose.landmarks import Landmarks

UNSURE = "unsure"  # the label of a prediction whose top probability is below ``min_confidence``
NO_PERSON = "no person detected"  # a `pose` run's answer when BlazePose finds nobody: never a class
MIN_CONFIDENCE = Float(0.0, 1.0)


@dataclass
class Prediction:
    """One image's answer. ``probability`` is the top class's (after the run's temperature); when it is below
    the ``min_confidence`` asked for, ``label`` is ``"unsure"``, ``unsure`` is True and ``top_k`` still ranks
    the classes. A `pose` run that finds nobody answers ``"no person detected"`` (``no_person`` True,
    probability 0.0, ``top_k`` empty). ``probabilities``: every class's as the model gave them, in class order
    (not in ``as_dict``; evaluate scores them). ``pose_detected``: None for image-only runs, else whether
    BlazePose found a person (``landmarks`` then holds them). ``overlay``: the file `--overlay` wrote."""

    path: str
    label: str
    probability: float
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    unsure: bool = False
    probabilities: np.ndarray | None = field(default=None, repr=False, compare=False)
    no_person: bool = False
    pose_detected: bool | None = None
    landmarks: Landmarks | None = field(default=None, repr=False, compare=False)
    overlay: str | None = None

    def pose_json(self) -> dict | None:
        """The ``pose`` field: None for image-only runs, else {"detected": bool, "landmarks": 33 x [x, y,
        visibility] (x, y normalised to the full image, 4 decimals) or []}."""
        if self.pose_detected is None:
            return None
        found = self.landmarks if self.pose_detected else None
        return {"detected": found is not None, "landmarks": found.as_json() if found is not None else []}

    def as_dict(self) -> dict:
        return {"path": self.path, "prediction": self.label, "probability": self.probability,
                "top_k": [{"label": c, "probability": p} for c, p in self.top_k], "unsure": self.unsure,
                "no_person": self.no_person, "pose": self.pose_json(), "overlay": self.overlay, "error": self.error}


def write_predictions_csv(predictions: Sequence[Prediction], path: str | Path) -> None:
    """path,prediction,probability, then top1,p1,top2,p2,... (an unreadable file keeps an empty prediction)."""
    from posetune.io import write_csv

    k = max((len(p.top_k) for p in predictions), default=0)
    header = ["path", "prediction", "probability"] + [f"{kind}{i + 1}" for i in range(k) for kind in ("top", "p")]
    rows = [[p.path, p.label, p.probability] + [x for c, pr in p.top_k for x in (c, pr)] for p in predictions]
    write_csv(path, rows, header=header)


def collect_paths(paths: Sequence[str | Path], allow_empty: bool = False) -> list[str]:
    """Files as given; folders expanded to the images inside them (recursively, sorted). Nothing to predict
    is a UsageError unless ``allow_empty``."""
    found: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(str(f) for f in sorted(p.rglob("*")) if f.is_file() and is_image_path(f)
                         and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.exists():
            found.append(str(p))
        else:
            raise UsageError(f"no such file or folder: {p}")
    if not found and not allow_empty:
        names = ", ".join(str(p) for p in paths) or "(none given)"
        raise UsageError(f"no images in {names}; give image files or folders with .jpg/.png/... inside")
    return found


def item_name(item) -> str:
    return str(item) if isinstance(item, (str, Path)) else "<image>"


def decoded(items: list, decode: Callable[[object], object]) -> Iterator[tuple[str, object, str | None]]:
    """(name, ``decode(item)``, None), or (name, None, reason) for an unreadable item, in input order.

    One item (a server request) decodes in line; more decode in threads, a bounded window ahead."""
    def one(item):
        try:
            return item_name(item), decode(item), None
        except ImageError as exc:
            return item_name(item), None, str(exc)

    if len(items) <= 1:
        return map(one, items)
    return map_threaded(one, items)


def check_min_confidence(min_confidence: float | None, classes: Sequence[str]) -> float | None:
    """A threshold in [0, 1] (None: always answer a class); refused when a class is itself named 'unsure'."""
    if min_confidence is None:
        return None
    min_confidence = MIN_CONFIDENCE(min_confidence, "--min-confidence")
    if UNSURE in classes:
        raise UsageError(f"--min-confidence answers '{UNSURE}' below the threshold, but this model has a class "
                         f"named '{UNSURE}'; drop --min-confidence or rename that class")
    return min_confidence


def check_no_person_label(kind: str, classes: Sequence[str]) -> None:
    """A `pose` run answers 'no person detected' when BlazePose finds nobody: refused when a class is named so."""
    if kind == "pose" and NO_PERSON in classes:
        raise UsageError(f"this pose run answers '{NO_PERSON}' when BlazePose finds nobody, but it has a class "
                         f"named '{NO_PERSON}'; rename that class folder and train again")


def landmarks_of(decoded_item) -> tuple[bool, Landmarks | None]:
    """(whether the run uses pose, the landmarks or None): a decoded item that is a (pixels, features, landmarks)
    triple is a pose or fusion run's, as both engines' ``decode`` give it; anything else is pixels alone."""
    if isinstance(decoded_item, tuple) and len(decoded_item) == 3:
        return True, decoded_item[2]
    return False, None


def one_prediction(name: str, p: np.ndarray, decoded_item, classes: list[str], top_k: int,
                   min_confidence: float | None, kind: str) -> Prediction:
    """One image's Prediction from its probabilities (the ranking, 'unsure', 'no person detected', the pose)."""
    uses_pose, found = landmarks_of(decoded_item)
    pose = {"pose_detected": found is not None, "landmarks": found} if uses_pose else {}
    probs = np.array(p, dtype=np.float32)
    if uses_pose and found is None and kind == "pose":  # landmarks alone, and none: no class to answer
        return Prediction(name, NO_PERSON, 0.0, [], no_person=True, probabilities=probs, **pose)
    order = np.argsort(-p, kind="stable")[:top_k]
    ranked = [(classes[j], round(float(p[j]), 6)) for j in order]
    unsure = min_confidence is not None and ranked[0][1] < min_confidence  # as shown: rounded
    return Prediction(name, UNSURE if unsure else ranked[0][0], ranked[0][1], ranked, unsure=unsure,
                      probabilities=probs, **pose)


def batched_predictions(decoded: Iterable[tuple[str, object, str | None]], n: int,
                        probabilities: Callable[[list], np.ndarray], classes: list[str], top_k: int = 3,
                        batch_size: int = 32, on_step: Callable[[int], None] | None = None,
                        min_confidence: float | None = None, kind: str = "image") -> list[Prediction]:
    """The batching both engines share: (name, decoded item, error) in input order -> one Prediction each.

    ``probabilities(list_of_decoded_items)`` returns a (len, classes) array for one batch (after the
    temperature); unreadable items keep their error and never stop the rest. Below ``min_confidence`` the label
    is 'unsure'. A decoded item that is a (pixels, landmark features, landmarks or None) triple gives the
    Prediction its pose; with ``kind="pose"`` (the run's kind, model.json) nobody found answers 'no person
    detected'.
    """
    min_confidence = check_min_confidence(min_confidence, classes)
    check_no_person_label(kind, classes)
    top_k = max(1, min(top_k, len(classes)))
    results: list[Prediction | None] = [None] * n
    pending: list[tuple[int, str, object]] = []

    def flush() -> None:
        if not pending:
            return
        for (i, name, item), p in zip(pending, probabilities([px for _, _, px in pending])):
            results[i] = one_prediction(name, p, item, classes, top_k, min_confidence, kind)
        if on_step:
            on_step(len(pending))
        pending.clear()

    for i, (name, pixels, error) in enumerate(decoded):
        if error is not None:
            results[i] = Prediction(name, "", 0.0, [], error=error)
            if on_step:
                on_step(1)
            continue
        pending.append((i, name, pixels))
        if len(pending) >= batch_size:
            flush()
    flush()
    return results  # type: ignore[return-value]
