"""What the `--time-budget` guard costs when it stops a run before its schedule ends: `posetune train DATA` (the
defaults: partial, 224 px) on Fashion-MNIST-1k with a cosine planned for PLANNED epochs and stopped after STOP by
the guard's own path (`loop.past_deadline`, made to fire after STOP epochs), against a complete cosine of STOP
epochs (`--epochs STOP`). Answers whether a budgeted run should shorten its schedule after epoch 1 when the plan
will not fit (measured 2026-12-07: it should not, so it does not).

Run: PYTHONPATH=src python benchmarks/bench_truncated_cosine.py [--planned 10] [--stop 8] [--seed 0] [--work DIR]
Prints one JSON line per run (test and val accuracy, best epoch, the last epoch's LR, train seconds).
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
    ap.add_argument("--planned", type=int, default=10)
    ap.add_argument("--stop", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "posetune-truncated-cosine"))
    args = ap.parse_args(argv)

    import posetune
    from posetune.training import loop

    work = Path(args.work)
    data = bench_fmnist.write_folders(bench_fmnist.ensure_dataset(), work / "fmnist1k")
    guard = loop.past_deadline
    for name, epochs in (("stopped", args.planned), ("complete", args.stop)):
        loop.past_deadline = (lambda deadline, history: len(history) >= args.stop) if name == "stopped" else guard
        out = work / f"{name}-{epochs}-s{args.seed}"
        shutil.rmtree(out, ignore_errors=True)
        result = posetune.train(str(data), out=str(out), epochs=epochs, seed=args.seed, device="cpu", precision="fp32")
        print(json.dumps({"run": f"cosine of {epochs} epochs, {name} after {len(result.history)}", "seed": args.seed,
                          "test_accuracy": result.metrics["test"]["accuracy"],
                          "val_accuracy": (result.metrics.get("val") or {}).get("accuracy"),
                          "best_epoch": result.best_epoch, "last_lr": result.history[-1].get("lr"),
                          "train_seconds": round(result.train_seconds, 1)}), flush=True)
    loop.past_deadline = guard
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
