"""Synthetic renderer throughput at 224 px on one core, JPEG encode included.

Run: PYTHONPATH=src python benchmarks/bench_synth.py [--n 400] [--size 224]
Prints {"synth_images_per_s": ...} and writes it to benchmarks/results/synth.json.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: set before numpy loads

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from posetune.data.synth import KAGGLE_POSES, render_pose  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    def one(i: int) -> int:
        rng = np.random.default_rng([0, i])
        img = render_pose(KAGGLE_POSES[i % len(KAGGLE_POSES)], rng, args.size)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(rng.integers(60, 96)))
        return buf.tell()

    for i in range(20):  # warm the caches (background photos, noise bank)
        one(i)
    t0 = time.perf_counter()
    for i in range(args.n):
        one(i)
    dt = time.perf_counter() - t0
    result = {"synth_images_per_s": round(args.n / dt, 1), "size": args.size, "n": args.n}
    print(json.dumps(result))
    out = Path(__file__).resolve().parent / "results" / "synth.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
