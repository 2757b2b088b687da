"""Issue 16's "an ensemble of the best cells or TTA, if it pays": does either pay on Fashion-MNIST-1k?

Trains ``--members`` runs of `posetune train DATA` with every default (efficientnet_lite0, partial, 224 px,
10 epochs; seeds 0, 1, ...; each seed also draws its own 15% val split) on bench_fmnist.py's folders, then
scores the official 10,000 test images with each run: the centre crop (what `posetune evaluate` scores), its
mirror, and their mean (flip TTA, 2 views). Ensembles average the members' probabilities (after each run's
temperature) over every combination of k members. Nothing here is chosen on test: every figure is reported.

Cost is what a user pays: an ensemble of k trains k runs (k x the training seconds) and predicts k times
slower; flip TTA predicts 2x slower and trains nothing more.

Run: PYTHONPATH=src python benchmarks/bench_ensemble.py [--members 3] [--work DIR]
Writes benchmarks/results/ensemble.json. Runs and their test probabilities are kept under --work (default
$TMPDIR/posetune-ensemble) and reused by a later invocation, so the figures can be recomputed without training.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_fmnist  # noqa: E402  (the Fashion-MNIST-1k folders)
from common import save_and_print  # noqa: E402

VIEWS = ("centre", "mirror")  # the two test views scored per member


def train_member(data: Path, run: Path, seed: int) -> dict:
    """One default run (reused when a complete one is there); its model.json's figures."""
    import posetune

    if not (run / "model.json").is_file():
        shutil.rmtree(run, ignore_errors=True)  # a half-written member of an earlier invocation of this script
        posetune.train(str(data), out=str(run), seed=seed, device="cpu")
    meta = json.loads((run / "model.json").read_text())
    return {"seed": seed, "run": str(run), "train_seconds": meta["train_seconds"], "epochs_run": meta["epochs_run"],
            "best_epoch": meta["best_epoch"], "image_size": meta["preprocessing"]["input_size"][-1],
            "val_accuracy": meta["metrics"]["val"]["accuracy"], "test_accuracy_as_trained": meta["metrics"]["test"]["accuracy"]}


def view_probabilities(run: Path, paths: list[Path], classes: list[str], batch_size: int = 64) -> dict[str, np.ndarray]:
    """{view: (n, classes) softmax(logits / temperature)} in ``classes``' order, cached beside the run."""
    cached = {v: run / f"test_probs_{v}.npy" for v in VIEWS}
    if all(f.is_file() for f in cached.values()):
        return {v: np.load(f) for v, f in cached.items()}
    import torch
    import torchvision.transforms.v2.functional as F

    from posetune.predict import load

    clf = load(str(run), device="cpu")
    order = [clf.classes.index(c) for c in classes]
    pre, out = clf.preprocess, {v: [] for v in VIEWS}
    for i in range(0, len(paths), batch_size):
        crops = clf.normalize(torch.stack([pre.eval_crop(pre.decode(str(p))) for p in paths[i:i + batch_size]]))
        for view, batch in zip(VIEWS, (crops, F.hflip(crops))):
            out[view].append((clf.logits(batch) / clf.temperature).softmax(1).numpy())
    probs = {v: np.concatenate(out[v])[:, order] for v in VIEWS}
    for v, f in cached.items():
        np.save(f, probs[v])
    return probs


def summarise(members: list[dict], probs: list[dict[str, np.ndarray]], y: np.ndarray) -> dict:
    """Test accuracy of one member, of flip TTA, and of k-member ensembles (mean ± std over combinations)."""
    def acc(p: np.ndarray) -> float:
        return float((p.argmax(1) == y).mean())

    def stats(values: list[float]) -> dict:
        a = np.array(values)
        return {"mean": round(float(a.mean()), 4), "std": round(float(a.std(ddof=1)) if len(a) > 1 else 0.0, 4),
                "n": len(a), "values": [round(v, 4) for v in values]}

    single_s = float(np.mean([m["train_seconds"] for m in members]))
    rows = {"single": {**stats([acc(p["centre"]) for p in probs]), "train_cost": 1, "predict_cost": 1},
            "flip-tta": {**stats([acc(p["centre"] + p["mirror"]) for p in probs]), "train_cost": 1, "predict_cost": 2}}
    for k in range(2, len(probs) + 1):
        combos = list(itertools.combinations(range(len(probs)), k))
        rows[f"ensemble-{k}"] = {**stats([acc(sum(probs[i]["centre"] for i in c)) for c in combos]),
                                 "train_cost": k, "predict_cost": k}
        rows[f"ensemble-{k}+flip-tta"] = {**stats([acc(sum(probs[i]["centre"] + probs[i]["mirror"] for i in c))
                                                   for c in combos]), "train_cost": k, "predict_cost": 2 * k}
    for r in rows.values():
        r["train_seconds"] = round(single_s * r["train_cost"], 1)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "posetune-ensemble"))
    ap.add_argument("--out", default=str(HERE / "results" / "ensemble.json"))
    args = ap.parse_args(argv)
    if args.members < 2:
        ap.error("--members must be 2 or more: an ensemble needs two runs")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = bench_fmnist.write_folders(bench_fmnist.ensure_dataset(), work / "fmnist1k")
    classes = sorted(p.name for p in (data / "TEST").iterdir())
    paths = sorted((data / "TEST").glob("*/*.png"))
    y = np.array([classes.index(p.parent.name) for p in paths])
    members, probs, t0 = [], [], time.perf_counter()
    for seed in range(args.members):
        members.append(train_member(data, work / f"member-s{seed}", seed))
        probs.append(view_probabilities(Path(members[-1]["run"]), paths, classes))
        print(json.dumps(members[-1]), flush=True)
    result = {"protocol": {"data": "Fashion-MNIST-1k (100 train images per class, the official 10,000 test images)",
                           "train": "posetune train DATA, every default, --seed = member index", "cpus": os.cpu_count(),
                           "n_test": len(paths)},
              "members": members, "rows": summarise(members, probs, y),
              "seconds": round(time.perf_counter() - t0, 1)}
    save_and_print(args.out, result)
    from tables import write_readme

    write_readme()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
