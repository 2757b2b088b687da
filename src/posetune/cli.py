"""The `posetune` command line: thin — parse, call the API, print. torch is imported only inside commands."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from posetune.console import print_metrics
from posetune.errors import PosetuneError

app = typer.Typer(
    name="posetune", no_args_is_help=True, add_completion=False, rich_markup_mode="markdown",
    help="Fine-tune pretrained image backbones into classifiers for your own classes (yoga poses first), "
         "and find which backbone and strategy win.\n\nStart with: `posetune demo`",
)
data_app = typer.Typer(no_args_is_help=True, help="Look at a dataset before training: audit it or render a synthetic one.")
app.add_typer(data_app, name="data")


def _reporter(json_out: bool):
    from posetune.console import Reporter, RichReporter

    if os.environ.get("RANK", "0") != "0":
        return Reporter()  # under torchrun only rank 0 talks
    return RichReporter(stderr=json_out)  # with --json, stdout carries only the JSON


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


@app.command(epilog="Example: `posetune train DATASET --strategy partial --freeze-stages 3 --epochs 10 --out runs/yoga`")
def train(
    data: Optional[str] = typer.Argument(None, help="Folder of class folders, split folders (TRAIN/TEST), or a CSV manifest."),
    backbone: Optional[str] = typer.Option(None, help="timm name, or NAME@random / NAME@PATH. Default efficientnet_lite0 (offline weights)."),
    strategy: Optional[str] = typer.Option(None, help="linear | partial | full | lp-ft | gradual. Default partial."),
    freeze_stages: Optional[int] = typer.Option(None, help="partial: freeze the stem and the first K stages (see `posetune backbones NAME`)."),
    epochs: Optional[int] = typer.Option(None, help="Default per strategy (linear 30, others 10)."),
    lr: Optional[float] = typer.Option(None, help="Head learning rate; pretrained stages get lr x --base-lr-ratio."),
    base_lr_ratio: Optional[float] = typer.Option(None, help="LR of pretrained stages relative to the head (default 0.1)."),
    layer_decay: Optional[float] = typer.Option(None, help="Shrink the LR by this factor per stage from head to stem."),
    bn: Optional[str] = typer.Option(None, help="BatchNorm statistics in trainable stages: frozen (default) | train."),
    batch_size: Optional[int] = typer.Option(None, help="Default 32."),
    image_size: Optional[int] = typer.Option(None, help="Default: the backbone's pretrained input size."),
    crop_pct: Optional[float] = typer.Option(None, help="Resize to size/crop_pct, then centre-crop (1.0: keep the whole image)."),
    val_fraction: Optional[float] = typer.Option(None, help="Held out of train when DATA has no val split (default 0.15)."),
    patience: Optional[int] = typer.Option(None, help="Stop after this many epochs without a better val score (0: never)."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay (default 0.05; none on biases and norms)."),
    label_smoothing: Optional[float] = typer.Option(None, help="Default 0.1."),
    out: Optional[str] = typer.Option(None, help="Run folder to write (default runs/<data>-<backbone>-<strategy>)."),
    seed: Optional[int] = typer.Option(None, help="Default 0."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | mps (default auto)."),
    weights: Optional[str] = typer.Option(None, help="Local .safetensors/.pth/.bin state dict of the timm model."),
    no_pretrained: bool = typer.Option(False, "--no-pretrained", help="Start from random init."),
    label_level: Optional[int] = typer.Option(None, help="Yoga-82 only: 6, 20 or 82 classes."),
    freeze_epochs: Optional[int] = typer.Option(None, help="gradual: epochs with only the head training (default 1)."),
    unfreeze_every: Optional[int] = typer.Option(None, help="gradual: epochs between unfreezing two stages (default 1)."),
    ema: bool = typer.Option(False, "--ema", help="Keep an EMA of the weights; evaluated each epoch, kept when better."),
    ema_decay: float = typer.Option(0.999, help="EMA decay per step (with --ema)."),
    balance: Optional[str] = typer.Option(None, help="Class imbalance: none (default) | weights (loss) | sampler."),
    mixup: Optional[float] = typer.Option(None, help="Mixup alpha (e.g. 0.2); 0 = off."),
    cutmix: Optional[float] = typer.Option(None, help="CutMix alpha (e.g. 1.0); 0 = off."),
    resume: Optional[str] = typer.Option(None, help="Continue the run folder RUN from its last checkpoint (with its own options)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the earlier run at --out (only posetune's files in it)."),
    cache: Optional[str] = typer.Option(None, help="Decoded pixels: auto (default) | memory | disk (memory-mapped, reused)."),
    cache_dir: Optional[str] = typer.Option(None, help="Folder of the disk cache (default ~/.cache/posetune/decoded)."),
    nproc: int = typer.Option(1, min=1, help="Processes to train with on this machine (runs torchrun; DDP, one per GPU)."),
    config: Optional[Path] = typer.Option(None, help="YAML file with the same options; flags override it."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
):
    """Fine-tune a pretrained backbone on DATA and write a self-contained run folder.

    Strategies: linear (head only, on cached features), partial (freeze stem + K stages), full,
    lp-ft (linear probe, then fine-tune), gradual (unfreeze stages one by one from the top).
    """
    from posetune.options import TrainOptions
    from posetune.training import train as run_train

    reporter = _reporter(json_out)
    options = dict(backbone=backbone, strategy=strategy, freeze_stages=freeze_stages, epochs=epochs, lr=lr,
                   base_lr_ratio=base_lr_ratio, layer_decay=layer_decay, bn=bn, batch_size=batch_size,
                   image_size=image_size, crop_pct=crop_pct, val_fraction=val_fraction, patience=patience,
                   weight_decay=weight_decay, label_smoothing=label_smoothing, out=out, seed=seed, device=device, weights=weights,
                   pretrained=False if no_pretrained else None, label_level=label_level,
                   freeze_epochs=freeze_epochs, unfreeze_every=unfreeze_every, ema=ema_decay if ema else None,
                   balance=balance,
                   mixup=mixup, cutmix=cutmix, cache=cache, cache_dir=cache_dir)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from posetune.distributed import launch

        if not resume:  # a bad value fails here once, not in each of the nproc processes
            TrainOptions.from_sources(config, data=data, **options)
        argv = sys.argv[1:]
        i = next(i for i, a in enumerate(argv) if a.startswith("--nproc"))
        del argv[i: i + (1 if "=" in argv[i] else 2)]
        raise typer.Exit(launch(nproc, argv))
    if resume:  # any other option given with it is refused by name
        result = run_train(data, reporter=reporter, resume=resume, config=config, **options)
    else:
        result = run_train(data, reporter=reporter, config=config, overwrite=overwrite, **options)
    if result.skipped:
        reporter.info(f"{len(result.skipped)} files skipped (see {result.run / 'skipped.csv'})")
    if "test" in result.metrics:
        print_metrics(reporter, result.metrics["test"], "test metrics")
    reporter.info(f"run folder: {result.run}  (report: {result.run / 'report.md'})")
    if json_out and os.environ.get("RANK", "0") == "0":
        _print_json({"run": str(result.run), "metrics": result.metrics, "train_seconds": result.train_seconds,
                     "skipped": [{"path": p, "reason": r} for p, r in result.skipped]})


@app.command(epilog="Example: `posetune evaluate runs/yoga DATASET --split test --json`")
def evaluate(
    run: str = typer.Argument(..., help="Run folder written by `posetune train`."),
    data: str = typer.Argument(..., help="DATA in any supported layout."),
    split: str = typer.Option("test", help="train | val | test (a plain class-folder DATA is 'train')."),
    batch_size: int = typer.Option(64),
    device: str = typer.Option("auto"),
    tta: bool = typer.Option(False, "--tta", help="Also score with test-time augmentation (flips + 5 crops)."),
    label_level: int = typer.Option(6, help="Yoga-82 only: 6, 20 or 82 classes."),
    out: Optional[str] = typer.Option(None, help="Folder for evaluation.json and the plots (default RUN/eval/<data>-<hash>-<split>/)."),
    json_out: bool = typer.Option(False, "--json", help="Print the metrics as JSON on stdout."),
):
    """Accuracy, balanced accuracy, macro-F1, per-class scores, confusion matrix and most-confused pairs."""
    from posetune.evaluation import evaluate as run_eval

    reporter = _reporter(json_out)
    metrics = run_eval(run, data, split=split, batch_size=batch_size, device=device, tta=tta, label_level=label_level,
                       out=out, progress=reporter)
    reporter.stop()
    if json_out:
        _print_json(metrics)
        return
    print_metrics(reporter, metrics, f"{split} metrics ({metrics['n']} images)")
    if "tta" in metrics:
        reporter.table("plain vs test-time augmentation",
                       [{"metric": k, "plain": metrics[k], "tta": metrics["tta"][k]}
                        for k in ("accuracy", "balanced_accuracy", "macro_f1")])
    for s in metrics["skipped"]:
        reporter.warn(f"skipped {s['path']}: {s['reason']}")
    if metrics.get("confusion_png"):
        reporter.info(f"confusion matrix plot: {metrics['confusion_png']}")


@app.command(epilog="Examples: `posetune predict runs/yoga photos/ --top-k 3 --csv predictions.csv` · "
                    "`posetune predict runs/yoga photo.jpg --engine onnx` (after `posetune export runs/yoga`)")
def predict(
    run: str = typer.Argument(..., help="Run folder written by `posetune train`."),
    paths: List[str] = typer.Argument(..., help="Image files and/or folders."),
    top_k: int = typer.Option(3, help="How many classes to list per image."),
    batch_size: int = typer.Option(32),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write path,prediction,probability,top-k columns here."),
    device: str = typer.Option("auto"),
    engine: str = typer.Option("auto", help="auto: onnx when RUN/model.onnx matches the weights, else torch | torch "
                                            "(model.safetensors) | onnx (RUN/model.onnx, no torch needed)."),
    tta: bool = typer.Option(False, "--tta", help="Average flipped and multi-crop views (torch engine)."),
    json_out: bool = typer.Option(False, "--json", help="Print predictions as JSON on stdout."),
):
    """Predict the class of images (files or folders), in batches; unreadable files are reported, not fatal."""
    from posetune.predict import PredictOptions, choose_engine, collect_paths, load
    from posetune.predict.prediction import write_predictions_csv
    from posetune.runtime import tune_allocator

    opts = PredictOptions(run=run, paths=paths, top_k=top_k, batch_size=batch_size, device=device, engine=engine,
                          tta=tta, csv=csv).validate()
    tune_allocator()
    reporter = _reporter(json_out)
    engine, why = choose_engine(opts.run, opts.engine, opts.device, opts.tta)
    reporter.info(f"engine: {engine} - {why}")
    clf = load(opts.run, device=opts.device, engine=engine)
    files = collect_paths(opts.paths)
    advance = reporter.start("predict", len(files))
    preds = clf.predict(files, top_k=opts.top_k, batch_size=opts.batch_size, on_step=advance,
                        **({"tta": True} if opts.tta else {}))
    reporter.stop()
    if opts.csv:
        write_predictions_csv(preds, opts.csv)
    if json_out:
        _print_json([p.as_dict() for p in preds])
    else:
        reporter.table(f"predictions ({len(preds)} images)",
                       [{"path": p.path, "prediction": p.label or "-", "probability": p.probability,
                         "top-k": ", ".join(f"{c} {pr:.2f}" for c, pr in p.top_k) or p.error} for p in preds])
        if csv:
            reporter.info(f"wrote {csv}")
    errors = [p for p in preds if p.error]
    for p in errors:
        reporter.warn(f"could not read {p.path}: {p.error}")


@app.command("lr-find", epilog="Example: `posetune lr-find DATASET --strategy full --image-size 128`")
def lr_find_cmd(
    data: str = typer.Argument(..., help="DATA in any supported layout."),
    backbone: Optional[str] = typer.Option(None, help="As in `posetune train`."),
    strategy: Optional[str] = typer.Option(None, help="As in `posetune train` (the LR is the head's; others keep their ratio)."),
    freeze_stages: Optional[int] = typer.Option(None),
    base_lr_ratio: Optional[float] = typer.Option(None),
    layer_decay: Optional[float] = typer.Option(None),
    batch_size: Optional[int] = typer.Option(None),
    image_size: Optional[int] = typer.Option(None),
    weights: Optional[str] = typer.Option(None),
    no_pretrained: bool = typer.Option(False, "--no-pretrained"),
    start_lr: float = typer.Option(1e-7, help="First LR of the sweep."),
    end_lr: float = typer.Option(1.0, help="Last LR of the sweep."),
    steps: int = typer.Option(100, help="Training steps in the sweep (it stops early when the loss explodes)."),
    out: Optional[str] = typer.Option(None, help="Folder for lr_find.png (default runs/lr-find-<data>)."),
    seed: Optional[int] = typer.Option(None),
    device: Optional[str] = typer.Option(None),
    json_out: bool = typer.Option(False, "--json"),
):
    """The LR range test: train briefly with an exponentially growing LR, plot loss vs LR, suggest an LR."""
    from posetune.lr_range import lr_find

    reporter = _reporter(json_out)
    options = {k: v for k, v in dict(backbone=backbone, strategy=strategy, freeze_stages=freeze_stages,
                                     base_lr_ratio=base_lr_ratio, layer_decay=layer_decay, batch_size=batch_size,
                                     image_size=image_size, weights=weights, out=out, seed=seed, device=device,
                                     pretrained=False if no_pretrained else None).items() if v is not None}
    result = lr_find(data, start_lr=start_lr, end_lr=end_lr, steps=steps, reporter=reporter, **options)
    if json_out:
        return _print_json(result)
    reporter.info(f"suggested --lr {result['suggested_lr']:.2e} (steepest loss descent; the minimum was at "
                  f"{result['min_loss_lr']:.2e}); plot: {result['plot']}")


@app.command(epilog="Examples: `posetune backbones` · `posetune backbones resnet50`")
def backbones(
    name: Optional[str] = typer.Argument(None, help="Show this backbone's stages (to choose --freeze-stages)."),
    json_out: bool = typer.Option(False, "--json"),
):
    """List backbones with their weight source, or show one backbone's stages and parameter counts."""
    from posetune import backbones as bb

    reporter = _reporter(json_out)
    if name is None:
        rows = bb.list_backbones()
        if json_out:
            return _print_json(rows)
        reporter.table("backbones (any timm model name works too)", rows)
        reporter.info("offline_now: weights usable without internet. Others download from the Hugging Face hub.")
        return
    info = bb.describe_backbone(name)
    if json_out:
        return _print_json(info)
    reporter.info(f"{info['name']} = timm {info['arch']}, {info['params_m']} M params, weights: {info['weight_source']}, "
                  f"input {info['input_size'][-1]} px")
    reporter.table("stages (partial --freeze-stages K freezes the stem and stage1..K)",
                   info["stages"], ["stage", "params", "tensors", "first", "last"])


