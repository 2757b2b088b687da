"""Issue 14's landmark figures that need no trained pose model: BlazePose detection rate per class on the
demo's synthetic poses and on the same poses in the unseen domain of `data synth --shift`; landmark extraction
images/s (JPEG decode and cache write included) against efficientnet_lite0 inference images/s on the same
images (the forward alone, pre-decoded tensors, one image at a time, eager),
and the landmark cache's images/s once filled.

The accuracy figures of the issue (pose, efficientnet_lite0+pose) need the `pose` backbone specs, which are not
built yet: this script does not claim them.

Run: PYTHONPATH=src python benchmarks/bench_pose.py [--test-per-class 20] [--size 224] [--seed 0]
Writes benchmarks/results/pose.json; its figures are from whatever load the machine had (load_average is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from posetune.data.synth import render_dataset
from posetune.pose.cache import LandmarkCache
from posetune.pose.matrix import feature_matrix


def detection_rates(root: Path, cache: LandmarkCache) -> tuple[dict[str, float], float, list[Path]]:
    """({pose: share of TEST images with a person found}, seconds, the image paths)."""
    paths = sorted((root / "TEST").glob("*/*.jpg"))
    t0 = time.perf_counter()
    feats = feature_matrix(paths, cache)
    seconds = time.perf_counter() - t0
    rates: dict[str, list[float]] = {}
    for path, row in zip(paths, feats):
        rates.setdefault(path.parent.name, []).append(float(row[-1]))
    return {pose: round(float(np.mean(v)), 3) for pose, v in sorted(rates.items())}, seconds, paths


def lite0_images_per_s(paths: list[Path], size: int) -> float:
    import torch

    from posetune.backbones import create_backbone

    model, _ = create_backbone("efficientnet_lite0", num_classes=5)
    model.eval()
    batches = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB").resize((size, size)), np.float32)
                                .transpose(2, 0, 1)[None] / 255.0) for p in paths]
    with torch.inference_mode():
        for x in batches[:3]:  # warm-up: the first calls allocate and pick kernels
            model(x)
        t0 = time.perf_counter()
        for x in batches:
            model(x)
    return len(paths) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test-per-class", type=int, default=20)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    out: dict = {"test_per_class": args.test_per_class, "size": args.size, "seed": args.seed,
                 "load_average_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        cache = LandmarkCache(Path(tmp) / "cache")
        for domain, shift in (("plain", False), ("shifted", True)):
            root = Path(tmp) / domain
            render_dataset(root, per_class=0, test_per_class=args.test_per_class, size=args.size, seed=args.seed,
                           shift=shift)
            rates, seconds, paths = detection_rates(root, cache)
            out[f"detection_rate_{domain}"] = rates
            if domain == "plain":
                out["landmark_images_per_s"] = round(len(paths) / seconds, 1)
                t0 = time.perf_counter()
                feature_matrix(paths, cache)  # every entry a hit now
                out["cached_landmark_images_per_s"] = round(len(paths) / (time.perf_counter() - t0), 1)
                out["lite0_images_per_s"] = round(lite0_images_per_s(paths, args.size), 1)
    out["landmark_vs_lite0_throughput"] = round(out["landmark_images_per_s"] / out["lite0_images_per_s"], 2)
    out["load_average_after"] = os.getloadavg()[0]
    target = Path(__file__).resolve().parent / "results" / "pose.json"
    target.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
