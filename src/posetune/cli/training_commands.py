"""Commands that train: `train`, `lr-find`, `compare`, `demo`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from posetune.cli.app import app, print_json, reporter_for
from posetune.console import print_metrics


@app.command(epilog="Example: `posetune train DATASET --strategy partial --freeze-stages 3 --epochs 10 --out runs/yoga`; "
             "`posetune train DATASET --time-budget 10m` chooses the backbone, size, strategy, epochs and whether to refit for you; "
             "`posetune train DATASET --refit` trains again on train + val once val has fitted the temperature")
def train(
    data: Optional[str] = typer.Argument(None, help="Folder of class folders, split folders (TRAIN/TEST), or a CSV manifest."),
    backbone: Optional[str] = typer.Option(None, help="timm name, or NAME@random / NAME@PATH. Default efficientnet_lite0 (offline weights)."),
    strategy: Optional[str] = typer.Option(None, help="linear | partial | full | lp-ft | gradual. Default partial."),
    freeze_stages: Optional[int] = typer.Option(None, help="partial: freeze the stem and the first K stages (see `posetune backbones NAME`)."),
    epochs: Optional[int] = typer.Option(None, help="Default per strategy (linear 30, others 10)."),
    lr: Optional[float] = typer.Option(None, help="Head learning rate; pretrained stages get lr x --base-lr-ratio."),
    base_lr_ratio: Optional[float] = typer.Option(None, help="LR of pretrained stages relative to the head (default 0.3)."),
    layer_decay: Optional[float] = typer.Option(None, help="Shrink the LR by this factor per stage from head to stem."),
    bn: Optional[str] = typer.Option(None, help="BatchNorm statistics in trainable stages: frozen (default) | train."),
    batch_size: Optional[int] = typer.Option(None, help="Default 32."),
    image_size: Optional[int] = typer.Option(None, help="Default: the backbone's pretrained input size."),
    crop_pct: Optional[float] = typer.Option(None, help="Resize to size/crop_pct, then centre-crop (1.0: keep the whole image)."),
    crop_scale: Optional[float] = typer.Option(None, help="Train crops keep a random share of the image area, from this to 1 (default 0.5; 1.0: flips and colour only)."),
    augment: Optional[str] = typer.Option(None, help="Train augmentation: light (default: random resized crop, flip, colour jitter) | trivial (also one TrivialAugment op per image)."),
    val_fraction: Optional[float] = typer.Option(None, help="Held out of train when DATA has no val split (default 0.15)."),
    refit: bool = typer.Option(False, "--refit", help="Once the usual run (kept in RUN/selection) has fitted the "
                               "temperature on val, train again on train + val for as many epochs (~2x the training)."),
    patience: Optional[int] = typer.Option(None, help="Stop after this many epochs without a better val score (0: never)."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay (default 0.05; none on biases and norms)."),
    label_smoothing: Optional[float] = typer.Option(None, help="Default 0.1."),
    out: Optional[str] = typer.Option(None, help="Run folder to write (default runs/<data>-<backbone>-<strategy>)."),
    seed: Optional[int] = typer.Option(None, help="Default 0."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | mps (default auto)."),
    precision: Optional[str] = typer.Option(None, help="auto (default: bf16 autocast on CUDA, fp16 on GPUs without bf16, fp32 elsewhere) | bf16 (also on a CPU: faster at >= 192 px where it has native bf16) | fp16 (CUDA, with loss scaling) | fp32."),
    weights: Optional[str] = typer.Option(None, help="Local .safetensors/.pth/.bin state dict of the timm model."),
    no_pretrained: bool = typer.Option(False, "--no-pretrained", help="Start from random init."),
    label_level: Optional[int] = typer.Option(None, help="Yoga-82 only: 6, 20 or 82 classes."),
    freeze_epochs: Optional[int] = typer.Option(None, help="gradual: epochs with only the head training (default 1)."),
    unfreeze_every: Optional[int] = typer.Option(None, help="gradual: epochs between unfreezing two stages (default 1)."),
    ema: bool = typer.Option(False, "--ema", help="Keep an EMA of the weights; evaluated each epoch, kept when better."),
    ema_decay: float = typer.Option(0.999, help="EMA decay per step (with --ema), reached after a warm-up: 1 - (1 + step)^-2/3 until then."),
    balance: Optional[str] = typer.Option(None, help="Class imbalance: none (default) | weights (loss) | sampler."),
    mixup: Optional[float] = typer.Option(None, help="Mixup alpha (e.g. 0.2); 0 = off."),
    cutmix: Optional[float] = typer.Option(None, help="CutMix alpha (e.g. 1.0); 0 = off."),
    resume: Optional[str] = typer.Option(None, help="Continue the run folder RUN from its last checkpoint (with its own options)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the earlier run at --out (only posetune's files in it)."),
    cache: Optional[str] = typer.Option(None, help="Decoded pixels: auto (default) | memory | disk (memory-mapped, reused)."),
    cache_dir: Optional[str] = typer.Option(None, help="Folder of the disk cache (default ~/.cache/posetune/decoded)."),
    log: Optional[str] = typer.Option(None, help="Experiment tracking: tensorboard | mlflow | tensorboard,mlflow. "
                                      "TensorBoard (RUN/tensorboard): loss and LR per stage every step, metrics per epoch, "
                                      "the confusion matrix, the hyper-parameters. MLflow: parameters, metrics per epoch, "
                                      "the run folder as artifacts."),
    log_dir: Optional[str] = typer.Option(None, help="With --log tensorboard: write the events to LOG_DIR/NAME (NAME: the "
                                          "run folder's name) instead of RUN/tensorboard (one --logdir for many runs)."),
    mlflow_uri: Optional[str] = typer.Option(None, help="With --log mlflow: the tracking store, e.g. http://127.0.0.1:5000 "
                                             "(default $MLFLOW_TRACKING_URI, else sqlite:///<run's parent>/mlflow.db)."),
    time_budget: Optional[str] = typer.Option(None, help="e.g. 90s, 10m, 1h: measure this machine and DATA, choose "
                                              "backbone, image size, strategy, epochs and whether to refit on "
                                              "train + val (printed before training) and finish within the budget + "
                                              "10%. Not with --strategy, --epochs, --image-size, --freeze-stages, "
                                              "--refit."),
    nproc: int = typer.Option(1, min=1, help="Processes to train with on this machine (runs torchrun; DDP, one per GPU)."),
    config: Optional[Path] = typer.Option(None, help="YAML file with the same options; flags override it."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
):
    """Fine-tune a pretrained backbone on DATA and write a self-contained run folder.

    Strategies: linear (head only, on cached features), partial (freeze stem + K stages), full,
    lp-ft (linear probe, then fine-tune), gradual (unfreeze stages one by one from the top).
    """
    from posetune.training import train as run_train

    reporter = reporter_for(json_out)
    options = dict(backbone=backbone, strategy=strategy, freeze_stages=freeze_stages, epochs=epochs, lr=lr,
                   base_lr_ratio=base_lr_ratio, layer_decay=layer_decay, bn=bn, batch_size=batch_size,
                   image_size=image_size, crop_pct=crop_pct, crop_scale=crop_scale, augment=augment, val_fraction=val_fraction,
                   refit=True if refit else None, patience=patience,
                   weight_decay=weight_decay, label_smoothing=label_smoothing, out=out, seed=seed, device=device, precision=precision, weights=weights,
                   pretrained=False if no_pretrained else None, label_level=label_level,
                   freeze_epochs=freeze_epochs, unfreeze_every=unfreeze_every, ema=ema_decay if ema else None,
                   balance=balance,
                   mixup=mixup, cutmix=cutmix, cache=cache, cache_dir=cache_dir, log=log, log_dir=log_dir,
                   mlflow_uri=mlflow_uri)
    if time_budget is not None:
        return _print_result(reporter, _train_within_budget(data, time_budget, nproc, reporter, config, overwrite,
                                                            resume, options), json_out)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(_launch_processes(nproc, data, resume, config, options))
    # with --resume, any other option given is refused by name (--overwrite does not apply)
    given = {"resume": resume} if resume else {"overwrite": overwrite}
    _print_result(reporter, run_train(data, reporter=reporter, config=config, **given, **options), json_out)


def _train_within_budget(data, time_budget: str, nproc: int, reporter, config, overwrite: bool, resume, options: dict):
    """`train --time-budget`: measure, plan, then train on one process."""
    if nproc > 1:
        from posetune.errors import UsageError

        raise UsageError("--time-budget measures and trains on one process; drop --nproc")
    from posetune.comparison.budget import train_within_budget

    return train_within_budget(data, time_budget, reporter=reporter, config=config, overwrite=overwrite,
                               resume=resume, **options)


def _launch_processes(nproc: int, data, resume, config, options: dict) -> int:
    """`train --nproc N`: torchrun this command again without --nproc; its exit code."""
    from posetune.distributed import launch
    from posetune.options import TrainOptions

    if not resume:  # a bad value fails here once, not in each of the nproc processes
        TrainOptions.from_sources(config, data=data, **options)
    argv = sys.argv[1:]
    i = next(i for i, a in enumerate(argv) if a.startswith("--nproc"))
    del argv[i: i + (1 if "=" in argv[i] else 2)]
    return launch(nproc, argv)


def _print_result(reporter, result, json_out: bool) -> None:
    """The end of `posetune train`: skipped files, test metrics, calibration, the run folder (and --json)."""
    if result.skipped:
        reporter.info(f"{len(result.skipped)} files skipped (see {result.run / 'skipped.csv'})")
    if "test" in result.metrics:
        print_metrics(reporter, result.metrics["test"], "test metrics")
    if result.calibration:
        cal = result.calibration
        eces = "; ".join(f"{s} ECE {cal[s]['ece_before']:.3f} -> {cal[s]['ece_after']:.3f}" for s in ("val", "test")
                         if s in cal)
        reporter.info(f"temperature {cal['temperature']:.3g} ({cal['note']})" + (f"; {eces}" if eces else ""))
    if result.refit:
        reporter.info(f"refit: trained on train + val for {result.refit['epochs']} epochs, as many as the selection run "
                      f"({result.run / result.refit['selection_run']}); training {result.refit['selection_train_seconds']:.0f} s "
                      f"+ {result.train_seconds - result.refit['selection_train_seconds']:.0f} s")
    reporter.info(f"run folder: {result.run}  (report: {result.run / 'report.md'})")
    if json_out and os.environ.get("RANK", "0") == "0":
        print_json({"run": str(result.run), "metrics": result.metrics, "calibration": result.calibration,
                    "train_seconds": result.train_seconds, "budget": result.budget, "refit": result.refit,
                    "skipped": [{"path": p, "reason": r} for p, r in result.skipped]})


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

    reporter = reporter_for(json_out)
    options = {k: v for k, v in dict(backbone=backbone, strategy=strategy, freeze_stages=freeze_stages,
                                     base_lr_ratio=base_lr_ratio, layer_decay=layer_decay, batch_size=batch_size,
                                     image_size=image_size, weights=weights, out=out, seed=seed, device=device,
                                     pretrained=False if no_pretrained else None).items() if v is not None}
    result = lr_find(data, start_lr=start_lr, end_lr=end_lr, steps=steps, reporter=reporter, **options)
    if json_out:
        return print_json(result)
    reporter.info(f"suggested --lr {result['suggested_lr']:.2e} (steepest loss descent; the minimum was at "
                  f"{result['min_loss_lr']:.2e}); plot: {result['plot']}")


@app.command(epilog="Example: `posetune compare DATASET --backbones efficientnet_lite0,efficientnet_lite2,resnet18@random "
                    "--strategies linear,partial,full --seeds 3 --epochs 5 --top-k 2 --budget-minutes 30 --out cmp` · "
                    "`posetune compare DATASET --backbones efficientnet_lite0,pose,efficientnet_lite0+pose` (image, "
                    "landmarks, both)")
def compare(
    data: str = typer.Argument(..., help="DATA in any supported layout."),
    backbones: str = typer.Option("efficientnet_lite0,efficientnet_lite1,efficientnet_lite2",
                                  help="Comma-separated specs: NAME, NAME@random, NAME@PATH, pose (body landmarks) or "
                                       "NAME+pose (fusion; posetune[pose])."),
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
    reliance_images: int = typer.Option(32, help="On `data synth --masks` data: test images (val without a test "
                                        "split) per cell for the background-reliance column; 0 turns it off."),
    log: Optional[str] = typer.Option(None, help="Experiment tracking of every cell: tensorboard | mlflow | tensorboard,mlflow. "
                                      "MLflow: a run for the sweep (its leaderboard as artifacts) with one nested run per "
                                      "cell; TensorBoard: one folder per cell under OUT/tensorboard (HParams compares them)."),
    log_dir: Optional[str] = typer.Option(None, help="With --log tensorboard: the cells' folders go under LOG_DIR "
                                          "instead of OUT/tensorboard."),
    mlflow_uri: Optional[str] = typer.Option(None, help="With --log mlflow: the tracking store (default $MLFLOW_TRACKING_URI, "
                                             "else sqlite:///<OUT's parent>/mlflow.db)."),
    json_out: bool = typer.Option(False, "--json", help="Print the leaderboard rows as JSON on stdout."),
):
    """Which backbone and strategy win on DATA, and what each costs: probe every backbone on cached features,
    fine-tune the top-k, and write a leaderboard, plots and OUT/best."""
    from posetune.comparison import compare as run_compare
    from posetune.comparison import display_rows
    from posetune.comparison.leaderboard import hidden_columns, reliance_note

    reporter = reporter_for(json_out)
    result = run_compare(data, reporter=reporter, backbones=backbones, strategies=strategies, seeds=seeds,
                         epochs=epochs, top_k=top_k, budget_minutes=budget_minutes, out=out, image_size=image_size,
                         batch_size=batch_size, device=device, val_fraction=val_fraction, label_level=label_level,
                         reliance_images=reliance_images, log=log, log_dir=log_dir, mlflow_uri=mlflow_uri)
    shown, hidden = display_rows(result.rows), hidden_columns(result.rows, result.background)
    reporter.table(f"leaderboard, best val first ({result.seconds['total']:.0f} s)", shown,
                   [c for c in ("#", "backbone", "kind", "strategy", "val acc", "test acc", "test macro-F1",
                                "k-NN test acc", "bg reliance", "status") if c not in hidden])
    if result.background:
        reporter.info(reliance_note(result.background))
    reporter.table("costs", shown, [c for c in ("#", "backbone", "strategy", "weights", "params M", "GMACs", "px",
                                                "train s", "ms/img (b1)", "landmarks ms", "img/s (b32)", "pareto")
                                    if c not in hidden])
    for s in result.skipped:
        reporter.warn(f"skipped {s['cell']}: {s['reason']}")
    reporter.info(f"leaderboard: {result.out / 'leaderboard.md'} (.csv, .json); plots: "
                  f"{', '.join(str(p) for p in result.plots) or 'none'}; best: {result.best or 'none'}")
    if json_out:
        print_json(result.as_dict())


@app.command(epilog="Example: `posetune demo --out demo`")
def demo(
    out: str = typer.Option("demo", help="Folder for the synthetic data (OUT/data) and the run (OUT/run)."),
    json_out: bool = typer.Option(False, "--json"),
):
    """Render synthetic yoga data, fine-tune the default offline backbone, evaluate, and predict a few images."""
    from posetune.demo_run import run_demo

    reporter = reporter_for(json_out)
    summary = run_demo(out, reporter=reporter)
    if json_out:
        print_json(summary)
