"""Where a `posetune train` epoch's time goes, measured inside the one process: the share spent in the
optimisation step (forward + backward + AdamW, what the bare model also runs), in batch prep (uint8 -> float,
colour jitter, normalisation, layout) and in the per-image crops of the loader.

A within-process ratio: unlike train_efficiency it does not compare two processes run minutes apart, so a
noisy machine moves it little. Usage (after `make bench-quick` has made its photos, or on any class folder):

    PYTHONPATH=src python benchmarks/bench_epoch_share.py $TMPDIR/posetune-bench/photos-efficiency --size 224
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--strategy", default="partial")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args(argv)

    import posetune
    from posetune.data import pipeline
    from posetune.training import loop

    seconds: dict[str, float] = collections.defaultdict(float)

    def timed(cls, name: str, key: str) -> None:
        original = getattr(cls, name)

        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                seconds[key] += time.perf_counter() - t0
        setattr(cls, name, wrapper)

    timed(loop.Trainer, "train_epoch", "epoch")
    timed(loop.Trainer, "step", "step")
    timed(loop.Trainer, "batch_inputs", "batch_prep")
    timed(pipeline.DecodedDataset, "__getitems__", "crops")
    out = Path(tempfile.mkdtemp(prefix="posetune-epoch-share-")) / "run"
    try:
        posetune.train(args.data, out=str(out), backbone=args.backbone, strategy=args.strategy, image_size=args.size,
                       epochs=args.epochs, batch_size=32, patience=0, device="cpu")
        rows = list(csv.DictReader((out / "metrics.csv").open()))
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    epoch = seconds["epoch"]
    share = {k: round(seconds[k] / epoch, 3) for k in ("step", "batch_prep", "crops")}
    share["other"] = round(1 - sum(share.values()), 3)
    print(json.dumps({"backbone": args.backbone, "strategy": args.strategy, "size": args.size, "share_of_epoch": share,
                      "epoch_train_seconds": [float(r["train_seconds"]) for r in rows],
                      "load_average_1min": round(os.getloadavg()[0], 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
