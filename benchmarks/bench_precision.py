"""bf16 autocast against exact fp32 for training on this CPU: the bare forward + backward + AdamW step of the
planned model (workers.bare_steps: posetune's frozen stages, optimizer and channels_last layout), bf16 and fp32
timed in alternating rounds in one process, per strategy and image size. Why `--precision auto` stays fp32 on
a CPU and why `--precision bf16` warns where the CPU has no native bf16 (posetune.devices.training_precision).

Run: PYTHONPATH=src python benchmarks/bench_precision.py [--sizes 128,224] [--strategies partial,full]
Writes benchmarks/results/precision-cpu.json: the CPU's bf16 flags and, per case, images/s of each precision
(median of the rounds) and bf16 / fp32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import load_average  # noqa: E402
from workers import bare_rates, bare_steps  # noqa: E402

LAYOUT = "channels_last"  # the layout posetune trains in on a CPU too (devices.place)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def measure(backbone: str, strategy: str, size: int, batch: int, rounds: int, steps: int) -> dict:
    spec = {"backbone": backbone, "strategy": strategy, "size": size, "batch": batch, "warmup": 1, "steps": steps}
    step = {p: bare_steps({**spec, "precision": p})[LAYOUT] for p in ("fp32", "bf16")}
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(rounds):  # alternating, so a slow spell on a shared machine hits both
        for precision in ("fp32", "bf16"):
            rates[precision].append(bare_rates({LAYOUT: step[precision]}, spec)[LAYOUT])
    med = {p: round(statistics.median(r), 2) for p, r in rates.items()}
    row = {"backbone": backbone, "strategy": strategy, "size": size, "batch": batch,
           "fp32_images_per_s": med["fp32"], "bf16_images_per_s": med["bf16"],
           "bf16_over_fp32": round(med["bf16"] / med["fp32"], 3), "rounds": rates}
    print(json.dumps({k: v for k, v in row.items() if k != "rounds"}), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="efficientnet_lite0@random", help="speed does not depend on the weights")
    ap.add_argument("--strategies", default="partial,full")
    ap.add_argument("--sizes", default="128,224")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round and precision (after 1 warm-up)")
    ap.add_argument("--out", default=str(HERE / "results" / "precision-cpu.json"))
    args = ap.parse_args(argv)
    import torch

    from posetune.devices import cpu_has_native_bf16
    from posetune.runtime import tune_allocator

    tune_allocator()
    rows = [measure(args.backbone, strategy, int(size), args.batch, args.rounds, args.steps)
            for strategy in args.strategies.split(",") for size in args.sizes.split(",")]
    result = {"cpu": cpu_model(), "native_bf16": cpu_has_native_bf16(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "load_average_1min": load_average(),
              "cases": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "cases"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
