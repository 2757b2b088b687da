"""Issue 14's accuracy figures: image, landmark and fused backbones on synthetic yoga at the demo's settings.

For each training seed, three runs on the demo's data (`posetune demo`: 100 train + 30 test images per pose,
160 px renders, 128 px model, 10 epochs): `efficientnet_lite0` partial, `pose` (landmark MLP), and
`efficientnet_lite0+pose` partial (fusion). Each is scored on the demo's test split and on the same test poses
rendered in an unseen domain (`data synth --shift`: backgrounds, clothing and light training never saw), and its
predict images/s measured on the test images (torch engine, landmark extraction included for pose and fusion).
Also the share of test images where BlazePose finds a person, per class, in both domains.

Run: PYTHONPATH=src python benchmarks/bench_pose_accuracy.py [--seeds 3] [--epochs 10]
Smoke: ... --seeds 1 --per-class 12 --test-per-class 4 --epochs 1
Writes benchmarks/results/pose_accuracy.json. Accuracies do not depend on the machine's load; img/s do
(load_average is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import posetune
from posetune.data.synth import render_dataset
from posetune.predict import collect_paths

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import save_and_print  # noqa: E402

MODELS = {  # name -> train options beyond the demo's
    "efficientnet_lite0 partial": {"backbone": "efficientnet_lite0", "strategy": "partial"},
    "pose": {"backbone": "pose"},
    "efficientnet_lite0+pose partial": {"backbone": "efficientnet_lite0+pose", "strategy": "partial"},
}


def mean_std(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else None, "values": values}


def predict_rate(run: Path, paths: list[str]) -> float:
    clf = posetune.load(run, engine="torch")
    clf.predict(paths[:8])  # warm-up
    t0 = time.perf_counter()
    clf.predict(paths)
    return len(paths) / (time.perf_counter() - t0)


def detection(run: Path) -> dict:
    meta = json.loads((run / "model.json").read_text())
    return meta.get("no_person") or {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "pose_accuracy.json"))
    args = ap.parse_args(argv)
    data_opts = {"per_class": args.per_class, "test_per_class": args.test_per_class, "size": 160, "seed": 0}
    scores: dict[str, dict[str, list[float]]] = {m: {"test": [], "shifted": [], "img_per_s": []} for m in MODELS}
    no_person: dict = {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        plain, shifted = Path(tmp) / "plain", Path(tmp) / "shifted"
        render_dataset(plain, **data_opts)
        render_dataset(shifted, shift=True, **data_opts)
        test_paths = collect_paths([plain / "TEST"])
        for seed in range(args.seeds):
            for name, opts in MODELS.items():
                run = Path(tmp) / f"{name.replace(' ', '-')}-{seed}"
                posetune.train(plain, out=str(run), image_size=128, epochs=args.epochs, batch_size=32, seed=seed,
                               **opts)
                scores[name]["test"].append(posetune.evaluate(run, plain, split="test")["accuracy"])
                scores[name]["shifted"].append(posetune.evaluate(run, shifted, split="test")["accuracy"])
                scores[name]["img_per_s"].append(round(predict_rate(run, test_paths), 1))
                if opts["backbone"] == "pose" and seed == 0:
                    no_person["plain (train run's record)"] = detection(run)
                print(name, seed, {k: v[-1] for k, v in scores[name].items()}, flush=True)
    result = {"data": data_opts, "image_size": 128, "epochs": args.epochs, "seeds": args.seeds,
              "models": {name: {k: mean_std(v) for k, v in s.items()} for name, s in scores.items()},
              "no_person": no_person, "seconds": round(time.perf_counter() - t_start, 1),
              "load_average": os.getloadavg(), "cpus": os.cpu_count()}
    best_single = {split: max(result["models"][m][split]["mean"] for m in list(MODELS)[:2])
                   for split in ("test", "shifted")}
    fusion = result["models"]["efficientnet_lite0+pose partial"]
    result["fusion_at_least_best_single"] = {s: fusion[s]["mean"] >= best_single[s] for s in best_single}
    return save_and_print(args.out, result)


if __name__ == "__main__":
    raise SystemExit(main())
