"""Stochastic depth (timm's ``drop_path_rate``) at posetune's defaults on Fashion-MNIST-1k: `posetune train DATA`
(partial, 224 px, 10 epochs) with every model block's residual branch dropped at RATE (timm scales it from 0 at the
first block to RATE at the last; frozen stages run in eval mode, so they never drop). Not a posetune option:
measured before building one, so the rate reaches timm here by wrapping posetune.backbones.build_model, as
bench_progressive.py wraps the epoch.

Run: PYTHONPATH=src python benchmarks/bench_drop_path.py RATE [--seed 0] [--work DIR]
Prints one JSON line (test and val accuracy, train seconds, best epoch); RATE 0 is the defaults' own run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_fmnist  # noqa: E402  (the Fashion-MNIST-1k folders)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rate", type=float)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "posetune-drop-path"))
    args = ap.parse_args(argv)

    import posetune
    from posetune import backbones

    original = backbones.build_model
    backbones.build_model = lambda arch, num_classes, **kw: original(arch, num_classes, drop_path_rate=args.rate, **kw)
    work = Path(args.work)
    data = bench_fmnist.write_folders(bench_fmnist.ensure_dataset(), work / "fmnist1k")
    out = work / f"run-{args.rate}-s{args.seed}"
    shutil.rmtree(out, ignore_errors=True)
    result = posetune.train(str(data), out=str(out), seed=args.seed, device="cpu", precision="fp32")
    print(json.dumps({**vars(args), "test_accuracy": result.metrics["test"]["accuracy"],
                      "val_accuracy": (result.metrics.get("val") or {}).get("accuracy"),
                      "train_seconds": round(result.train_seconds, 1), "epochs_run": len(result.history),
                      "best_epoch": result.best_epoch}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
