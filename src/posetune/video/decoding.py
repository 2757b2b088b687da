"""Video files -> RGB frames sampled at a steady rate, through PyAV (FFmpeg bindings)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from posetune.data.images import VIDEO_SUFFIXES, ImageError
from posetune.errors import UsageError


class VideoError(ImageError):
    """The file cannot be used as a video (unreadable, truncated, no frames); the message is the reason."""


def is_video_path(path: str | Path) -> bool:
    p = Path(path)
    return p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith(".")


def split_videos(paths: Sequence[str | Path]) -> tuple[list[str], list[str]]:
    """(video files found in ``paths`` and inside its folders, sorted; the paths that are not video files).
    Folders stay in the second list too: the image collector expands them to their images."""
    videos, others = [], []
    for p in map(Path, paths):
        if p.is_dir():
            videos.extend(str(f) for f in sorted(p.rglob("*")) if f.is_file() and is_video_path(f)
                          and not any(part.startswith(".") for part in f.relative_to(p).parts))
            others.append(str(p))
        elif is_video_path(p):
            if not p.exists():
                raise UsageError(f"no such file or folder: {p}")
            videos.append(str(p))
        else:
            others.append(str(p))
    return videos, others


def sample_frames(path: str | Path, fps: float) -> Iterator[tuple[float, np.ndarray]]:
    """(seconds, HxWx3 uint8) for the first frame at or after each multiple of 1/``fps``.

    Raises VideoError when the file does not open, has no video stream, breaks off (truncated) or yields no frame.
    """
    import av

    step, due, n = 1.0 / fps, 0.0, 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError("no video stream in the file")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # frame-parallel decoding: the model waits less
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else n * step
                if t + 1e-6 < due:
                    continue
                n += 1
                due = (int(t / step + 1e-6) + 1) * step
                yield t, frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as exc:
        where = f" after {n} frames (truncated?)" if n else ""
        raise VideoError(f"not a readable video{where}: {exc.strerror or exc}") from None
    if n == 0:
        raise VideoError("no decodable video frames")


def expected_frames(path: str | Path, fps: float) -> int:
    """About how many frames :func:`sample_frames` yields (for a progress bar); 0 when unknown or unreadable."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return 0
            stream = container.streams.video[0]
            seconds = float(stream.duration * stream.time_base) if stream.duration else (container.duration or 0) / 1e6
            return max(0, int(round(seconds * fps)))
    except (av.error.FFmpegError, OSError, TypeError):
        return 0