@data_app.command("synth", epilog="Example: `posetune data synth yoga-synth --per-class 60 --test-per-class 20`")
def data_synth(
    out: str = typer.Argument(..., help="Folder to write (Kaggle layout: OUT/TRAIN/<pose>, OUT/TEST/<pose>)."),
    poses: Optional[str] = typer.Option(None, help="Comma-separated poses (default the 5 Kaggle poses)."),
    per_class: int = typer.Option(60, help="Training images per pose."),
    test_per_class: int = typer.Option(20, help="Test images per pose."),
    size: int = typer.Option(224, help="Image size in pixels."),
    seed: int = typer.Option(0),
    json_out: bool = typer.Option(False, "--json"),
):
    """Render a synthetic yoga-pose dataset (articulated figures in asanas on varied backgrounds)."""
    from posetune.data.synth import render_dataset
    from posetune.data.synth.dataset import SynthOptions

    opts = SynthOptions(out=out, poses=poses, per_class=per_class, test_per_class=test_per_class, size=size,
                        seed=seed).validate()  # before the progress bar, which needs the pose count
    reporter = _reporter(json_out)
    advance = reporter.start("render", len(opts.pose_names) * (opts.per_class + opts.test_per_class))
    info = render_dataset(out, poses=opts.poses, per_class=per_class, test_per_class=test_per_class, size=size,
                          seed=seed, progress=lambda done, total: advance(1))
    reporter.stop()
    if json_out:
        return _print_json(info)
    reporter.info(f"wrote {info['train']} train + {info['test']} test images of {', '.join(info['poses'])} to {out}; "
                  f"preview: {info['preview']}")


