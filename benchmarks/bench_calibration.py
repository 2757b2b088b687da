"""Calibration on Fashion-MNIST-1k: ECE (15 bins) before and after temperature scaling on the 10,000 test images.

Protocol: bench_fmnist.py's (100 training images per class, numpy default_rng(0); the official 10,000 test
images; 112 px; efficientnet_lite0 with its offline ImageNet weights; batch 64; each strategy's default epochs),
trained with ``posetune.train``, which fits the temperature on its val split (15% of TRAIN, 150 images) by NLL and
records ECE and NLL before (T = 1) and after it on val and test in model.json (``calibration``). The figure is
model.json's test ``ece_before`` -> ``ece_after``. As a check of the path users take, ``posetune.evaluate`` on the
test split (the temperature applied by the prediction engine) reports ``ece`` again: ``ece_after_evaluate``.
Goal: ECE after <= 0.03.

Run: PYTHONPATH=src python benchmarks/bench_calibration.py [--strategies linear,partial,full] [--seeds 1]
     PYTHONPATH=src python benchmarks/bench_calibration.py --smoke   (20 per class, 500 test images, 1 epoch:
     the plumbing only)
Writes benchmarks/results/calibration.json (--smoke: $TMPDIR/posetune-calibration/calibration.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOAL_ECE_AFTER = 0.03
SMOKE = {"per_class": 20, "test_limit": 500, "epochs": 1}


def run_one(data: Path, name: str, seed: int, work: Path, epochs: int | None) -> dict:
    """Train one strategy (bench_fmnist's options), then evaluate it on the test split."""
    import bench_fmnist

    import posetune

    run = work / "runs" / f"{name}-s{seed}"
    shutil.rmtree(run, ignore_errors=True)  # this benchmark's own run from an earlier time
    t0 = time.perf_counter()
    posetune.train(str(data), **bench_fmnist.STRATEGIES[name], batch_size=64, image_size=112, seed=seed,
                   device="cpu", epochs=epochs, out=str(run))
    train_wall = time.perf_counter() - t0
    calibration = json.loads((run / "model.json").read_text())["calibration"]
    t0 = time.perf_counter()
    evaluated = posetune.evaluate(run, data, split="test", device="cpu", plot=False)
    test = calibration.get("test", {})
    return {"strategy": name, "seed": seed, "temperature": calibration["temperature"], "note": calibration["note"],
            "test_n": test.get("n"), "ece_before": test.get("ece_before"), "ece_after": test.get("ece_after"),
            "nll_before": test.get("nll_before"), "nll_after": test.get("nll_after"),
            "val": calibration.get("val"), "ece_after_evaluate": evaluated["ece"], "evaluate_n": evaluated["n"],
            "test_accuracy": evaluated["accuracy"], "goal_met": bool((test.get("ece_after") or 1) <= GOAL_ECE_AFTER),
            "train_wall_seconds": round(train_wall, 1), "evaluate_seconds": round(time.perf_counter() - t0, 1),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(HERE))
    import bench_fmnist

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategies", default="linear,partial,full", help=f"of {', '.join(bench_fmnist.STRATEGIES)}")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="20 images per class, 500 test images, 1 epoch")
    ap.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "posetune-calibration"))
    ap.add_argument("--out", default=None, help="results file (default results/calibration.json)")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    unknown = sorted(set(names) - set(bench_fmnist.STRATEGIES))
    if unknown:
        ap.error(f"unknown strategies {unknown}; choose from {', '.join(bench_fmnist.STRATEGIES)}")
    try:
        src = bench_fmnist.ensure_dataset()
    except bench_fmnist.Skip as exc:
        print(f"calibration: skipped: {exc}", file=sys.stderr)
        return 0
    work = Path(args.work)
    if args.smoke:
        data = bench_fmnist.write_folders(src, work / "data-smoke", SMOKE["per_class"], SMOKE["test_limit"])
    else:  # the same PNG folders as bench_fmnist.py, written once
        data = bench_fmnist.write_folders(src, Path(os.environ.get("TMPDIR", "/tmp")) / "posetune-fmnist1k" / "data")
    epochs = SMOKE["epochs"] if args.smoke else None
    rows = []
    for name in names:
        for seed in range(args.seeds):
            rows.append(run_one(data, name, seed, work, epochs))
            print(json.dumps({k: rows[-1][k] for k in ("strategy", "seed", "temperature", "ece_before", "ece_after",
                                                        "ece_after_evaluate", "test_accuracy")}), flush=True)
    out = Path(args.out) if args.out else (work if args.smoke else HERE / "results") / "calibration.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "mode": "smoke" if args.smoke else "full",
        "protocol": {"data": "Fashion-MNIST-1k (bench_fmnist.py)", "train_per_class": SMOKE["per_class"] if args.smoke
                     else bench_fmnist.PER_CLASS, "test": SMOKE["test_limit"] if args.smoke else 10000,
                     "image_size": 112, "batch_size": 64, "backbone": "efficientnet_lite0", "val_fraction": 0.15,
                     "ece_bins": 15, "temperature": "fitted on val by NLL (posetune.train)", "goal_ece_after": GOAL_ECE_AFTER,
                     "cpus": os.cpu_count()},
        "runs": rows}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
