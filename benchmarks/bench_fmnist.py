"""Fashion-MNIST-1k: every fine-tuning strategy on real images, against a plain PyTorch loop run beside it.

Protocol: 100 training images per class drawn stratified from the official train split with
numpy default_rng(0); the full official 10,000-image test split; 28 -> 112 px, 3 channels;
efficientnet_lite0 with its offline ImageNet weights; batch 64; each strategy's default epochs
(10; linear: 30 cheap epochs on cached features); ``--seeds`` seeds (3 by default).
posetune holds out 15% of TRAIN for validation (best-epoch choice), so it trains on 850 images.

The plain loop (the torchvision fine-tuning tutorial's: ImageFolder, PIL transforms every epoch, train + val
phases; ``workers.py plain-loop``) runs in the same benchmark run, right after each posetune run of a strategy
it has a counterpart for, on the same 850 / 150 / 10,000 images (hard links of posetune's own split), the
same weights, frozen stages, size, batch, LRs and epochs. No peer figure is typed in.

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
EPOCHS = 10  # the plain loop's: posetune's default for the strategies that train the base
# the plain loop's counterpart of a posetune strategy: (backbone spec, strategy of its frozen stages, freeze_stages)
PLAIN = {"linear": ("efficientnet_lite0", "linear", None), "partial": ("efficientnet_lite0", "partial", 4),
         "full": ("efficientnet_lite0", "full", None), "full-random": ("efficientnet_lite0@random", "full", None)}
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
            "load_average_1min": round(os.getloadavg()[0], 2), "measured": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def plain_folders(data: Path, out: Path, seed: int) -> Path:
    """TRAIN / VAL / TEST class folders of hard links: posetune's own held-out split of DATA for this seed."""
    from posetune.data.layouts import discover

    done = out / ".complete"
    if done.is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    index = discover(data, val_fraction=0.15, seed=seed)
    for s in index.samples:
        dst = out / s.split.upper() / index.classes[s.label] / Path(s.path).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(s.path, dst)
    done.write_text("ok\n")
    return out


def run_peer(peer: str, data: Path, name: str, seed: int, work: Path) -> dict:
    """A peer's run (``plain-loop``, ``fastai`` or ``lightning``: workers.py / peers.py) of strategy ``name`` on
    posetune's split of this seed, in a fresh interpreter."""
    sys.path.insert(0, str(HERE))
    from common import worker

    from posetune import backbones

    backbone, strategy, freeze = PLAIN[name]
    cfg = backbones.data_config(backbones.build_model(backbone.split("@")[0], len(CLASSES)), 112)
    res = worker(peer, data=str(plain_folders(data, work / f"plain-split-s{seed}", seed).resolve()), backbone=backbone,
                 strategy=strategy, freeze_stages=freeze, size=112, batch=64, epochs=EPOCHS, lr=1e-3, seed=seed,
                 mean=list(cfg["mean"]), std=list(cfg["std"]))
    return {"peer": peer, "strategy": name, "seed": seed, "test_accuracy": res["test_accuracy"],
            "train_seconds": res["total_seconds"], "wall_seconds": res["wall"],
            "epoch_seconds": res.get("epoch_seconds"), "load_average_1min": round(os.getloadavg()[0], 2),
            "measured": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def peers_here() -> list[str]:
    """The plain loop, and fastai / Lightning where installed (a line says which are skipped)."""
    sys.path.insert(0, str(HERE))
    from peers import PEERS, missing

    here = ["plain-loop"]
    for peer in PEERS:
        why = missing(peer)
        if why:
            print(f"fmnist1k: {why}", file=sys.stderr)
        else:
            here.append(peer)
    return here


def peer_summary(rows: list[dict], name: str) -> dict:
    """peer -> its mean test accuracy and train seconds on strategy ``name``."""
    out = {}
    for peer in dict.fromkeys(r.get("peer", "plain-loop") for r in rows):
        mine = [r for r in rows if r.get("peer", "plain-loop") == peer and r["strategy"] == name]
        if mine:
            out[peer] = {"seeds": len(mine),
                         "test_accuracy_mean": round(float(np.mean([r["test_accuracy"] for r in mine])), 4),
                         "train_seconds_mean": round(float(np.mean([r["train_seconds"] for r in mine])), 1)}
    return out


def summarise(rows: list[dict], plain_rows: list[dict]) -> dict:
    out = {}
    for name in STRATEGIES:
        mine = [r for r in rows if r["strategy"] == name]
        if not mine:
            continue
        acc = np.array([r["test_accuracy"] for r in mine])
        secs = np.array([r["train_seconds"] for r in mine])
        peers = peer_summary(plain_rows, name)
        plain = peers.get("plain-loop")
        plain_acc = plain["test_accuracy_mean"] if plain else None
        out[name] = {"seeds": len(mine), "test_accuracy_mean": round(float(acc.mean()), 4),
                     "test_accuracy_std": round(float(acc.std(ddof=1)) if len(acc) > 1 else 0.0, 4),
                     "train_seconds_mean": round(float(secs.mean()), 1),
                     "wall_seconds_mean": round(float(np.mean([r["wall_seconds"] for r in mine])), 1),
                     "plain_test_accuracy_mean": plain_acc,
                     "plain_train_seconds_mean": plain["train_seconds_mean"] if plain else None,
                     "matches_plain_loop": bool(acc.mean() >= plain_acc - 0.005) if plain else None,
                     # rows kept from earlier invocations are older than the ones just run: the table says when
                     "measured": max((r["measured"] for r in mine if r.get("measured")), default=None),
                     "peers": peers}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "posetune-fmnist1k"))
    ap.add_argument("--out", default=str(HERE / "results" / "fmnist1k.json"))
    ap.add_argument("--no-peers", action="store_true", help="skip the peers' runs (plain loop, fastai, Lightning)")
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
    plain_rows = [r for r in previous.get("peer_runs", []) if r["strategy"] not in names]
    peers = [] if args.no_peers else peers_here()
    for name in names:
        for seed in range(args.seeds):
            row = run_one(data, name, seed, work / "runs")
            print(json.dumps(row), flush=True)
            rows.append(row)
            for peer in peers if name in PLAIN else []:  # interleaved: the machine state of posetune's run
                plain_rows.append(run_peer(peer, data, name, seed, work))
                print(json.dumps(plain_rows[-1]), flush=True)
            summary = summarise(rows, plain_rows)
            result = {"protocol": {"train_per_class": PER_CLASS, "test": 10000, "image_size": 112, "batch_size": 64,
                                   "backbone": "efficientnet_lite0", "val_fraction": 0.15,
                                   "sample_seed": "numpy default_rng(0)", "cpus": os.cpu_count()},
                      "strategies": summary, "runs": rows, "peer_runs": plain_rows,
                      "best": max(summary, key=lambda k: summary[k]["test_accuracy_mean"])}
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