@data_app.command("check", epilog="Example: `posetune data check DATASET --json`")
def data_check(
    data: str = typer.Argument(..., help="DATA in any supported layout."),
    json_out: bool = typer.Option(False, "--json"),
    near_duplicates: bool = typer.Option(True, help="Also look for near-duplicates (perceptual hash)."),
    label_level: int = typer.Option(6, help="Yoga-82 only: 6, 20 or 82 classes."),
):
    """Audit DATA before training: counts, resolutions, bad files, duplicates and train/test leaks. Exit 1 on problems."""
    from posetune.data.check import check_data, print_report

    report = check_data(data, near_duplicates=near_duplicates, label_level=label_level)
    if json_out:
        _print_json(report)
    else:
        print_report(report, _reporter(False))
    if report["problems"]:
        raise typer.Exit(1)


@app.command(epilog="Example: `posetune demo --out demo`")
def demo(
    out: str = typer.Option("demo", help="Folder for the synthetic data (OUT/data) and the run (OUT/run)."),
    json_out: bool = typer.Option(False, "--json"),
):
    """Render synthetic yoga data, fine-tune the default offline backbone, evaluate, and predict a few images."""
    from posetune.demo_run import run_demo

    reporter = _reporter(json_out)
    summary = run_demo(out, reporter=reporter)
    if json_out:
        _print_json(summary)


