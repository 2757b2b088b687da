"""Issue 18's video figures: frames/s of `predict RUN session.mp4` (decode + sample + batched forward + smoothing)
on synthetic sessions, torch and ONNX engines, against the same model on the same frames as still PNG files; and
segment accuracy against the sessions' ground truth (share of held time labelled right, holds whose segment
starts and ends within 1 s).

RUN defaults to a fresh linear head on efficientnet_lite0 trained on still renders of the session poses (seeds
100+, so the sessions' scenes, seeds 0.., are unseen); pass --run demo (`posetune demo`) for the issue's figure.

Run: PYTHONPATH=src python benchmarks/bench_video.py [--run RUN] [--sessions 3] [--size 224] [--fps 5]
Smoke: ... --sessions 1 --size 96 --hold 2 --train-seeds 4
Writes benchmarks/results/video.json; figures are from whatever load the machine had (load_average is kept).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import posetune
from posetune.data.synth import render_pose
from posetune.data.synth.session import render_session
from posetune.predict import load
from posetune.video.decoding import sample_frames
from posetune.video.prediction import predict_video
from posetune.video.segments import score_segments


def train_run(work: Path, poses: list[str], size: int, seeds: int) -> Path:
    root = work / "stills"
    for seed in range(100, 100 + seeds):
        for pose in poses:
            (root / pose).mkdir(parents=True, exist_ok=True)
            render_pose(pose, np.random.default_rng(seed), size=size).save(root / pose / f"{seed}.png")
    out = work / "run"
    posetune.train(root, backbone="efficientnet_lite0", image_size=size, batch_size=16, epochs=8, strategy="linear",
                   lr=1e-2, out=str(out))
    return out


def video_rate(run: Path, videos: list[Path], engine: str, fps: float) -> tuple[float, list]:
    clf = load(run, engine=engine)
    t0 = time.perf_counter()
    results = predict_video(run, videos, clf=clf, fps=fps)
    return sum(len(r.times) for r in results) / (time.perf_counter() - t0), results


def still_rate(run: Path, videos: list[Path], engine: str, fps: float, work: Path) -> float:
    from PIL import Image

    folder = work / f"frames-{engine}"
    folder.mkdir(exist_ok=True)
    paths = []
    for v in videos:
        for i, (_, rgb) in enumerate(sample_frames(v, fps)):
            paths.append(folder / f"{v.stem}-{i:05d}.png")
            Image.fromarray(rgb).save(paths[-1])
    clf = load(run, engine=engine)
    t0 = time.perf_counter()
    clf.predict([str(p) for p in paths], batch_size=32)
    return len(paths) / (time.perf_counter() - t0)


def truth(video: Path) -> list[dict]:
    with open(video.with_suffix(".csv"), newline="") as f:
        return list(csv.DictReader(f))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run")
    ap.add_argument("--poses", default="downdog,goddess,plank,tree,warrior2")
    ap.add_argument("--sessions", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--fps", type=float, default=5.0)
    ap.add_argument("--hold", type=float, default=4.0)
    ap.add_argument("--transition", type=float, default=1.5)
    ap.add_argument("--train-seeds", type=int, default=12)
    ap.add_argument("--out", default="benchmarks/results/video.json")
    args = ap.parse_args()
    poses = args.poses.split(",")
    work = Path(tempfile.mkdtemp(prefix="posetune-bench-video-"))
    try:
        run = Path(args.run) if args.run else train_run(work, poses, args.size, args.train_seeds)
        onnx_run = work / "onnx-run"
        shutil.copytree(run, onnx_run)
        posetune.export(onnx_run, format="onnx", dynamic_batch=True)
        videos = [work / f"session-{s}.mp4" for s in range(args.sessions)]
        for s, v in enumerate(videos):
            render_session(v, poses=poses, hold=args.hold, transition=args.transition, fps=10, size=args.size, seed=s)
        rows = {}
        for engine in ("torch", "onnx"):  # one run folder for both: the same weights
            rate, results = video_rate(onnx_run, videos, engine, args.fps)
            scores = [score_segments(res.segments, truth(v)) for res, v in zip(results, videos)]
            rows[engine] = {"video_frames_per_s": round(rate, 2),
                            "still_images_per_s": round(still_rate(onnx_run, videos, engine, args.fps, work), 2),
                            "time_accuracy": round(float(np.mean([s["time_accuracy"] for s in scores])), 4),
                            "boundaries_within_1s": round(float(np.mean([s["boundaries_within"] for s in scores])), 4),
                            "real_time_factor": round(rate / args.fps, 2)}
        result = {"run": str(args.run or "fresh linear efficientnet_lite0 on unseen-scene stills"),
                  "size": args.size, "fps": args.fps, "sessions": args.sessions, "poses": poses,
                  "hold_s": args.hold, "transition_s": args.transition, "engines": rows,
                  "load_average": os.getloadavg(), "cpus": os.cpu_count()}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
