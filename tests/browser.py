"""The real-browser harness shared by the browser tests and benchmarks/bench_live.py: `posetune serve` as a
subprocess on a free port, headless Chromium through Selenium, and a synthetic session as the file Chromium's
fake camera plays (YUV4MPEG2). Nothing here imports pytest: a failure raises RuntimeError with the server's log.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from helpers import stop

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(run: Path, log: Path, *args: str):
    """`posetune serve RUN ARGS` on a free port until the block ends: yields its URL once /health says ok."""
    port = free_port()
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "posetune", "serve", str(run), "--port", str(port), *args],
                                stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if json.load(r)["status"] == "ok":
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"posetune serve did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.2)
        yield url
    finally:
        stop(proc)


def chrome(tmp_path: Path, *extra: str):
    """Headless Chromium through Selenium, with ``extra`` command-line flags (a fake camera, say)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # No network beyond the server under test: every other host name fails to resolve.
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,820",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", *extra):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


def fake_camera_chrome(tmp_path: Path, camera_file: Path):
    """Chromium whose camera (getUserMedia, allowed without asking) plays ``camera_file`` in a loop."""
    return chrome(tmp_path, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                  f"--use-file-for-fake-video-capture={camera_file}")


def write_y4m(path: Path, frames: Iterable[np.ndarray], fps: int) -> Path:
    """Raw YUV 4:2:0 frames in a YUV4MPEG2 file, the format Chromium's fake camera reads."""
    import av

    frames = iter(frames)
    first = next(frames)
    h, w = first.shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in (first, *frames):
            f.write(b"FRAME\n")
            f.write(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray().tobytes())
    return path


def session_camera(path: Path, poses: Sequence[str], hold: float, transition: float, fps: int, size: int,
                   seed: int) -> tuple[Path, list]:
    """A synthetic session (data/synth/session.py's plan and frames) as a fake-camera file; returns it and the
    plan (its holds: the ground truth). The camera loops it: a frame's time is its index / ``fps``."""
    from posetune.data.synth.session import frame_count, session_frames, session_plan

    plan = session_plan(poses, hold, transition)
    frames = session_frames(plan, frame_count(len(plan), hold, transition, fps), fps, size, seed)
    return write_y4m(path, (np.asarray(image) for image in frames), fps), plan
