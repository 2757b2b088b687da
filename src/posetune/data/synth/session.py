"""A synthetic yoga session as a video: one figure holding a sequence of poses, blending between them.

Every frame re-seeds the same generator, so body, clothes, background and camera effects stay put and only
the joint angles move; a transition interpolates the two templates' angles. The ground truth is the list of
holds (pose, start, end in seconds), written as a CSV beside the video.

>>> plan = session_plan(("tree", "plank"), hold=2.0, transition=1.0)
>>> [(s.pose, s.start, s.end) for s in plan]
[('tree', 0.0, 2.0), ('plank', 3.0, 5.0)]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from posetune.checks import SEED, Float, Int, Names, Options, OutputPath, option
from posetune.data.images import VIDEO_SUFFIXES
from posetune.data.synth.poses import KAGGLE_POSES, PoseTemplate, check_pose
from posetune.data.synth.render import MIN_SIZE, render_pose
from posetune.errors import InvalidOption

if TYPE_CHECKING:
    from PIL import Image


H264_SUFFIXES = (".mp4", ".m4v", ".mkv", ".mov")
# What a session is written as: every suffix predict reads but WebM (VP8/VP9/AV1 only; neither codec used here
# fits it); H.264 where the container takes it, MPEG-4 Part 2 in .avi.
SESSION_SUFFIXES = tuple(s for s in VIDEO_SUFFIXES if s != ".webm")


@dataclass
class SessionOptions(Options):
    """Every option of `posetune data synth --video` (same names as the flags), checked before rendering: the
    CLI validates them at the door and render_session validates through them, so the messages are the same."""

    video: str = option("", OutputPath(folder=False), flag="--video")
    poses: list[str] | None = option(None, Names("tree,plank,downdog", unique=True))
    hold: float = option(4.0, Float(0.0, 600.0, low_open=True))
    transition: float = option(1.5, Float(0.0, 60.0))
    fps: int = option(10, Int(1, 60))
    size: int = option(224, Int(MIN_SIZE, 1024))
    seed: int = option(0, Int(*SEED))

    def check_together(self, label: Callable[[str], str]) -> None:
        if self.size % 2:  # H.264 and MPEG-4 store 4:2:0 chroma: both sides must be even
            raise InvalidOption(f"{label('size')} must be even (4:2:0 video), not {self.size}; try {self.size + 1}")
        for pose in self.poses or ():
            try:
                check_pose(pose)
            except ValueError as exc:
                raise InvalidOption(f"{label('poses')}: {exc}") from None
        out = Path(self.video)
        if out.suffix.lower() not in SESSION_SUFFIXES:
            raise InvalidOption(f"{label('video')} {out}: give a video file name ending in {', '.join(SESSION_SUFFIXES)}")
        for path in (out, out.with_suffix(".csv")):
            if path.exists():
                raise InvalidOption(f"{path} exists; choose another {label('video')} name (nothing is overwritten)")


@dataclass(frozen=True)
class Hold:
    """One ground-truth segment: ``pose`` is held from ``start`` to ``end`` seconds."""

    pose: str
    start: float
    end: float


def session_plan(poses: Sequence[str], hold: float, transition: float) -> list[Hold]:
    """Holds of ``hold`` seconds each, ``transition`` seconds apart (the figure moves in between)."""
    plan, t = [], 0.0
    for pose in poses:
        plan.append(Hold(pose, round(t, 3), round(t + hold, 3)))
        t += hold + transition
    return plan


def frame_count(n_poses: int, hold: float, transition: float, fps: int) -> int:
    """Frames in a session of ``n_poses`` holds (it ends when the last hold does)."""
    return int(round((n_poses * (hold + transition) - transition) * fps))


def _blend(a: PoseTemplate, b: PoseTemplate, w: float) -> PoseTemplate:
    """The joint angles ``w`` of the way from ``a`` to ``b`` (the view switches half way)."""
    def mix(x, y):
        if isinstance(x, tuple):
            return tuple(mix(p, q) for p, q in zip(x, y))
        return (1 - w) * x + w * y

    pa, pb = (a.pelvis if a.pelvis is not None else a.torso), (b.pelvis if b.pelvis is not None else b.torso)
    return PoseTemplate(f"{a.name}->{b.name}", "transition", a.view if w < 0.5 else b.view, mix(a.torso, b.torso),
                        mix(a.neck, b.neck), mix(pa, pb), mix(a.arms, b.arms), mix(a.legs, b.legs))


def pose_at(plan: Sequence[Hold], t: float) -> PoseTemplate:
    """The figure's pose at ``t`` seconds: a template while held, a smooth blend while moving."""
    for i, h in enumerate(plan):
        if t < h.end or i == len(plan) - 1:
            return check_pose(h.pose)
        nxt = plan[i + 1]
        if t < nxt.start:
            w = (t - h.end) / (nxt.start - h.end)
            return _blend(check_pose(h.pose), check_pose(nxt.pose), 0.5 - 0.5 * np.cos(np.pi * w))
    return check_pose(plan[-1].pose)


def session_frames(plan: Sequence[Hold], frames: int, fps: int, size: int, seed: int) -> Iterator[Image.Image]:
    """The session's first ``frames`` frames, ``fps`` a second (one scene throughout: only the pose moves)."""
    for i in range(frames):
        yield render_pose(pose_at(plan, i / fps), np.random.default_rng(seed), size=size)


def render_session(out: str | Path, poses: Sequence[str] | None = None, hold: float = 4.0,
                   transition: float = 1.5, fps: int = 10, size: int = 224, seed: int = 0,
                   progress: Callable[[int, int], None] | None = None) -> dict:
    """Encode the session to ``out`` (H.264 in .mp4/.m4v/.mkv/.mov, MPEG-4 in .avi) and its holds to OUT.csv
    (``pose,start,end``). Refuses to replace an existing file. Returns what was written."""
    import av

    from posetune.io import write_csv

    opts = SessionOptions(video=str(out), poses=poses, hold=hold, transition=transition, fps=fps, size=size,
                          seed=seed).validate()
    out, truth = Path(opts.video), Path(opts.video).with_suffix(".csv")
    poses, hold, transition, fps, size = opts.poses or list(KAGGLE_POSES), opts.hold, opts.transition, opts.fps, opts.size
    plan = session_plan(poses, hold, transition)
    frames = frame_count(len(plan), hold, transition, fps)
    out.parent.mkdir(parents=True, exist_ok=True)
    codec = "libx264" if out.suffix.lower() in H264_SUFFIXES else "mpeg4"
    with av.open(str(out), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "fast"}
        for i, image in enumerate(session_frames(plan, frames, fps, size, seed)):
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
            if progress:
                progress(i + 1, frames)
        for packet in stream.encode():
            container.mux(packet)
    write_csv(truth, [{"pose": h.pose, "start": h.start, "end": h.end} for h in plan])
    return {"video": str(out), "segments_csv": str(truth), "poses": poses, "frames": frames, "fps": fps,
            "size": size, "seconds": plan[-1].end, "hold": hold, "transition": transition, "seed": seed,
            "segments": [h.__dict__ for h in plan]}
