"""Milliseconds to prepare one training batch on one thread, as the loader and the Normalizer make it: the
per-image random resized crops + flips, the collate, and uint8 -> float, colour jitter, mean/std and layout.

A micro-benchmark of the host-side work around the step (run it at two commits, PYTHONPATH at each, to compare):

    PYTHONPATH=src python benchmarks/bench_batch_prep.py --size 224
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    from PIL import Image

    from posetune.data.pipeline import Preprocess, TrainAugment
    from posetune.devices import Normalizer
    from posetune.runtime import tune_allocator

    torch.set_num_threads(1)
    tuned = tune_allocator()  # as a CLI run has it
    preprocess = Preprocess(size=args.size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    rng = np.random.default_rng(0)
    images = [preprocess.decode(Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)))
              for _ in range(args.batch)]
    augment, normalize = TrainAugment(args.size), Normalizer(preprocess, torch.device("cpu"))

    def median_ms(fn) -> float:
        fn()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return round(1000 * statistics.median(times), 2)

    generator = torch.Generator().manual_seed(0)
    crops = [augment(img, generator) for img in images]
    batch = torch.stack(crops)
    jitter = functools.partial(augment.batch_color, generator=torch.Generator().manual_seed(1))
    row = {"size": args.size, "batch": args.batch, "allocator_tuned": tuned,
           "crops_ms": median_ms(lambda: [augment(img, generator) for img in images]),
           "collate_ms": median_ms(lambda: torch.stack(crops)),
           "normalise_ms": median_ms(lambda: normalize(batch)),
           "normalise_and_jitter_ms": median_ms(lambda: normalize(batch, jitter))}
    row["train_batch_ms"] = round(row["crops_ms"] + row["collate_ms"] + row["normalise_and_jitter_ms"], 2)
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