@app.command(epilog="Example: `posetune compare DATASET --backbones efficientnet_lite0,efficientnet_lite2,resnet18@random "
                    "--strategies linear,partial,full --seeds 3 --epochs 5 --top-k 2 --budget-minutes 30 --out cmp`")
def compare(
    data: str = typer.Argument(..., help="DATA in any supported layout."),
    backbones: str = typer.Option("efficientnet_lite0,efficientnet_lite1,efficientnet_lite2",
                                  help="Comma-separated specs: NAME, NAME@random or NAME@PATH."),
    strategies: str = typer.Option("linear,partial,full", help="Comma-separated: linear, partial, full."),
    seeds: int = typer.Option(1, help="Seeds per stage-2 cell (test scores: mean +- std over seeds)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs per stage-2 cell (default per strategy)."),
    top_k: int = typer.Option(2, help="Fine-tune this many backbones, the best by stage-1 probe."),
    budget_minutes: Optional[float] = typer.Option(None, help="Run only the cells that fit, estimated from measured throughput."),
    out: Optional[str] = typer.Option(None, help="Sweep folder (default runs/compare-NAME, NAME = the DATA folder); rerun it to resume."),
    image_size: Optional[int] = typer.Option(None, help="Default: each backbone's pretrained input size."),
    batch_size: int = typer.Option(32),
    device: str = typer.Option("auto", help="auto | cpu | cuda | mps."),
    val_fraction: float = typer.Option(0.15, help="Held out of train when DATA has no val split."),
    label_level: int = typer.Option(6, help="Yoga-82 only: 6, 20 or 82 classes."),
    json_out: bool = typer.Option(False, "--json", help="Print the leaderboard rows as JSON on stdout."),
):
    """Which backbone and strategy win on DATA, and what each costs: probe every backbone on cached features,
    fine-tune the top-k, and write a leaderboard, plots and OUT/best."""
    from posetune.comparison import compare as run_compare
    from posetune.comparison import display_rows

    reporter = _reporter(json_out)
    result = run_compare(data, reporter=reporter, backbones=backbones, strategies=strategies, seeds=seeds,
                         epochs=epochs, top_k=top_k, budget_minutes=budget_minutes, out=out, image_size=image_size,
                         batch_size=batch_size, device=device, val_fraction=val_fraction, label_level=label_level)
    shown = display_rows(result.rows)
    reporter.table(f"leaderboard, best val first ({result.seconds['total']:.0f} s)", shown,
                   ["#", "backbone", "strategy", "val acc", "test acc", "test macro-F1", "k-NN test acc", "status"])
    reporter.table("costs", shown, ["#", "backbone", "strategy", "weights", "params M", "GMACs", "px", "train s",
                                    "ms/img (b1)", "img/s (b32)", "pareto"])
    for s in result.skipped:
        reporter.warn(f"skipped {s['cell']}: {s['reason']}")
    reporter.info(f"leaderboard: {result.out / 'leaderboard.md'} (.csv, .json); plots: "
                  f"{', '.join(str(p) for p in result.plots) or 'none'}; best: {result.best or 'none'}")
    if json_out:
        _print_json(result.as_dict())



