"""Issue 18's live-mode figures: the served page's Live mode in headless Chromium, its fake camera playing a
rendered synthetic session (a .y4m file, looped), for --seconds after the first answer. Read back from the page's
`window.posetuneLive` hook: frames sent and answered, sustained answered frames/s, latency per frame (camera
picture grabbed -> answer drawn) median and p95, and the share of answered frames captured during a hold whose
shown (smoothed) label is that hold's pose.

Alignment: Chromium's file camera starts the file when the stream opens and paces it by the wall clock, looping,
so a frame captured at page time T shows the session at ((T - streamStart) / 1000) mod its length. The opening
of the device runs a little ahead of getUserMedia's answer, and a starved device thread can fall behind, so the
match is also computed with the session shifted by -2..+2 s (`match_by_shift`): a best shift away from 0 is that
alignment error plus the smoothing's own lag, not a model error.

RUN defaults to bench_video.py's fresh linear head on efficientnet_lite0 trained on still renders at 128 px (seeds
100+; the camera's scene, seed 0, is unseen); --run demo for the demo run. Each engine gets its own server and
browser, one after the other; the ONNX engine serves a copy of RUN with a dynamic-batch export.

Run: PYTHONPATH=src python benchmarks/bench_live.py [--run RUN] [--engines onnx,torch] [--seconds 20]
Smoke: ... --seconds 5 --engines onnx --train-seeds 4
Writes benchmarks/results/live.json (load_average kept: the figures are only as good as the machine's load).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
for path in (HERE.parent / "tests", HERE.parent / "src"):  # the browser harness is shared with the browser tests
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from browser import CHROMEDRIVER, CHROMIUM, fake_camera_chrome, serving, session_camera  # noqa: E402

from posetune.data.synth.session import frame_count  # noqa: E402

SHIFTS = [round(s, 1) for s in np.arange(-2.0, 2.01, 0.5)]


def pose_at_time(plan, t: float) -> str | None:
    """The pose held at session time ``t``, None while the figure moves between poses."""
    return next((h.pose for h in plan if h.start <= t < h.end), None)


def frame_figures(stats: dict, plan, length: float) -> dict:
    """Counts, rate, latency and label match from the page's posetuneLive object (times in page ms)."""
    frames = stats["frames"]
    if len(frames) < 3:
        raise RuntimeError(f"the page answered only {len(frames)} frames; see the server log")
    steady = frames[1:]  # the first answer carries the warm-up (first request, first forward pass)
    latency = np.array([f["drawn"] - f["captured"] for f in steady])
    span_s = (steady[-1]["drawn"] - steady[0]["drawn"]) / 1000

    def match(shift: float, key: str) -> tuple[float | None, int]:
        hits = []
        for f in steady:
            truth = pose_at_time(plan, ((f["captured"] - stats["streamStart"]) / 1000 + shift) % length)
            if truth is not None:
                hits.append(f[key] == truth)
        return (round(float(np.mean(hits)), 4) if hits else None), len(hits)

    by_shift = {str(s): match(s, "shown")[0] for s in SHIFTS}
    shown, counted = match(0.0, "shown")
    best = max(SHIFTS, key=lambda s: by_shift[str(s)] or 0.0)
    return {"frames_sent": stats["sent"], "frames_answered": stats["answered"],
            "answered_frames_per_s": round((len(steady) - 1) / span_s, 2),
            "latency_ms_median": round(float(np.median(latency)), 1),
            "latency_ms_p95": round(float(np.percentile(latency, 95)), 1),
            "first_frame_latency_ms": round(frames[0]["drawn"] - frames[0]["captured"], 1),
            "frames_in_holds": counted, "shown_label_match": shown, "server_label_match": match(0.0, "label")[0],
            "match_by_shift": by_shift, "best_shift_s": best, "smoothing": steady[-1]["smoothing"]}


