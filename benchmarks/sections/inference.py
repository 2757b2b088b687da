"""Inference sections: `posetune predict` against the bare model (predict) and the ONNX export and its
batch-1 latency against torch (onnx)."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from common import linked_copies, log, make_small_copies, posetune_bin, ratio, run_child_rss, worker


def bench_predict(ctx: dict) -> dict:
    """`posetune predict` as a user runs it (a fresh process, torch engine): the steady folder rate is the
    difference between a folder and the same folder six times over (hard links), which cancels start-up
    and first-batch warm-up; predict_one_seconds is the whole command on one image. This machine's speed
    drifts by 20% over minutes, so every round measures the bare model right after posetune, and the
    efficiency is the median of the per-round ratios."""
    run = ctx.get("predict_run")
    if run is None:
        import posetune

        run = Path(posetune.train(str(ctx["data"]), out=str(ctx["work"] / "linear-cached"), strategy="linear", epochs=2,
                                  device="cpu").run)
        ctx["predict_run"] = run
    meta = json.loads((run / "model.json").read_text())
    size = meta["preprocessing"]["input_size"][-1]
    big = ctx["data"] / "TRAIN"
    small = make_small_copies(big, ctx["work"] / "photos-small")
    base = [posetune_bin(), "predict", str(run), "--json", "--device", "cpu", "--engine", "torch"]
    out: dict = {"run": str(run), "engine": "torch",
                 "image_sizes": "1024-1280 px JPEG; small: the same resized to 320x240 / 240x240"}
    infer = []
    for label, folder in (("", big), ("_small_images", small)):
        files = sorted(folder.rglob("*.jpg"))
        sixfold = linked_copies(folder, ctx["work"] / f"predict-x6{label}", 6)
        log(f"predict: {len(files)} and {6 * len(files)} images from {folder}")
        ones, rates, ratios = [], [], []
        for _ in range(ctx["predict_rounds"]):
            ones.append(run_child_rss(base + [str(files[0])]))
            single = run_child_rss(base + [str(folder)])
            six = run_child_rss(base + [str(sixfold)])
            infer.append(worker("bare-infer", backbone=meta["backbone"], size=size, batch=32))
            rates.append(round(5 * len(files) / max(six["wall"] - single["wall"], 1e-6), 2))
            ratios.append(ratio(rates[-1], infer[-1]["images_per_s"]))
            out["peak_rss_mb_predict"] = max(out.get("peak_rss_mb_predict", 0), six["rss_mb"])
        out[f"images{label}"] = len(files)
        out[f"posetune_predict_images_per_s_rounds{label}"] = rates
        out[f"bare_inference_images_per_s_rounds{label}"] = [r["images_per_s"] for r in infer[-len(rates):]]
        out[f"predict_efficiency_rounds{label}"] = ratios
        out[f"posetune_predict_images_per_s{label}"] = round(statistics.median(rates), 2)
        out[f"predict_efficiency{label}"] = round(statistics.median(ratios), 3)
        if not label:
            out["predict_one_seconds_runs"] = [round(r["wall"], 3) for r in ones]
            out["predict_one_seconds"] = round(min(r["wall"] for r in ones), 3)
            out["predict_one_cpu_seconds"] = round(min(r["cpu"] for r in ones), 3)
    decode = worker("decode-rate", data=str(big), size=size, backbone=meta["backbone"])
    bare = statistics.median(r["images_per_s"] for r in infer)
    optimized = statistics.median(r["images_per_s_optimized"] for r in infer)
    out.update({"bare_inference_images_per_s": bare, "optimized_inference_images_per_s": optimized,
                "decode_only_images_per_s": decode["images_per_s"],
                # decode and model share the same cores, so their times add; posetune runs the optimised model
                "ceiling_with_decode": round(1 / (1 / optimized + 1 / decode["images_per_s"]) / bare, 3)})
    return out


def bench_onnx(ctx: dict) -> dict:
    from bench_serve import bench_engines

    from posetune.exporting import export

    run = ctx.get("predict_run")
    if run is None:
        bench_predict(ctx)
        run = ctx["predict_run"]
    log("onnx: export + batch-1 latency, torch eager vs ONNX Runtime")
    t0 = time.perf_counter()
    export(run, n_random=2, n_images=2)
    export_seconds = time.perf_counter() - t0
    res = bench_engines(Path(run), Path(run) / "model.onnx", reps=ctx["onnx_reps"])
    one = sorted((ctx["data"] / "TRAIN").rglob("*.jpg"))[0]
    cmd = [posetune_bin(), "predict", str(run), str(one), "--json", "--engine", "onnx", "--device", "cpu"]
    walls = [run_child_rss(cmd)["wall"] for _ in range(2)]
    return {**res, "export_seconds": round(export_seconds, 1), "onnx_speedup_b1": res["speedup_batch1"],
            "predict_one_seconds_onnx_engine": round(min(walls), 3)}
