"""`posetune data check --label-issues` against labels flipped on purpose: precision, recall and time.

Protocol: two sets, each judged whole by ``posetune.check_data(MANIFEST, label_issues=True)`` with the defaults
(efficientnet_lite0 with its offline ImageNet weights at its pretrained 224 px, 5 stratified folds x 3 shuffles):

- synthetic yoga: ``posetune.data.synth.render_dataset`` 5 poses x 60 images at 128 px (seed 0), no test split;
- Fashion-MNIST-1k: the 1,000 training images of bench_fmnist.py (100 per class, numpy default_rng(0)), as PNG;
  skipped with a message where Debian's ``dataset-fashion-mnist`` cannot be installed.

5% of the labels (round(0.05 n)) are flipped at random (numpy default_rng(--seed)) to another class, uniformly;
the noisy labels go into a CSV manifest (path,label,split), so no image is copied or moved. Precision and
recall are those of every flagged image (mislabel and outlier kinds together) against the flipped ones;
``mislabel_only`` counts the mislabel kind alone, and ``suggestion_accuracy`` is how often a flagged flipped
image's suggested label is its true one. Goal: recall >= 0.8 at precision >= 0.7 on both sets.

Run: PYTHONPATH=src python benchmarks/bench_label_issues.py [--seed 0] [--sets synth,fmnist]
Writes benchmarks/results/label_issues.json (scratch files under $TMPDIR/posetune-label-issues).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GOAL = {"recall": 0.8, "precision": 0.7}
FLIP_FRACTION = 0.05


def synth_set(work: Path) -> tuple[list[str], list[str]]:
    """(paths, labels) of 5 poses x 60 synthetic images at 128 px."""
    from posetune.data.synth import render_dataset

    root = work / "synth"
    if not (root / ".complete").is_file():
        render_dataset(root, per_class=60, test_per_class=0, size=128, seed=0)
        (root / ".complete").write_text("ok\n")
    paths = sorted(str(p) for p in (root / "TRAIN").rglob("*.jpg"))
    return paths, [Path(p).parent.name for p in paths]


def fmnist_set(work: Path) -> tuple[list[str], list[str]]:
    """(paths, labels) of Fashion-MNIST-1k's training images (bench_fmnist.py's draw), written once as PNG."""
    import bench_fmnist
    from PIL import Image

    src = bench_fmnist.ensure_dataset()  # raises bench_fmnist.Skip where it cannot be had
    root = work / "fmnist1k"
    classes = bench_fmnist.CLASSES
    if not (root / ".complete").is_file():
        x = bench_fmnist.read_idx(src / "train-images-idx3-ubyte.gz")
        y = bench_fmnist.read_idx(src / "train-labels-idx1-ubyte.gz")
        rng = np.random.default_rng(0)
        picked = np.concatenate([rng.choice(np.flatnonzero(y == c), bench_fmnist.PER_CLASS, replace=False)
                                 for c in range(len(classes))])
        for c in classes:
            (root / c).mkdir(parents=True, exist_ok=True)
        for i in picked:
            Image.fromarray(x[i]).convert("RGB").save(root / classes[y[i]] / f"{i:05d}.png")
        (root / ".complete").write_text("ok\n")
    paths = sorted(str(p) for p in root.rglob("*.png"))
    return paths, [Path(p).parent.name for p in paths]


def flip_labels(labels: list[str], seed: int) -> tuple[list[str], set[int]]:
    """round(5% of n) labels changed to another class drawn uniformly; returns (noisy labels, flipped rows)."""
    rng = np.random.default_rng(seed)
    classes = sorted(set(labels))
    rows = rng.choice(len(labels), round(FLIP_FRACTION * len(labels)), replace=False)
    noisy = list(labels)
    for i in rows:
        noisy[i] = str(rng.choice([c for c in classes if c != labels[i]]))
    return noisy, {int(i) for i in rows}


def run_set(name: str, paths: list[str], labels: list[str], seed: int, work: Path) -> dict:
    import posetune

    noisy, flipped = flip_labels(labels, seed)
    manifest = work / f"{name}-noisy.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        w.writerows((p, lab, "train") for p, lab in zip(paths, noisy))
    sheet, fixed = work / f"{name}-label-issues.png", work / f"{name}-fixed.csv"
    for stale in (sheet, fixed, Path(f"{fixed}.json")):
        stale.unlink(missing_ok=True)  # this benchmark's own outputs from an earlier run
    load_before = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    report = posetune.check_data(manifest, label_issues=True, contact_sheet=str(sheet), fix_manifest=str(fixed))
    seconds = time.perf_counter() - t0
    result = report["label_issues"]
    row_of = {os.path.abspath(p): i for i, p in enumerate(paths)}
    flagged = {row_of[os.path.abspath(r["path"])]: r for r in result["issues"]}
    mislabel = {i for i, r in flagged.items() if r["kind"] == "mislabel"}

    def pr(found: set[int]) -> dict:
        tp = len(found & flipped)
        return {"flagged": len(found), "true_positives": tp, "precision": round(tp / len(found), 3) if found else None,
                "recall": round(tp / len(flipped), 3)}

    scores = pr(set(flagged))
    caught = [i for i in flagged if i in flipped and flagged[i]["kind"] == "mislabel"]
    return {
        "set": name, "images": len(paths), "classes": len(set(labels)), "flipped": len(flipped), **scores,
        "goal_met": bool(scores["recall"] >= GOAL["recall"] and (scores["precision"] or 0) >= GOAL["precision"]),
        "mislabel_only": pr(mislabel), "outliers_flagged": len(flagged) - len(mislabel),
        "suggestion_accuracy": round(sum(flagged[i]["suggested"] == labels[i] for i in caught) / len(caught), 3)
        if caught else None,
        "oof_accuracy_vs_noisy_labels": result["oof_accuracy"], "C": result["C"], "folds": result["folds"],
        "repeats": result["repeats"], "backbone": result["backbone"], "weights": result["weights"],
        "image_size": result["image_size"], "seconds_total": round(seconds, 1),
        "seconds_label_issues": result["seconds"], "load_average_1min": [load_before, round(os.getloadavg()[0], 2)],
        "warnings": result["warnings"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="of the label flips")
    ap.add_argument("--sets", default="synth,fmnist")
    ap.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "posetune-label-issues"))
    ap.add_argument("--out", default=str(HERE / "results" / "label_issues.json"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import bench_fmnist

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    makers = {"synth": synth_set, "fmnist": fmnist_set}
    results, skipped = [], {}
    for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        try:
            paths, labels = makers[name](work)
        except bench_fmnist.Skip as exc:
            print(f"label_issues {name}: skipped: {exc}", file=sys.stderr)
            skipped[name] = str(exc)
            continue
        row = run_set(name, paths, labels, args.seed, work)
        print(json.dumps({k: row[k] for k in ("set", "flipped", "flagged", "precision", "recall", "goal_met",
                                              "seconds_total")}), flush=True)
        results.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"protocol": {"flip_fraction": FLIP_FRACTION, "flip_seed": args.seed, "goal": GOAL,
                                            "cpus": os.cpu_count(), "command": "posetune.check_data(MANIFEST, "
                                            "label_issues=True) with the defaults"},
                               "sets": results, "skipped": skipped}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