def live_session(url: str, camera: Path, work: Path, seconds: float, smoothing: str) -> dict:
    """Open the page, press Live, keep it on for ``seconds`` after the first answer, press Stop; the hook's data."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = fake_camera_chrome(work, camera)
    try:
        driver.get(url)
        WebDriverWait(driver, 30).until(lambda d: "poses:" in d.find_element(By.ID, "model").text)
        driver.execute_script("document.getElementById('smoothing').value = arguments[0]", smoothing)
        driver.find_element(By.ID, "live").click()
        WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "result").get_attribute("data-state") == "live")
        time.sleep(seconds)
        driver.find_element(By.ID, "live").click()  # stop: the hook keeps the session's figures
        stats = driver.execute_script("return window.posetuneLive")
        error = driver.find_element(By.ID, "error").text
    finally:
        driver.quit()
    if error:
        raise RuntimeError(f"the page showed an error during Live: {error}")
    return stats


def served_copy(run: Path, engine: str, work: Path) -> Path:
    """RUN itself for torch; for onnx a copy with a dynamic-batch export (RUN is never written to)."""
    if engine == "torch":
        return run
    import posetune

    copy = work / "onnx-run"
    if not copy.exists():
        shutil.copytree(run, copy)
        if not (copy / "model.onnx").exists():
            posetune.export(copy, format="onnx", dynamic_batch=True)
    return copy


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a run folder whose classes are synthetic poses (default: a fresh linear lite0 run)")
    ap.add_argument("--engines", default="onnx,torch")
    ap.add_argument("--seconds", type=float, default=20.0, help="Live stays on this long after the first answer")
    ap.add_argument("--smoothing", default="ema", choices=["ema", "hold", "none"])
    ap.add_argument("--size", type=int, default=128, help="image size of the default run")
    ap.add_argument("--train-seeds", type=int, default=12)
    ap.add_argument("--camera-size", type=int, default=320, help="the fake camera's frame side, px")
    ap.add_argument("--fps", type=int, default=10, help="the fake camera's frame rate")
    ap.add_argument("--hold", type=float, default=4.0)
    ap.add_argument("--transition", type=float, default=1.5)
    ap.add_argument("--out", default=str(HERE / "results" / "live.json"))
    args = ap.parse_args(argv)
    if not (CHROMIUM and CHROMEDRIVER):
        print("bench_live: skipped, chromium and chromedriver are needed (bash scripts/ensure-chromium.sh)")
        return 0
    work = Path(tempfile.mkdtemp(prefix="posetune-bench-live-"))
    try:
        if args.run:
            run = Path(args.run)
        else:
            from bench_video import train_run  # the same default run as the video figures

            run = train_run(work, ["downdog", "goddess", "plank", "tree", "warrior2"], args.size, args.train_seeds)
        poses = json.loads((run / "model.json").read_text())["classes"]
        camera, plan = session_camera(work / "camera.y4m", poses, args.hold, args.transition, args.fps,
                                      args.camera_size, seed=0)
        length = frame_count(len(plan), args.hold, args.transition, args.fps) / args.fps  # the camera's loop
        engines = {}
        for engine in args.engines.split(","):
            with serving(served_copy(run, engine, work), work / f"serve-{engine}.log", "--engine", engine) as url:
                stats = live_session(url, camera, work / f"browser-{engine}", args.seconds, args.smoothing)
            engines[engine] = frame_figures(stats, plan, length)
            print(engine, json.dumps(engines[engine]), flush=True)
        result = {"run": str(args.run or f"fresh linear efficientnet_lite0 at {args.size} px on unseen-scene stills"),
                  "seconds": args.seconds, "camera": {"size": args.camera_size, "fps": args.fps, "hold_s": args.hold,
                                                      "transition_s": args.transition, "session_s": length,
                                                      "poses": poses},
                  "engines": engines, "load_average": os.getloadavg(), "cpus": os.cpu_count()}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
