"""Background reliance on synthetic yoga: how much of each strategy's class-activation map falls outside the figure.

Protocol: the demo's data and training settings (posetune.demo_run: ``data synth`` 5 poses x 100 train / 30 test
images at 160 px, seed 0, rendered with ``--masks``; efficientnet_lite0 with its offline ImageNet weights at
128 px, batch 32, 10 epochs), run as one ``posetune compare`` with ``--strategies linear,partial,full --top-k 1``
(``linear`` is compare's stage-1 probe: logistic regression on the pretrained features, folded into the head).
Its leaderboard's ``background_reliance`` column is the figure: the mean share of each cell's HiResCAM map (of the
predicted class) outside the figure mask, over every test image (``--reliance-images`` = the whole test split),
0 = only the figure; ``background_area`` is what a map with no preference for the figure scores. Lower is better
at equal accuracy. (The pose models join this table once they exist.)

Run: PYTHONPATH=src python benchmarks/bench_reliance.py [--seeds 1]          (~10 min on 2 quiet cores)
     PYTHONPATH=src python benchmarks/bench_reliance.py --smoke              (tiny data: checks the plumbing only)
Writes benchmarks/results/background_reliance.json (--smoke: $TMPDIR/posetune-reliance/background_reliance.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STRATEGIES = "linear,partial,full"
SMOKE = {"per_class": 12, "test_per_class": 4, "size": 64, "image_size": 64, "epochs": 1, "batch_size": 16,
         "backbones": "test_efficientnet@random"}


def settings(smoke: bool) -> dict:
    """The data and training settings: the demo's, or the tiny smoke ones."""
    from posetune.demo_run import DEMO_DATA, DEMO_TRAIN

    if smoke:
        return {**SMOKE, "seed": 0}
    return {"per_class": DEMO_DATA["per_class"], "test_per_class": DEMO_DATA["test_per_class"],
            "size": DEMO_DATA["size"], "seed": DEMO_DATA["seed"], "image_size": DEMO_TRAIN["image_size"],
            "epochs": DEMO_TRAIN["epochs"], "batch_size": DEMO_TRAIN["batch_size"], "backbones": DEMO_TRAIN["backbone"]}


def masked_data(work: Path, s: dict) -> Path:
    """The synthetic set with figure masks, rendered once per setting."""
    from posetune.data.synth import render_dataset

    root = work / f"data-{s['per_class']}-{s['test_per_class']}-{s['size']}"
    if not (root / ".complete").is_file():
        shutil.rmtree(root, ignore_errors=True)
        render_dataset(root, per_class=s["per_class"], test_per_class=s["test_per_class"], size=s["size"],
                       seed=s["seed"], masks=True)
        (root / ".complete").write_text("ok\n")
    return root


def main(argv: list[str] | None = None) -> int:
    import posetune

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=1, help="seeds per fine-tuned cell (the probe has one)")
    ap.add_argument("--strategies", default=STRATEGIES)
    ap.add_argument("--smoke", action="store_true", help="tiny data and a tiny random model: the plumbing only")
    ap.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "posetune-reliance"))
    ap.add_argument("--out", default=None, help="results file (default results/background_reliance.json)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    s = settings(args.smoke)
    data = masked_data(work, s)
    test_images = 5 * s["test_per_class"]
    sweep = work / ("cmp-smoke" if args.smoke else "cmp")
    shutil.rmtree(sweep, ignore_errors=True)  # this benchmark's own sweep: every cell trained afresh
    load_before = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    result = posetune.compare(data, backbones=s["backbones"], strategies=args.strategies, seeds=args.seeds,
                              epochs=s["epochs"], top_k=1, image_size=s["image_size"], batch_size=s["batch_size"],
                              device="cpu", reliance_images=test_images, out=str(sweep))
    seconds = time.perf_counter() - t0
    rows = [{k: r[k] for k in ("backbone", "strategy", "background_reliance", "test_accuracy", "test_accuracy_err",
                               "val_accuracy", "seeds", "train_seconds", "status")} for r in result.rows]
    for r in rows:
        print(json.dumps(r), flush=True)
    out = Path(args.out) if args.out else (work if args.smoke else HERE / "results") / "background_reliance.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "mode": "smoke" if args.smoke else "full",
        "protocol": {**s, "strategies": args.strategies, "seeds": args.seeds, "reliance_images": test_images,
                     "command": "posetune.compare(DATA, top_k=1, reliance_images=<every test image>)", "cpus": os.cpu_count()},
        "background": result.background, "rows": rows, "seconds": round(seconds, 1),
        "load_average_1min": [load_before, round(os.getloadavg()[0], 2)]}, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
