"""`posetune demo`: synthetic yoga data -> fine-tune the default offline backbone -> evaluate -> predict."""

from __future__ import annotations

import time
from pathlib import Path

from posetune.console import Reporter, print_metrics

# Chosen so that a 2-core CPU finishes in a few minutes (see the README for measured figures).
DEMO_DATA = {"per_class": 100, "test_per_class": 30, "size": 160, "seed": 0}
DEMO_TRAIN = {"backbone": "efficientnet_lite0", "strategy": "partial", "image_size": 128, "epochs": 10,
              "batch_size": 32, "seed": 0}


MARKER = ".posetune-demo"


def _claim(out: Path) -> None:
    """The demo folder holds data/ and run/ of earlier demos at most; anything else is the user's: refused."""
    from posetune.errors import UsageError

    if out.is_dir() and {p.name for p in out.iterdir()} - {"data", "run", MARKER}:
        raise UsageError(f"--out {out} holds files that are not a posetune demo; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by posetune demo: data/ (synthetic poses) and run/ (the trained run)\n")


def run_demo(out: str | Path = "demo", reporter: Reporter | None = None) -> dict:
    from posetune.data.synth import render_dataset
    from posetune.evaluation import evaluate
    from posetune.predict import collect_paths, load
    from posetune.training import train

    reporter = reporter or Reporter()
    out = Path(out)
    data, run = out / "data", out / "run"
    _claim(out)
    t0 = time.perf_counter()
    if (data / "TRAIN").is_dir():
        reporter.info(f"using the synthetic yoga data already in {data}")
    else:
        n = 5 * (DEMO_DATA["per_class"] + DEMO_DATA["test_per_class"])
        advance = reporter.start("render synthetic yoga poses", n)
        info = render_dataset(data, progress=lambda done, total: advance(1), **DEMO_DATA)
        reporter.stop()
        reporter.info(f"rendered {info['train']} train + {info['test']} test images into {data} "
                      f"(preview: {info['preview']})")
    result = train(data, reporter=reporter, out=str(run), overwrite=True, **DEMO_TRAIN)  # the demo's own run
    metrics = evaluate(run, data, split="test", progress=reporter)
    reporter.stop()
    print_metrics(reporter, metrics, f"test metrics ({metrics['n']} images)")
    samples = collect_paths([data / "TEST"])[:: max(1, len(collect_paths([data / "TEST"])) // 5)][:5]
    preds = load(run).predict(samples, top_k=2)
    reporter.table("a few test predictions", [{"image": str(Path(p.path).relative_to(data)), "prediction": p.label,
                                                "probability": p.probability} for p in preds])
    seconds = time.perf_counter() - t0
    reporter.info(f"demo finished in {seconds:.0f} s: test accuracy {metrics['accuracy']:.3f}; "
                  f"report {run / 'report.md'}, plots {run / 'training.png'}, {metrics.get('confusion_png')}")
    return {"data": str(data), "run": str(run), "seconds": round(seconds, 1), "test_accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"], "train_seconds": round(result.train_seconds, 1)}
