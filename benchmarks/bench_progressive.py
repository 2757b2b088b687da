"""Progressive resizing (fastai's, EfficientNetV2's and FFCV's low-to-high resolution schedule) on
Fashion-MNIST-1k: `posetune train DATA` at --image-size HI whose training crops grow from LO px (epoch 1) to HI
over the epochs, then HOLD epochs at HI; validation and test at HI. Not a posetune option: measured before
building one (benchmarks/README.md, Fashion-MNIST-1k notes), so the schedule is set here by wrapping
Trainer.train_epoch, as workers.py's train-vs-bare wraps it to time epochs.

Run: PYTHONPATH=src python benchmarks/bench_progressive.py LO HI EPOCHS HOLD [--seed 0] [--work DIR]
Prints each epoch's crop size and seconds, then one JSON line (test and val accuracy, train seconds).
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
sys.path.insert(0, str(HERE))

import bench_fmnist  # noqa: E402  (the Fashion-MNIST-1k folders)


def size_at(epoch: int, lo: int, hi: int, epochs: int, hold: int) -> int:
    """The crop size of ``epoch`` (1-based): linear from lo to hi over the first epochs - hold, a multiple of 16."""
    ramp = max(1, epochs - hold)
    if epoch > ramp or ramp == 1:
        return hi
    return int(round((lo + (hi - lo) * (epoch - 1) / (ramp - 1)) / 16) * 16)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("lo", "hi", "epochs", "hold"):
        ap.add_argument(name, type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "posetune-progressive"))
    args = ap.parse_args(argv)

    import posetune
    from posetune.training import loop

    original = loop.Trainer.train_epoch

    def train_epoch(self, epoch, loader, state, *rest, **kwargs):
        size = size_at(epoch, args.lo, args.hi, args.epochs, args.hold)
        loader.dataset.augment.crop.size = (size, size)  # TrainAugment's output size; decoded pixels stay
        t0 = time.perf_counter()
        row = original(self, epoch, loader, state, *rest, **kwargs)
        print(f"epoch {epoch}: crops {size} px, {time.perf_counter() - t0:.1f} s, loss {row['train_loss']:.3f}", flush=True)
        return row

    loop.Trainer.train_epoch = train_epoch
    work = Path(args.work)
    data = bench_fmnist.write_folders(bench_fmnist.ensure_dataset(), work / "fmnist1k")
    out = work / f"run-{args.lo}-{args.hi}-{args.epochs}-{args.hold}-s{args.seed}"
    shutil.rmtree(out, ignore_errors=True)
    result = posetune.train(str(data), out=str(out), image_size=args.hi, epochs=args.epochs, seed=args.seed,
                            device="cpu", precision="fp32")
    meta = json.loads((out / "model.json").read_text())
    print(json.dumps({**vars(args), "test_accuracy": result.metrics["test"]["accuracy"],
                      "val_accuracy": (result.metrics.get("val") or {}).get("accuracy"),
                      "train_seconds": round(result.train_seconds, 1), "epochs_run": len(result.history),
                      "best_epoch": meta.get("best_epoch")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
