"""Recorded sessions: decode a video at a sampling rate (``decoding``), predict its frames in batches through
either engine and smooth them (``prediction``), turn labels into held segments (``segments``), draw the
timeline (``timeline``). Importing this package imports neither torch nor PyAV.
"""

from posetune.video.decoding import VIDEO_SUFFIXES, VideoError, is_video_path
from posetune.video.segments import Segment

__all__ = ["Segment", "VIDEO_SUFFIXES", "VideoError", "is_video_path"]
