"""Issue 16's lever sweep: which training recipe scores best per unit of compute, on real and synthetic data.

Each lever is the baseline recipe with one change (or a named mix of the winners), run from nothing for
``--seeds`` seeds on two sets. The baseline is posetune's defaults before this sweep (:data:`BASELINE`:
``--base-lr-ratio 0.1``); the sweep moved the default to 0.3 (the ``base-lr-0.3`` row), and the baseline stays
pinned so that rows measured before and after the change compare. The sets:
- Fashion-MNIST-1k (bench_fmnist.py's: 100 train images per class, the official 10,000 test images), at
  112 px unless the lever sets the size;
- synthetic yoga at the demo's settings (`posetune demo`: 100 train + 30 test images per pose, rendered at
  160 px, trained at 128 px).

posetune holds 15% of the train images out as val and keeps the best val epoch; the table reports test.
``refit`` levers (`train --refit`) train that run, then again on train + val for as many epochs; their train
seconds are both runs'.
``tta`` is not a training lever: it re-scores each ``baseline`` run with `posetune.evaluate(..., tta=True)`
(flipped and multi-crop views, 10 per image), so its cost is the evaluation's, not a training's.

Run: PYTHONPATH=src python benchmarks/bench_levers.py [--sets fmnist,yoga] [--levers baseline,ema,...]
     [--seeds 3] [--first-seed 0]
Writes benchmarks/results/levers.json (rows of levers not rerun are kept) and prints the table. Seconds are
training seconds (epochs, validation included) and depend on the machine's load (kept per row); a lever's
cost is its seconds over the baseline's in the same invocation, and "-" where that invocation ran no baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_fmnist  # noqa: E402  (the Fashion-MNIST-1k folders)

SIZES = {"fmnist": 112, "yoga": 128}  # each set's training size unless a lever sets one
YOGA_DATA = {"per_class": 100, "test_per_class": 30, "size": 160, "seed": 0}  # the demo's render
# posetune's defaults until this sweep (now 0.3: strategies.BASE_LR_RATIO); the crop pinned at its default 0.5;
# exact fp32 (--precision auto on a CPU) unless a lever asks for bf16
BASELINE = {"base_lr_ratio": 0.1, "crop_scale": 0.5, "precision": "fp32"}
LEVERS = {
    "baseline": {},
    "full": {"strategy": "full"},
    "full-base-lr-0.3": {"strategy": "full", "base_lr_ratio": 0.3},
    "full-base-lr-1": {"strategy": "full", "base_lr_ratio": 1.0},
    "lp-ft": {"strategy": "lp-ft"},
    "freeze-2": {"freeze_stages": 2},
    "bn-train": {"bn": "train"},
    "base-lr-0.3": {"base_lr_ratio": 0.3},
    "base-lr-1": {"base_lr_ratio": 1.0},
    "layer-decay-0.7": {"base_lr_ratio": 1.0, "layer_decay": 0.7},
    "ema": {"ema": 0.999},
    "mixup-0.2": {"mixup": 0.2},
    "cutmix-1": {"cutmix": 1.0},
    "no-label-smoothing": {"label_smoothing": 0.0},
    "epochs-3": {"epochs": 3},
    "epochs-5": {"epochs": 5},
    "epochs-20": {"epochs": 20},
    "batch-64": {"batch_size": 64},
    "lite1": {"backbone": "efficientnet_lite1"},
    "lite2": {"backbone": "efficientnet_lite2"},
    "size-160": {"image_size": 160},
    "size-224": {"image_size": 224},
    # mixes of the single levers that won on Fashion-MNIST-1k (seed 0)
    "base-lr-0.3+ema": {"base_lr_ratio": 0.3, "ema": 0.999},
    "full+ema": {"strategy": "full", "ema": 0.999},
    "base-lr-0.3+size-224": {"base_lr_ratio": 0.3, "image_size": 224},  # `posetune train DATA`, new defaults
    # the random crop's smallest area share (--crop-scale; 0.5 by default), at today's base LR
    "base-lr-0.3+crop-0.25": {"base_lr_ratio": 0.3, "crop_scale": 0.25},
    "base-lr-0.3+crop-0.8": {"base_lr_ratio": 0.3, "crop_scale": 0.8},
    "base-lr-0.3+crop-1": {"base_lr_ratio": 0.3, "crop_scale": 1.0},
    "base-lr-0.3+trivial": {"base_lr_ratio": 0.3, "augment": "trivial"},  # --augment trivial (TrivialAugment)
    # crop 0.8 at the default 224 px (`posetune train DATA --crop-scale 0.8`)
    "base-lr-0.3+crop-0.8+size-224": {"base_lr_ratio": 0.3, "crop_scale": 0.8, "image_size": 224},
    # the two +0.007 levers at 112 px (layer decay, 20 epochs), combined at the default 224 px
    "layer-decay-0.7+epochs-20+size-224": {"base_lr_ratio": 1.0, "layer_decay": 0.7, "epochs": 20, "image_size": 224},
    "layer-decay-0.7+size-224": {"base_lr_ratio": 1.0, "layer_decay": 0.7, "image_size": 224},
    "base-lr-0.3+epochs-20+size-224": {"base_lr_ratio": 0.3, "epochs": 20, "image_size": 224},
    # the defaults at a larger size, and trained on all 1000 train images (no val: the last epoch is kept and no
    # temperature is fitted), which says what the 15% held out for choosing the epoch costs
    "base-lr-0.3+size-288": {"base_lr_ratio": 0.3, "image_size": 288},
    "base-lr-0.3+val-0+size-224": {"base_lr_ratio": 0.3, "val_fraction": 0.0, "image_size": 224},
    "base-lr-0.3+val-0": {"base_lr_ratio": 0.3, "val_fraction": 0.0},  # the same at the set's own size
    "base-lr-0.3+val-0+epochs-20+size-224": {"base_lr_ratio": 0.3, "val_fraction": 0.0, "epochs": 20, "image_size": 224},
    # --refit: the run fits its temperature on val, then train + val trains again for as many epochs (about 2x)
    "base-lr-0.3+refit+size-224": {"base_lr_ratio": 0.3, "refit": True, "image_size": 224},
    "base-lr-0.3+refit": {"base_lr_ratio": 0.3, "refit": True},
    # the 0.883 recipe (val-0 + 20 epochs) with a temperature: the selection runs all 20 epochs (no early stop)
    "base-lr-0.3+refit+epochs-20+patience-0+size-224": {"base_lr_ratio": 0.3, "refit": True, "epochs": 20,
                                                        "patience": 0, "image_size": 224},
    # the head LR (2e-3 / 5e-4; pretrained stages at 0.3x) and the batch (16: twice the steps), never swept before, at 224 px
    "base-lr-0.3+lr-2e-3+size-224": {"base_lr_ratio": 0.3, "lr": 2e-3, "image_size": 224},
    "base-lr-0.3+lr-5e-4+size-224": {"base_lr_ratio": 0.3, "lr": 5e-4, "image_size": 224},
    "base-lr-0.3+batch-16+size-224": {"base_lr_ratio": 0.3, "batch_size": 16, "image_size": 224},
    # `--precision bf16` (autocast) on a CPU with native bf16 (AVX512-BF16 / AMX), against the fp32 rows
    "base-lr-0.3+size-224+bf16": {"base_lr_ratio": 0.3, "image_size": 224, "precision": "bf16"},
    "tta": None,  # scored on the baseline runs
}


def train_row(data: Path, set_name: str, lever: str, seed: int, work: Path) -> dict:
    import posetune

    opts = {"image_size": SIZES[set_name], **BASELINE, **LEVERS[lever], "seed": seed, "device": "cpu"}
    out = work / f"{set_name}-{lever}-s{seed}"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    result = posetune.train(str(data), out=str(out), **opts)
    wall = time.perf_counter() - t0
    meta = json.loads((out / "model.json").read_text())
    return {"set": set_name, "lever": lever, "seed": seed, "options": LEVERS[lever],
            "test_accuracy": result.metrics["test"]["accuracy"],
            "val_accuracy": (result.metrics.get("val") or {}).get("accuracy"),
            "train_seconds": round(result.train_seconds, 1), "wall_seconds": round(wall, 1),
            "backbone": meta["backbone"], "strategy": meta["strategy"],
            "image_size": meta["preprocessing"]["input_size"][-1], "epochs_run": len(result.history),
            "best_epoch": meta.get("best_epoch"), "refit": meta.get("refit"), "run": str(out),
            "temperature": meta.get("temperature"), "test_calibration": (meta.get("calibration") or {}).get("test"),
            "load_average_1min": round(os.getloadavg()[0], 2)}


def tta_row(data: Path, base: dict) -> dict:
    import posetune

    t0 = time.perf_counter()
    metrics = posetune.evaluate(base["run"], str(data), tta=True)
    return {**base, "lever": "tta", "options": {"evaluate": {"tta": True}},
            "test_accuracy": metrics["tta"]["accuracy"], "test_accuracy_without_tta": metrics["accuracy"],
            "eval_seconds": round(time.perf_counter() - t0, 1), "load_average_1min": round(os.getloadavg()[0], 2)}


def invocation(row: dict) -> str:
    """The sweep invocation a row came from: each one trains under its own temporary folder."""
    return str(Path(row["run"]).parent)


def summarise(rows: list[dict]) -> dict:
    """set -> lever -> mean / std of test accuracy and mean train seconds, with the cost against the baseline."""
    out: dict = {}
    for set_name in dict.fromkeys(r["set"] for r in rows):
        mine = [r for r in rows if r["set"] == set_name]
        base: dict[str, list[float]] = {}  # invocation -> its baseline runs' seconds
        for r in mine:
            if r["lever"] == "baseline":
                base.setdefault(invocation(r), []).append(r["train_seconds"])
        table = {}
        for lever in LEVERS:
            got = [r for r in mine if r["lever"] == lever]
            if not got:
                continue
            acc = np.array([r["test_accuracy"] for r in got])
            secs = float(np.mean([r["train_seconds"] for r in got]))
            # a cost is a ratio within one invocation (same machine state); a lever run in an invocation
            # that trained no baseline has no cost rather than one against another day's baseline
            costs = [r["train_seconds"] / float(np.mean(base[invocation(r)])) for r in got if invocation(r) in base]
            table[lever] = {"seeds": len(got), "test_accuracy_mean": round(float(acc.mean()), 4),
                            "test_accuracy_std": round(float(acc.std(ddof=1)) if len(acc) > 1 else 0.0, 4),
                            "train_seconds_mean": round(secs, 1),
                            "cost_vs_baseline": round(float(np.mean(costs)), 2) if costs else None,
                            "cost_runs": len(costs)}
        out[set_name] = table
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="fmnist,yoga")
    ap.add_argument("--levers", default=",".join(LEVERS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds FIRST .. FIRST+SEEDS-1 (add seeds to a sweep)")
    ap.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "posetune-levers"))
    ap.add_argument("--out", default=str(HERE / "results" / "levers.json"))
    args = ap.parse_args(argv)
    levers = [n.strip() for n in args.levers.split(",") if n.strip()]
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = sorted(set(levers) - set(LEVERS)) + sorted(set(sets) - set(SIZES))
    if unknown:
        ap.error(f"unknown levers or sets {unknown}; levers: {', '.join(LEVERS)}; sets: {', '.join(SIZES)}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {}
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    rows = [r for r in previous.get("runs", [])
            if not (r["set"] in sets and r["lever"] in levers and r["seed"] in seeds)]
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        data = {}
        if "fmnist" in sets:
            data["fmnist"] = bench_fmnist.write_folders(bench_fmnist.ensure_dataset(), work / "fmnist1k")
        if "yoga" in sets:
            from posetune.data.synth import render_dataset

            render_dataset(Path(tmp) / "yoga", **YOGA_DATA)
            data["yoga"] = Path(tmp) / "yoga"
        for set_name, root in data.items():
            for seed in seeds:
                base = None
                for lever in levers:
                    if lever == "tta":
                        if base is None:  # the run TTA re-scores, kept as a baseline row
                            rows.append(base := train_row(root, set_name, "baseline", seed, Path(tmp)))
                        rows.append(tta_row(root, base))
                    else:
                        rows.append(train_row(root, set_name, lever, seed, Path(tmp)))
                        base = rows[-1] if lever == "baseline" else base
                    print(json.dumps({k: v for k, v in rows[-1].items() if k != "options"}), flush=True)
                    result = {"protocol": {"sizes": SIZES, "yoga": YOGA_DATA, "val_fraction": 0.15, "baseline": BASELINE,
                                           "cpus": os.cpu_count()},
                              "levers": summarise(rows), "runs": rows}
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["levers"], indent=1))
    from tables import write_readme

    write_readme()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
