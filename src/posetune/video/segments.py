"""Per-frame probabilities -> a steady label: smoothing (EMA, minimum hold) and held segments.

>>> times = [0.0, 0.2, 0.4, 0.6]
>>> [s.pose for s in segments_of(times, ["tree", "tree", "plank", "plank"], [0.9, 0.8, 0.7, 0.9], 0.2)]
['tree', 'plank']
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

SMOOTHING = ("ema+hold", "ema", "hold", "none")
# A segment is the time a pose is *held*: its leading and trailing frames count only once the smoothed probability
# has reached this share of the segment's median. Walking from one pose to the next is then a gap between
# segments, not the end of one and the start of the next (a transition frame often looks like either pose).
SETTLED = 0.9


@dataclass(frozen=True)
class Segment:
    """``pose`` held from ``start`` to ``end`` seconds, at this mean (smoothed) probability."""

    pose: str
    start: float
    end: float
    mean_probability: float

    @property
    def duration(self) -> float:
        return round(self.end - self.start, 3)

    def as_dict(self) -> dict:
        return {**asdict(self), "duration": self.duration}


def ema(probabilities: np.ndarray, alpha: float, centred: bool = False) -> np.ndarray:
    """Exponential moving average over frames (rows): ``s[t] = alpha * p[t] + (1 - alpha) * s[t-1]``.

    ``centred``: run it forward, then backward over the result (zero phase, as scipy's filtfilt): a recorded video
    is smoothed without the causal average's lag, so a change of pose is dated when it happens, not frames later.
    The live page cannot look ahead and keeps the causal form."""
    out = np.array(probabilities, dtype=np.float64, copy=True)
    for t in range(1, len(out)):
        out[t] = alpha * out[t] + (1 - alpha) * out[t - 1]
    return ema(out[::-1], alpha)[::-1].copy() if centred else out


def hold(labels: Sequence[int], times: Sequence[float], min_hold: float) -> list[int]:
    """Switch to a new label only once it has lasted ``min_hold`` seconds; the switch is dated back to when it
    began, so segments keep their true start and brief flickers vanish."""
    out = list(labels)
    if not out:
        return out
    current, i = out[0], 1
    while i < len(out):
        if labels[i] == current:
            out[i] = current
            i += 1
            continue
        j = i
        while j < len(labels) and labels[j] == labels[i]:
            j += 1
        lasted = (times[j] if j < len(times) else times[-1] + _step(times)) - times[i]
        if lasted + 1e-6 >= min_hold:
            current = labels[i]
        out[i:j] = [current] * (j - i)
        i = j
    return out


def _step(times: Sequence[float]) -> float:
    return float(np.median(np.diff(times))) if len(times) > 1 else 0.0


def smooth(probabilities: np.ndarray, times: Sequence[float], method: str = "ema+hold", alpha: float = 0.5,
           min_hold: float = 1.0, centred: bool = False) -> tuple[list[int], np.ndarray]:
    """(label index per frame, smoothed probabilities) under ``method`` (one of :data:`SMOOTHING`); ``centred``
    as in :func:`ema`."""
    probs = ema(probabilities, alpha, centred) if "ema" in method else np.asarray(probabilities, dtype=np.float64)
    labels = [int(i) for i in probs.argmax(1)] if len(probs) else []
    if "hold" in method:
        labels = hold(labels, times, min_hold)
    return labels, probs


def segments_of(times: Sequence[float], labels: Sequence[str], probabilities: Sequence[float],
                frame_seconds: float, settled: float = 0.0) -> list[Segment]:
    """Runs of one label -> segments; each frame stands for ``frame_seconds`` from its time. With ``settled``
    (e.g. :data:`SETTLED`) each run is trimmed to where the pose is held: its edge frames below ``settled`` x the
    run's median probability are left out (a run never trims to nothing)."""
    out: list[Segment] = []
    start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            first, last = _held(probabilities[start:i], settled)
            first, last = start + first, start + last
            end = times[last + 1] if last + 1 < len(labels) else times[-1] + frame_seconds
            out.append(Segment(labels[start], round(times[first], 3), round(end, 3),
                               round(float(np.mean(probabilities[first:last + 1])), 4)))
            start = i
    return out


def _held(probabilities: Sequence[float], settled: float) -> tuple[int, int]:
    """(first, last) index of a run's held part: the edges below ``settled`` x its median trimmed."""
    p = np.asarray(probabilities, dtype=np.float64)
    above = np.flatnonzero(p >= settled * float(np.median(p))) if settled > 0 else np.arange(len(p))
    return (int(above[0]), int(above[-1])) if len(above) else (0, len(p) - 1)


def label_at(segments: Sequence[Segment], t: float) -> str | None:
    for s in segments:
        if s.start <= t < s.end:
            return s.pose
    return None


def score_segments(segments: Sequence[Segment], truth: Sequence[dict], tolerance: float = 1.0,
                   resolution: float = 0.05) -> dict:
    """Against ground-truth holds (``pose``, ``start``, ``end``): the share of held time labelled with the right
    pose, and the share of holds whose predicted segment of that pose starts and ends within ``tolerance`` s."""
    right = total = 0
    bounded = 0
    for h in truth:
        start, end = float(h["start"]), float(h["end"])
        grid = np.arange(start, end, resolution)
        right += sum(label_at(segments, t) == h["pose"] for t in grid)
        total += len(grid)
        same = [s for s in segments if s.pose == h["pose"] and s.start < end and s.end > start]
        if same:
            best = max(same, key=lambda s: min(s.end, end) - max(s.start, start))
            last = truth[-1] is h  # the video ends with the last hold: its end is the video's
            bounded += abs(best.start - start) <= tolerance and (last or abs(best.end - end) <= tolerance)
    return {"time_accuracy": round(right / total, 4) if total else None,
            "boundaries_within": round(bounded / len(truth), 4) if truth else None, "tolerance_s": tolerance}
