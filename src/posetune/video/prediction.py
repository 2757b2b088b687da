"""``posetune predict RUN session.mp4``: sampled frames -> batched predictions (either engine) -> smoothed
labels -> segments, per-frame rows and a timeline PNG. A video that cannot be read is reported, not fatal. A
`pose` run labels the frames where BlazePose finds nobody 'no person detected' (segments may hold it too).

>>> results = predict_video("runs/yoga", ["session.mp4"], fps=5)   # doctest: +SKIP
>>> [(s.pose, s.start, s.end) for s in results[0].segments]        # doctest: +SKIP
[('tree', 0.0, 4.2), ('plank', 4.2, 9.8)]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from posetune.checks import Choice, Float, OutputPath, option
from posetune.data.images import prefetched
from posetune.predict.loading import PredictOptions, choose_engine, load
from posetune.predict.prediction import NO_PERSON, check_no_person_label, landmarks_of
from posetune.video.decoding import VideoError, sample_frames
from posetune.video.segments import SETTLED, SMOOTHING, Segment, segments_of, smooth


@dataclass
class VideoOptions(PredictOptions):
    """`posetune predict`'s options for videos (``posetune.predict_video`` takes the same names)."""

    fps: float = option(5.0, Float(0.1, 60.0))
    smooth: str = option("ema+hold", Choice(*SMOOTHING))
    ema_alpha: float = option(0.5, Float(0.0, 1.0, low_open=True))
    min_hold: float = option(1.0, Float(0.0, 60.0))
    timeline: str | None = option(None, OutputPath(folder=True))  # one NAME-timeline.png per video


@dataclass
class VideoResult:
    """One video's answer: per-frame times, raw and smoothed labels, segments; ``error`` when unreadable."""

    path: str
    times: list[float] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    raw_probability: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    probability: list[float] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    timeline: str | None = None
    error: str | None = None

    def frame_rows(self) -> list[dict]:
        return [{"path": self.path, "time": round(t, 3), "prediction": r, "probability": round(p, 6),
                 "smoothed": lab, "smoothed_probability": round(sp, 6)}
                for t, r, p, lab, sp in zip(self.times, self.raw, self.raw_probability, self.labels, self.probability)]

    def as_dict(self) -> dict:
        return {"path": self.path, "frames": len(self.times), "segments": [s.as_dict() for s in self.segments],
                "timeline": self.timeline, "error": self.error}


def frame_probabilities(clf, path: str, fps: float, batch_size: int,
                        on_frames: Callable[[int], None] | None = None) -> tuple[list[float], np.ndarray, list[bool]]:
    """(times, a frames x classes array, whether each frame shows a person) for ``path`` sampled at ``fps``, one
    forward pass per ``batch_size``. Image-only runs look for nobody: every frame counts as showing one."""
    times, probs, pending, found = [], [], [], []
    frames = ((t, clf.decode(rgb)) for t, rgb in sample_frames(path, fps))
    for t, item in prefetched(frames, ahead=2 * batch_size):  # the next frames decode while the model runs
        times.append(t)
        uses_pose, landmarks = landmarks_of(item)
        found.append(landmarks is not None or not uses_pose)
        pending.append(item)
        if len(pending) >= batch_size:
            probs.append(clf.probabilities(pending))
            pending.clear()
            if on_frames:
                on_frames(batch_size)
    if pending:
        probs.append(clf.probabilities(pending))
        if on_frames:
            on_frames(len(pending))
    return times, np.concatenate(probs), found


def with_no_person(probs: np.ndarray, found: list[bool], classes: list[str]) -> tuple[np.ndarray, list[str]]:
    """A `pose` run's frames where nobody was found become a 'no person detected' column of their own (1 there,
    0 elsewhere), so smoothing and segments treat it like a label and never show a class for them."""
    if all(found):
        return probs, classes
    extended = np.zeros((len(probs), len(classes) + 1), np.float32)
    present = np.asarray(found, bool)
    extended[present, :-1] = probs[present]
    extended[~present, -1] = 1.0
    return extended, [*classes, NO_PERSON]


def _shown(probability, label: str) -> float:
    """A frame's probability as reported: 'no person detected' is no class, so it shows 0."""
    return 0.0 if label == NO_PERSON else float(probability)


def predict_one_video(clf, path: str, opts: VideoOptions, on_frames=None) -> VideoResult:
    """Predict, smooth and segment one video; an unreadable or truncated one comes back with ``error`` set."""
    try:
        times, probs, found = frame_probabilities(clf, path, opts.fps, opts.batch_size, on_frames)
    except VideoError as exc:
        return VideoResult(path, error=str(exc))
    classes = list(clf.classes)
    if clf.kind == "pose":  # fusion runs answer a class from the image alone
        check_no_person_label("pose", classes)
        probs, classes = with_no_person(probs, found, classes)
    raw = probs.argmax(1)
    # a recorded video: centred smoothing (no lag) and segments trimmed to the held frames (video/segments.py)
    idx, smoothed = smooth(probs, times, opts.smooth, opts.ema_alpha, opts.min_hold, centred=True)
    labels = [classes[i] for i in idx]
    top = [_shown(smoothed[k, i], labels[k]) for k, i in enumerate(idx)]
    result = VideoResult(path, times, [classes[i] for i in raw],
                         [_shown(probs[k, i], classes[i]) for k, i in enumerate(raw)],
                         labels, top, segments_of(times, labels, top, 1.0 / opts.fps, SETTLED))
    if opts.timeline:
        from posetune.video.timeline import plot_timeline

        out = Path(opts.timeline) / f"{Path(path).stem}-timeline.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        result.timeline = str(plot_timeline(Path(path).name, times, top, result.segments, classes, out))
    return result


def predict_video(run: str | Path, paths, on_frames=None, clf=None, **options) -> list[VideoResult]:
    """Predict video files (as `posetune predict RUN session.mp4`): options as :class:`VideoOptions`, the engine
    torch unless asked (auto is the CLI's). With ``csv`` the per-frame rows of every video are written."""
    opts = VideoOptions.build("posetune.predict_video", run=run, paths=paths, **{"engine": "torch", **options})
    if clf is None:
        engine, _ = choose_engine(opts.run, opts.engine, opts.device)
        clf = load(opts.run, device=opts.device, engine=engine)
    results = [predict_one_video(clf, str(p), opts, on_frames) for p in opts.paths]
    if opts.csv:
        from posetune.io import write_csv

        write_csv(opts.csv, [r for res in results for r in res.frame_rows()],
                  header=["path", "time", "prediction", "probability", "smoothed", "smoothed_probability"])
    return results
