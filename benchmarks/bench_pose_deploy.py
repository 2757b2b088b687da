"""Issue 14's deploy cost: `predict` images/s of an efficientnet_lite0+pose (fusion) run, torch engine vs its ONNX
export, beside an efficientnet_lite0 (image-only) run, on the same demo-size synthetic poses.

Both runs are a quick `linear` fit at the demo's settings (160 px renders, 128 px input): speed does not depend on
how well they learned. Each engine's ``.predict(paths, batch_size=32)`` is timed end to end (decode, landmarks
for fusion, forward), the engines interleaved over ``--rounds`` rounds in one process, the median kept; both
exports have a dynamic batch axis. Landmark extraction (BlazePose via mediapipe) runs in both fusion engines alike.

Run: PYTHONPATH=src python benchmarks/bench_pose_deploy.py [--test-per-class 10] [--rounds 3]
Writes benchmarks/results/pose_deploy.json; its figures are from whatever load the machine had (load_average is kept).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import load_average, ratio, write_result

import posetune
from posetune.data.synth import render_dataset

DEMO_SIZE, DEMO_INPUT = 160, 128  # demo_run.DEMO_DATA["size"], DEMO_TRAIN["image_size"]
RUNS = {"fusion": "efficientnet_lite0+pose", "image": "efficientnet_lite0"}


def images_per_s(clf, paths: list[str]) -> float:
    t0 = time.perf_counter()
    preds = clf.predict(paths, batch_size=32)
    seconds = time.perf_counter() - t0
    assert not any(p.error for p in preds)
    return len(paths) / seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test-per-class", type=int, default=10)
    ap.add_argument("--train-per-class", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    out: dict = {"images": 5 * args.test_per_class, "render_size": DEMO_SIZE, "input_size": DEMO_INPUT,
                 "rounds": args.rounds, "load_average_before": load_average()}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        render_dataset(data, per_class=args.train_per_class, test_per_class=args.test_per_class, size=DEMO_SIZE, seed=0)
        paths = sorted(str(p) for p in (data / "TEST").glob("*/*.jpg"))
        engines = {}
        for kind, backbone in RUNS.items():
            run = Path(tmp) / kind
            posetune.train(data, backbone=backbone, strategy="linear", image_size=DEMO_INPUT, epochs=1, batch_size=32,
                           out=str(run))
            posetune.export(run, format="onnx", dynamic_batch=True, n_images=4)
            for engine in ("torch", "onnx"):
                engines[f"{kind}_{engine}"] = posetune.load(run, engine=engine, device="cpu")
        for clf in engines.values():
            clf.predict(paths[:4])  # warm-up: first calls allocate, pick kernels, start mediapipe
        times: dict[str, list[float]] = {name: [] for name in engines}
        for _ in range(args.rounds):
            for name, clf in engines.items():
                times[name].append(images_per_s(clf, paths))
    for name, values in times.items():
        out[f"{name}_images_per_s"] = round(statistics.median(values), 1)
        out[f"{name}_rounds"] = [round(v, 1) for v in values]
    for a, b in (("fusion_onnx", "fusion_torch"), ("image_onnx", "image_torch"), ("fusion_onnx", "image_onnx")):
        out[f"{a}_vs_{b}"] = ratio(out[f"{a}_images_per_s"], out[f"{b}_images_per_s"])
    out["load_average_after"] = load_average()
    write_result("pose_deploy", out)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
