"""Live mode in a real browser: Chromium's fake camera plays a rendered synthetic session (a .y4m file), the page
sends frames to `posetune serve` one at a time, and its smoothed label must follow the session's poses in order.
Also the skeleton overlay's drawing on a hand-made landmarks object (no server sends "pose" yet).
Skipped, with the reason, where Chromium or chromedriver is missing (`scripts/ensure-chromium.sh`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import CHROMEDRIVER, CHROMIUM, fake_camera_chrome, serving, session_camera
from helpers import POSE_RUN_POSES

selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="chromium and chromedriver are needed: bash scripts/ensure-chromium.sh")
FPS, HOLD, TRANSITION = 10, 3.0, 1.0


@pytest.fixture(scope="module")
def camera_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("camera") / "session.y4m"
    return session_camera(path, POSE_RUN_POSES, HOLD, TRANSITION, FPS, size=160, seed=2)[0]


@pytest.fixture(scope="module")
def pose_server(pose_run: Path, tmp_path_factory):
    with serving(pose_run, tmp_path_factory.mktemp("serve") / "server.log", "--engine", "torch") as url:
        yield url


@pytest.fixture
def camera_browser(tmp_path: Path, camera_file: Path):
    driver = fake_camera_chrome(tmp_path, camera_file)
    try:
        yield driver
    finally:
        driver.quit()


def _follows_in_order(history: list[str], poses) -> bool:
    """Some rotation of ``poses`` appears back to back in ``history`` (the fake camera loops the session)."""
    poses = list(poses)
    rotations = [poses[i:] + poses[:i] for i in range(len(poses))]
    return any(history[i:i + len(poses)] == r for r in rotations for i in range(len(history)))


def test_live_label_follows_the_poses_of_the_camera(pose_server: str, camera_browser, record_property) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    b = camera_browser
    b.get(pose_server)
    WebDriverWait(b, 20).until(lambda d: "poses:" in d.find_element(By.ID, "model").text)
    b.find_element(By.ID, "live").click()
    WebDriverWait(b, 20).until(lambda d: d.find_element(By.ID, "result").get_attribute("data-state") == "live")
    Select(b.find_element(By.ID, "smoothing")).select_by_value("hold")

    def history(d) -> list[str]:
        return [li.get_attribute("data-label") for li in d.find_elements(By.CSS_SELECTOR, "#history li")]

    # two loops of the 11 s session at most, on a shared, loaded CPU
    WebDriverWait(b, 45, poll_frequency=0.5).until(lambda d: _follows_in_order(history(d), POSE_RUN_POSES))
    stats = b.find_element(By.ID, "live-stats")
    fps, latency = float(stats.get_attribute("data-fps")), float(stats.get_attribute("data-latency"))
    record_property("live_fps", fps)
    record_property("live_latency_ms", latency)
    assert fps > 0 and latency > 0
    b.find_element(By.ID, "live").click()  # stop: the camera is released
    assert b.find_element(By.ID, "live").text == "Live"
    assert not b.find_element(By.ID, "camera-view").is_displayed()
    # the timings hook bench_live.py reads outlives Stop: every answered frame, in order, with both labels
    hook = b.execute_script("return window.posetuneLive")
    frames = hook["frames"]
    assert hook["answered"] == len(frames) >= len(POSE_RUN_POSES) and hook["sent"] in (hook["answered"], hook["answered"] + 1)
    assert all(hook["streamStart"] <= f["captured"] < f["drawn"] for f in frames)
    assert all(p["captured"] < q["captured"] for p, q in zip(frames, frames[1:]))
    assert {f["shown"] for f in frames} >= set(POSE_RUN_POSES) and frames[-1]["smoothing"] == "hold"
    assert all(f["label"] in POSE_RUN_POSES for f in frames)


def test_skeleton_is_drawn_from_landmarks_skipping_unseen_points(pose_server: str, camera_browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    b = camera_browser
    b.get(pose_server)
    WebDriverWait(b, 20).until(lambda d: "poses:" in d.find_element(By.ID, "model").text)
    landmarks = [[0.3 + 0.4 * (i % 7) / 6, 0.1 + 0.8 * i / 32, 0.2 if i in (0, 15, 27) else 0.9] for i in range(33)]
    drawn, painted = b.execute_script("""
        const img = document.getElementById("preview");
        img.style.display = "block"; img.style.width = "300px"; img.style.height = "300px";
        const n = drawSkeleton({detected: true, landmarks: arguments[0]}, img, 300, 300);
        const c = document.getElementById("skeleton");
        const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let painted = 0;
        for (let i = 3; i < data.length; i += 4) painted += data[i] > 0;
        return [n, painted];
    """, landmarks)
    assert drawn == 30 and painted > 500
    assert b.execute_script("return drawSkeleton({detected: false, landmarks: []}, "
                            "document.getElementById('preview'), 300, 300)") == 0
    assert b.execute_script("return drawSkeleton(null, document.getElementById('preview'), 300, 300)") == 0
    assert b.execute_script("return POSE_CONNECTIONS.length") == 35
