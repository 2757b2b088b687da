"""Commands about data and backbones: `data synth`, `data check`, `backbones`."""

from __future__ import annotations

from typing import Optional

import typer

from posetune.cli.app import app, data_app, print_json, reporter_for


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
    reporter = reporter_for(json_out)
    advance = reporter.start("render", len(opts.pose_names) * (opts.per_class + opts.test_per_class))
    info = render_dataset(out, poses=opts.poses, per_class=per_class, test_per_class=test_per_class, size=size,
                          seed=seed, progress=lambda done, total: advance(1))
    reporter.stop()
    if json_out:
        return print_json(info)
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
        print_json(report)
    else:
        print_report(report, reporter_for(False))
    if report["problems"]:
        raise typer.Exit(1)


@app.command(epilog="Examples: `posetune backbones` · `posetune backbones resnet50`")
def backbones(
    name: Optional[str] = typer.Argument(None, help="Show this backbone's stages (to choose --freeze-stages)."),
    json_out: bool = typer.Option(False, "--json"),
):
    """List backbones with their weight source, or show one backbone's stages and parameter counts."""
    from posetune import backbones as bb

    reporter = reporter_for(json_out)
    if name is None:
        rows = bb.list_backbones()
        if json_out:
            return print_json(rows)
        reporter.table("backbones (any timm model name works too)", rows)
        reporter.info("offline_now: weights usable without internet. Others download from the Hugging Face hub.")
        return
    info = bb.describe_backbone(name)
    if json_out:
        return print_json(info)
    reporter.info(f"{info['name']} = timm {info['arch']}, {info['params_m']} M params, weights: {info['weight_source']}, "
                  f"input {info['input_size'][-1]} px")
    reporter.table("stages (partial --freeze-stages K freezes the stem and stage1..K)",
                   info["stages"], ["stage", "params", "tensors", "first", "last"])