@app.command(epilog="Examples: `posetune export runs/yoga` · `posetune export runs/yoga --format torchscript` · "
                    "`posetune export runs/yoga --dynamic-batch --opset 18 --json` · "
                    "`posetune export runs/yoga --format timm` then `timm.create_model(\"local-dir:runs/yoga/timm\", "
                    "pretrained=True)`")
def export(
    run: str = typer.Argument(..., help="Run folder written by `posetune train`."),
    format: str = typer.Option("onnx", "--format", help="onnx (RUN/model.onnx) | torchscript (RUN/model.torchscript.pt) | "
                                                        "timm (a folder timm loads: config.json, model.safetensors, "
                                                        "README.md model card; RUN/timm/)."),
    opset: Optional[int] = typer.Option(None, help="ONNX opset (default 18)."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Any batch size at run time (default: batch 1)."),
    out: Optional[Path] = typer.Option(None, help="Where to write the model file (default inside RUN); for timm the "
                                                  "folder (default RUN/timm/; an earlier export there is replaced, "
                                                  "a folder with other files refused)."),
    images: Optional[List[str]] = typer.Option(None, help="Images/folders for the parity check (default: the run's data)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
):
    """Export a run to ONNX, TorchScript or a timm folder with its classes and preprocessing, and check it against
    PyTorch: max |delta logits| and top-1 agreement on random tensors and real images (timm: loaded back with
    `timm.create_model("local-dir:DIR")` and its own transform). Exit 1 on any top-1 disagreement."""
    from posetune.errors import CheckFailed
    from posetune.exporting import export as run_export

    reporter = _reporter(json_out)
    if format == "timm":
        from posetune.hub import export_timm

        reporter.info(f"exporting {run} to timm...")
        result = export_timm(run, out=out, images=images or None, strict=False, opset=opset, dynamic_batch=dynamic_batch)
    else:
        result = run_export(run, format=format, opset=opset, dynamic_batch=dynamic_batch, out=out, images=images or None,
                            strict=False, reporter=reporter)
    if json_out:
        _print_json(result)
    else:
        reporter.table("parity with the PyTorch model",
                       [{"inputs": kind, "n": c["n"], "max |delta logits|": f"{c['max_abs_delta']:.2e}",
                         "top-1 agreement": f"{100 * c['top1_agreement']:.1f}%"} for kind, c in result["parity"].items()])
        if format == "timm":
            reporter.info(f"wrote {result['path']}/ ({', '.join(result['files'])}; {result['bytes'] / 1e6:.1f} MB); "
                          f"load it with {result['load']}")
        else:
            reporter.info(f"wrote {result['path']} ({result['bytes'] / 1e6:.1f} MB, input {result['input_shape']}) "
                          f"+ {result['sidecar']}")
    if result["problems"]:
        raise CheckFailed(f"the export disagrees with the PyTorch model: {'; '.join(result['problems'])}")


@app.command(epilog="Examples: `posetune push runs/yoga you/yoga-poses` · `posetune push runs/yoga you/yoga-poses "
                    "--private` · `posetune push runs/yoga you/yoga-poses --dry-run --json` (what would go up, offline)")
def push(
    run: str = typer.Argument(..., help="Run folder written by `posetune train`."),
    repo_id: str = typer.Argument(..., help="Hugging Face model repo, USER/NAME or NAME (created when missing)."),
    private: bool = typer.Option(False, "--private", help="Create the repo private (an existing repo keeps its visibility)."),
    token: Optional[str] = typer.Option(None, help="Hugging Face token with write access (default: HF_TOKEN, else the "
                                                   "token of `hf auth login`)."),
    out: Optional[Path] = typer.Option(None, help="The timm folder to export and upload (default RUN/timm/)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Export and list the files that would be uploaded; needs no "
                                                          "token or network."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
):
    """Upload a run to the Hugging Face Hub as a timm model: `export --format timm`, then create the repo and upload
    the folder, so that `timm.create_model("hf-hub:REPO_ID", pretrained=True)` loads it anywhere. Without a token or
    a reachable Hub it stops within seconds, before exporting (exit 2)."""
    from posetune.hub import push as run_push

    reporter = _reporter(json_out)
    reporter.info(f"exporting {run} to a timm folder{' (dry run: nothing is uploaded)' if dry_run else ''}...")
    result = run_push(run, repo_id, private=private, token=token, out=out, dry_run=dry_run)
    if json_out:
        _print_json(result)
        return
    reporter.table(f"{'would upload' if dry_run else 'uploaded'} to {repo_id}",
                   [{"file": f["path"], "MB": f"{f['bytes'] / 1e6:.2f}"} for f in result["files"]])
    reporter.info(f"the timm folder: {result['folder']}")
    if result["uploaded"]:
        reporter.info(f"{result['url']} - load it with timm.create_model(\"hf-hub:{repo_id}\", pretrained=True)")


@app.command(epilog="Examples: `posetune serve runs/yoga` then open http://127.0.0.1:8000 · "
                    "`posetune serve runs/yoga --engine onnx --host 0.0.0.0 --port 8080 --max-bytes 20MB`")
def serve(
    run: str = typer.Argument(..., help="Run folder written by `posetune train` (for --engine onnx: after `posetune export`)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; 0.0.0.0 exposes the server to your network."),
    port: int = typer.Option(8000),
    engine: str = typer.Option("auto", help="auto: onnx when RUN/model.onnx matches the weights, else torch | torch | "
                                            "onnx (RUN/model.onnx through ONNX Runtime)."),
    max_bytes: str = typer.Option("10MB", help="Largest upload accepted (413 beyond it)."),
    max_pixels: int = typer.Option(50_000_000, help="Largest image in pixels (decompression-bomb guard)."),
    max_queue: int = typer.Option(16, help="Requests in progress at once; more get 503 with Retry-After."),
    top_k: int = typer.Option(5, help="Classes returned per image."),
    read_timeout: float = typer.Option(10.0, help="Seconds to receive a whole upload; slower ones get 408 "
                                                  "(10 s: a 10 MB photo at 8 Mbit/s). No queue slot is held meanwhile."),
    allowed_hosts: Optional[str] = typer.Option(None, help="Host headers accepted, comma-separated (pose.example,*.lan; * any); "
                                                 "others get 400. Default: loopback names when bound to loopback, "
                                                 "else any."),
    device: str = typer.Option("auto"),
):
    """Serve a web page and a JSON API that name the pose in a photo (FastAPI + uvicorn): GET /, POST /predict,
    GET /info, GET /health, docs at /docs."""
    import uvicorn

    from posetune.predict import choose_engine
    from posetune.runtime import tune_allocator
    from posetune.serve.app import create_app, default_allowed_hosts, parse_hosts, parse_size
    from posetune.serve.options import ServeOptions

    ServeOptions(run=run, host=host, port=port, engine=engine, max_bytes=max_bytes, max_pixels=max_pixels,
                 max_queue=max_queue, top_k=top_k, read_timeout=read_timeout, allowed_hosts=allowed_hosts,
                 device=device).validate()  # before the model loads or a port binds
    tune_allocator()
    reporter = _reporter(False)
    hosts = parse_hosts(allowed_hosts) if allowed_hosts is not None else default_allowed_hosts(host)
    engine, why = choose_engine(run, engine, device)
    reporter.info(f"engine: {engine} - {why}")
    app_ = create_app(run, engine=engine, max_bytes=parse_size(max_bytes), max_pixels=max_pixels, max_queue=max_queue,
                      top_k=top_k, device=device, read_timeout=read_timeout, allowed_hosts=hosts)
    if host not in ("127.0.0.1", "localhost", "::1"):
        reporter.warn(f"binding {host}: anyone who can reach this machine can use the model")
    reporter.info("allowed hosts: " + ("any (--allowed-hosts NAME,... to restrict)" if "*" in hosts
                                       else f"{', '.join(hosts)} (others get 400; --allowed-hosts to change)"))
    reporter.info(f"serving {run} ({engine} engine) on http://{'[' + host + ']' if ':' in host else host}:{port}  "
                  "(Ctrl+C to stop)")
    uvicorn.run(app_, host=host, port=port, log_level="info", timeout_keep_alive=5)

def main() -> None:
    """Entry point: errors become one line and an exit code (2 bad input, 1 a problem found).

    Typer runs in standalone mode, so its own usage errors (an unknown command or option, a missing
    argument, a value of the wrong type) print typer's usage message and exit 2 whichever click it
    runs on: typer >= 0.16 vendors its own click, so catching ``click.ClickException`` here never matched.
    """
    try:
        app()  # standalone: always leaves through SystemExit (typer.Exit's code, 2 for usage errors)
    except PosetuneError as exc:
        typer.echo(f"error: {' '.join(str(exc).split())}", err=True)  # one line, whatever the message held
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except ModuleNotFoundError as exc:
        extra = {"torch": "train", "torchvision": "train", "timm": "train", "safetensors": "train", "sklearn": "train",
                 "matplotlib": "train", "imagehash": "train", "onnxruntime": "onnx", "onnx": "export",
                 "onnxscript": "export", "fastapi": "serve", "uvicorn": "serve"}.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        typer.echo(f"error: this command needs {exc.name}, which is not installed; pip install 'posetune[{extra}]'",
                   err=True)
        sys.exit(2)


# Commands that only read a run and print. Once their output is flushed, the interpreter's teardown of
# torch, timm and torch._dynamo (~1 s of a 3.5 s `posetune predict RUN one.jpg` here) buys nothing.
_QUICK_EXIT = {"predict", "evaluate", "backbones"}


def console_entry() -> None:
    """The `posetune` script: :func:`main`, then read-only commands leave without the slow teardown."""
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if len(sys.argv) > 1 and sys.argv[1] in _QUICK_EXIT and "torch" in sys.modules:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        raise
