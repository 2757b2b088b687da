"""The benchmark suite: `make bench` (--full) and `make bench-quick` (--quick, a few minutes on 2 cores).

Every figure is a ratio of two measurements taken in the same run, one right after the other (these
machines are shared and noisy), with the absolute figures beside it in benchmarks/results/*.json.
summary.json holds the headline keys; benchmarks/README.md gets the tables.

  train_efficiency      posetune train images/s (steady-state epochs, validation excluded) / the bare
                        model's forward + backward + AdamW step images/s on an in-memory tensor of the
                        same shape, same frozen stages (the compute limit), measured in one process:
                        a block of bare steps before epoch 1 and after every epoch of `posetune.train`;
                        per case the steady epochs' pooled rate / the blocks' pooled rate; the minimum
                        over the cases (train_efficiency_neighbour_median: each epoch over the better
                        block around it, the median; the old two-process figure per case beside it)
  vs_plain_loop         the torchvision-tutorial loop (ImageFolder, PIL decode every epoch) / posetune,
                        total time for the same epochs on 1024-1280 px JPEGs (posetune's one-off decode
                        included), same model, batch, image size, optimizer
  decoded_cache_speedup epoch time decoding every epoch (PIL open + resize per sample) / posetune's
                        decode-once cache, same training step
  linear_cache_speedup  linear strategy, 10 epochs: per-epoch frozen forward (training.loop.fit) / cached features
  predict_efficiency    `posetune predict RUN FOLDER --engine torch` steady images/s (a folder vs the same six
                        times over: start-up cancels) / bare eager inference images/s, best memory layout
  onnx_speedup_b1       torch eager / ONNX Runtime latency at batch 1
  mallopt_speedup       bare training step rate with runtime.tune_allocator() / with POSETUNE_NO_MALLOPT=1
  help_seconds, predict_one_seconds, peak_rss_mb_train, peak_rss_mb_predict

Run: python benchmarks/suite.py --quick | --full [--only train_efficiency,onnx,...] [--skip-fmnist]
     (--full --only train_efficiency --cases efficientnet_lite0:full:224,...: some cases of the ~2 h section)
(--full also runs bench_fmnist.py, bench_label_issues.py (the label-issue finder against flipped labels),
bench_reliance.py (background reliance per strategy), bench_calibration.py (ECE before/after temperature) and
bench_live.py (the page's Live mode in headless Chromium with a fake camera; skipped without Chromium),
bench_budget.py (`train --time-budget` against its budgets), bench_levers.py (the training levers) and
bench_ensemble.py (ensembles of default runs and flip TTA on Fashion-MNIST-1k).)

The sections are in sections/ (train, inference, cli), the measurements that each need a fresh interpreter
in workers.py, and what they share (child processes, photo sets, results files) in common.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# benchmarks/ is on sys.path: it is this script's folder
from common import HERE, RESULTS, ROOT, load_average, log, make_photos, write_result
from sections import cli, inference, train

if str(ROOT / "src") not in sys.path:  # the sections import posetune in this process too
    sys.path.insert(0, str(ROOT / "src"))

TARGETS = {"train_efficiency": ">= 0.95", "train_efficiency_neighbour_median": "report", "vs_plain_loop": ">= 1.5", "linear_cache_speedup": ">= 10",
           "predict_efficiency": ">= 0.90", "onnx_speedup_b1": "> 1 (bench_serve: 4.1)", "help_seconds": "< 0.5",
           "predict_one_seconds": "< 3", "predict_efficiency_small_images": ">= 0.90", "peak_rss_mb_train": "report", "peak_rss_mb_predict": "report",
           "decoded_cache_speedup": "> 1", "mallopt_speedup": "> 1", "batch_jitter_speedup": "> 1"}
SECTIONS = ("cli", "train_efficiency", "augment", "mallopt", "plain_loop", "decoded_cache", "linear_cache", "predict", "onnx")
BENCHES = {"augment": train.bench_augment, "cli": cli.bench_cli, "train_efficiency": train.bench_train_efficiency,
           "mallopt": train.bench_mallopt, "decoded_cache": train.bench_decoded_cache, "plain_loop": train.bench_plain_loop,
           "linear_cache": train.bench_linear_cache, "predict": inference.bench_predict, "onnx": inference.bench_onnx}
SUMMARY_KEYS = {"augment": ["batch_jitter_speedup"], "cli": ["help_seconds"], "train_efficiency": ["train_efficiency", "train_efficiency_neighbour_median", "peak_rss_mb_train"],
                "mallopt": ["mallopt_speedup"], "decoded_cache": ["decoded_cache_speedup"],
                "plain_loop": ["vs_plain_loop"], "linear_cache": ["linear_cache_speedup"],
                "predict": ["predict_efficiency", "predict_efficiency_small_images", "predict_one_seconds", "peak_rss_mb_predict"],
                "onnx": ["onnx_speedup_b1"]}


def settings(quick: bool) -> dict:
    if quick:
        return {"per_class": (24, 6, 6), "train_cases": [("efficientnet_lite0", "partial", 128)], "train_epochs": 3,
                "train_epochs_in_process": 3, "bare_block_steps": 6, "bare_steps": 12, "efficiency_per_class": (64, 4, 4), "mallopt_rounds": 1, "plain_size": 128, "plain_epochs": 3, "cache_size": 128,
                "cache_epochs": 2, "predict_rounds": 2, "onnx_reps": 20, "augment_images": 128, "augment_epochs": 2}
    cases = [(b, s, px) for b in ("efficientnet_lite0", "resnet18@random") for s in ("partial", "full") for px in (128, 224)]
    return {"per_class": (40, 8, 8), "train_cases": cases, "train_epochs": 3, "train_epochs_in_process": 5,
            "bare_block_steps": 10, "bare_steps": 20,
            "efficiency_per_class": (128, 4, 4), "mallopt_rounds": 2,
            "plain_size": 224, "plain_epochs": 3, "cache_size": 224, "cache_epochs": 3, "predict_rounds": 5,
            "onnx_reps": 30, "augment_images": 256, "augment_epochs": 3}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a few minutes on 2 cores: one train case, no Fashion-MNIST")
    mode.add_argument("--full", action="store_true", help="every case, and the Fashion-MNIST-1k benchmark (long)")
    ap.add_argument("--only", default="", help=f"comma-separated sections: {', '.join(SECTIONS)}")
    ap.add_argument("--skip-fmnist", action="store_true")
    ap.add_argument("--cases", default="", help="train_efficiency: only these BACKBONE:STRATEGY:SIZE cases, comma-"
                    "separated (e.g. efficientnet_lite0:full:224), with --full's settings; the other cases' rows of "
                    "results/bench_train_efficiency.json are kept (each row says when it was measured)")
    ap.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "posetune-bench"))
    args = ap.parse_args(argv)
    quick = not args.full
    ctx = settings(quick)
    if args.cases:
        try:
            ctx["train_cases"] = [(b, s, int(px)) for b, s, px in (c.split(":") for c in args.cases.split(","))]
        except ValueError:
            ap.error(f"--cases takes BACKBONE:STRATEGY:SIZE entries, e.g. efficientnet_lite0:full:224, not {args.cases}")
        ctx.update(keep_other_cases=True, results=RESULTS)
    ctx["work"] = Path(args.work)
    ctx["work"].mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    load_before = load_average()
    log(f"{'quick' if quick else 'full'} benchmark; work folder {ctx['work']}; load average {load_before}")
    t0 = time.perf_counter()
    ctx["data"] = make_photos(ctx["work"] / "photos", *ctx["per_class"])
    data_seconds = time.perf_counter() - t0
    names = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    if "train_efficiency" in names:
        # epochs of 10-20 batches, as real ones are at least: the per-epoch start is not most of what is timed
        ctx["efficiency_data"] = make_photos(ctx["work"] / "photos-efficiency", *ctx["efficiency_per_class"])
    summary_path = RESULTS / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() and args.only else {}
    details = summary.get("details", {})
    # decoded_cache before plain_loop: posetune's decode-once time goes into the plain-loop comparison.
    order = [s for s in ("cli", "train_efficiency", "augment", "mallopt", "decoded_cache", "plain_loop", "linear_cache", "predict",
                         "onnx") if s in names]
    for name in order:
        t0 = time.perf_counter()
        res = BENCHES[name](ctx)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        res["load_average_1min"] = load_average()
        res["mode"] = "quick" if quick else "full"
        write_result(f"bench_{name}", res)
        for key in SUMMARY_KEYS[name]:
            summary[key] = res[key]
        details[name] = res["seconds"]
        log(f"{name}: " + ", ".join(f"{k}={res[k]}" for k in SUMMARY_KEYS[name]) + f" ({res['seconds']} s)")
    summary.update({"mode": "quick" if quick else "full", "targets": TARGETS, "details": details,
                    "data": f"{sum(ctx['per_class'][:1]) * 5} train / {ctx['per_class'][1] * 5} val / "
                            f"{ctx['per_class'][2] * 5} test synthetic poses as 1024-1280 px JPEGs",
                    "data_seconds": round(data_seconds, 1), "wall_seconds": round(time.perf_counter() - t_start, 1),
                    "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                                "load_average_before": load_before, "load_average_after": load_average()}})
    write_result("summary", summary)
    if args.full and not args.skip_fmnist and not args.only:
        import bench_fmnist

        bench_fmnist.main([])
    if args.full and not args.only:  # results/label_issues.json; its Fashion-MNIST set goes with --skip-fmnist
        import bench_label_issues

        bench_label_issues.main(["--sets", "synth"] if args.skip_fmnist else [])
        import bench_reliance  # results/background_reliance.json: linear vs partial vs full on masked synthetic yoga

        bench_reliance.main([])
        import bench_live  # results/live.json: Live mode's frames/s, latency and label match in a real browser

        bench_live.main([])
        if not args.skip_fmnist:  # results/calibration.json: ECE before/after temperature on the 10,000 test images
            import bench_calibration

            bench_calibration.main([])
        import bench_budget  # results/budget.json: train --time-budget 2m/5m/10m, and at the plain loop's full time
        import bench_levers  # results/levers.json: the training levers, 3 seeds, on both sets

        sets = ["--sets", "yoga"] if args.skip_fmnist else []
        bench_budget.main(sets + ([] if args.skip_fmnist else ["--plain-loop"]))
        bench_levers.main(sets)
        if not args.skip_fmnist:  # results/ensemble.json: 3 default runs, their ensembles and flip TTA
            import bench_ensemble

            bench_ensemble.main([])
    from tables import write_readme

    write_readme()
    log(f"wrote {summary_path} and {HERE / 'README.md'} in {summary['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
