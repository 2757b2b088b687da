"""Fashion-MNIST-1k: every fine-tuning strategy on real images, against a plain PyTorch loop.

Protocol: 100 training images per class drawn stratified from the official train split with
numpy default_rng(0); the full official 10,000-image test split; 28 -> 112 px, 3 channels;
efficientnet_lite0 with its offline ImageNet weights; batch 64; each strategy's default epochs
(10; linear: 30 cheap epochs on cached features); ``--seeds`` seeds (3 by default).
posetune holds out 15% of TRAIN for validation (best-epoch choice), so it trains on 850 images.

The images come from Debian's ``dataset-fashion-mnist`` (gzipped IDX files); the benchmark installs it
with apt when missing and skips with a message where it cannot. They are written once as PNG class
folders (TRAIN/ 1000, TEST/ 10000) and trained with ``posetune.train``.

Run: PYTHONPATH=src python benchmarks/bench_fmnist.py [--seeds 3] [--strategies linear,partial,...]
Writes benchmarks/results/fmnist1k.json (and the table in benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATASET_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]
PER_CLASS = 100
# The plain PyTorch loop (torchvision tutorial style), same protocol, one seed, 10 epochs.
REFERENCE = {
    "linear": {"accuracy": 0.827, "train_seconds": 87},
    "partial": {"accuracy": 0.824, "train_seconds": 186},
    "full": {"accuracy": 0.829, "train_seconds": 294},
    "full-random": {"accuracy": 0.718, "train_seconds": 299},
}
# name -> posetune.train options (on top of the common ones)
STRATEGIES = {
    "linear": {"strategy": "linear"},
    "partial": {"strategy": "partial", "freeze_stages": 4},
    "full": {"strategy": "full"},
    "lp-ft": {"strategy": "lp-ft"},
    "gradual": {"strategy": "gradual"},
    "full-random": {"strategy": "full", "pretrained": False},
}


class Skip(Exception):
    pass


def ensure_dataset() -> Path:
    """The IDX files, installing the Debian package when they are missing and we may."""
    if (DATASET_DIR / "t10k-labels-idx1-ubyte.gz").is_file():
        return DATASET_DIR
    if not shutil.which("apt-get"):
        raise Skip("no apt-get here: install Fashion-MNIST's IDX files into /usr/share/datasets/fashion-mnist")
    prefix = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else None)
    if prefix is None:
        raise Skip("not root and no sudo: run `sudo apt-get install dataset-fashion-mnist` first")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"]):
        proc = subprocess.run(prefix + cmd, capture_output=True, text=True)
        if proc.returncode != 0 and cmd[1] == "install":
            raise Skip(f"`apt-get install dataset-fashion-mnist` failed: {proc.stderr.strip()[-300:]}")
    if not (DATASET_DIR / "t10k-labels-idx1-ubyte.gz").is_file():
        raise Skip(f"dataset-fashion-mnist installed but {DATASET_DIR} has no IDX files")
    return DATASET_DIR


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_folders(src: Path, out: Path, per_class: int = PER_CLASS, test_limit: int | None = None) -> Path:
    """TRAIN/<class>/*.png (100 per class, stratified, default_rng(0)) and TEST/<class>/*.png (all 10,000, or
    the first ``test_limit``: smoke runs only)."""
    from PIL import Image

    smaller = per_class != PER_CLASS or test_limit is not None
    done = out / (f".complete-{per_class}-{test_limit}" if smaller else ".complete")
    if done.is_file():
        return out
    x_train, y_train = read_idx(src / "train-images-idx3-ubyte.gz"), read_idx(src / "train-labels-idx1-ubyte.gz")
    x_test, y_test = read_idx(src / "t10k-images-idx3-ubyte.gz"), read_idx(src / "t10k-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(0)
    picked = np.concatenate([rng.choice(np.flatnonzero(y_train == c), per_class, replace=False)
                             for c in range(len(CLASSES))])
    test = range(min(len(y_test), test_limit or len(y_test)))
    for split, xs, ys, idx in (("TRAIN", x_train, y_train, picked), ("TEST", x_test, y_test, test)):
        for c in CLASSES:
            (out / split / c).mkdir(parents=True, exist_ok=True)
        for i in idx:
            Image.fromarray(xs[i]).convert("RGB").save(out / split / CLASSES[ys[i]] / f"{i:05d}.png")
    done.write_text("ok\n")
    return out


def run_one(data: Path, name: str, seed: int, work: Path) -> dict:
    import posetune

    opts = dict(STRATEGIES[name], batch_size=64, image_size=112, seed=seed, device="cpu",
                out=str(work / f"{name}-s{seed}"))
    shutil.rmtree(opts["out"], ignore_errors=True)
    t0 = time.perf_counter()
    result = posetune.train(str(data), **opts)
    wall = time.perf_counter() - t0
    meta = json.loads((Path(result.run) / "model.json").read_text())
    history = result.history
    return {"strategy": name, "seed": seed, "test_accuracy": result.metrics["test"]["accuracy"],
            "val_accuracy": result.metrics.get("val", {}).get("accuracy"),
            "train_seconds": round(result.train_seconds, 1), "wall_seconds": round(wall, 1),
            "epochs_run": len(history), "best_epoch": meta.get("best_epoch"),
            "epoch_train_seconds": [r.get("train_seconds") for r in history],
            "load_average_1min": round(os.getloadavg()[0], 2)}


def summarise(rows: list[dict]) -> dict:
    out = {}
    for name in STRATEGIES:
        mine = [r for r in rows if r["strategy"] == name]
        if not mine:
            continue
        acc = np.array([r["test_accuracy"] for r in mine])
        secs = np.array([r["train_seconds"] for r in mine])
        ref = REFERENCE.get(name)
        out[name] = {"seeds": len(mine), "test_accuracy_mean": round(float(acc.mean()), 4),
                     "test_accuracy_std": round(float(acc.std(ddof=1)) if len(acc) > 1 else 0.0, 4),
                     "train_seconds_mean": round(float(secs.mean()), 1),
                     "wall_seconds_mean": round(float(np.mean([r["wall_seconds"] for r in mine])), 1),
                     "reference_accuracy": ref["accuracy"] if ref else None,
                     "reference_train_seconds": ref["train_seconds"] if ref else None,
                     "matches_reference": (bool(acc.mean() >= ref["accuracy"] - 0.005) if ref else None)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "posetune-fmnist1k"))
    ap.add_argument("--out", default=str(HERE / "results" / "fmnist1k.json"))
    args = ap.parse_args(argv)
    try:
        src = ensure_dataset()
    except Skip as exc:
        print(f"fmnist1k: skipped: {exc}", file=sys.stderr)
        return 0
    work = Path(args.work)
    data = write_folders(src, work / "data")
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    unknown = sorted(set(names) - set(STRATEGIES))
    if unknown:
        ap.error(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    rows = [r for r in previous.get("runs", []) if r["strategy"] not in names]  # keep other strategies' rows
    for name in names:
        for seed in range(args.seeds):
            row = run_one(data, name, seed, work / "runs")
            print(json.dumps(row), flush=True)
            rows.append(row)
            summary = summarise(rows)
            result = {"protocol": {"train_per_class": PER_CLASS, "test": 10000, "image_size": 112, "batch_size": 64,
                                   "backbone": "efficientnet_lite0", "val_fraction": 0.15,
                                   "sample_seed": "numpy default_rng(0)", "cpus": os.cpu_count()},
                      "strategies": summary, "runs": rows,
                      "best": max(summary, key=lambda k: summary[k]["test_accuracy_mean"]),
                      "reference": REFERENCE}
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
    try:
        sys.path.insert(0, str(HERE))
        from tables import write_readme

        write_readme()
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
