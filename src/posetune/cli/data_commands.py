"""Commands about data and backbones: `data synth`, `data check`, `backbones`."""

from __future__ import annotations

from typing import Optional

import typer

from posetune.cli.app import app, data_app, print_json, reporter_for


@data_app.command("synth", epilog="Examples: `posetune data synth yoga-synth --per-class 60 --test-per-class 20` · "
                                  "`posetune data synth --video session.mp4 --hold 4 --transition 1.5 --fps 10` "
                                  "(a video of one figure moving through the poses, ground truth in session.csv)")
def data_synth(
    out: Optional[str] = typer.Argument(None, help="Folder to write (Kaggle layout: OUT/TRAIN/<pose>, OUT/TEST/<pose>)."),
    video: Optional[str] = typer.Option(None, "--video", help="Instead of a folder, render a session video here "
                                        "(.mp4/.m4v/.mkv/.mov: H.264, .avi: MPEG-4) and its holds (pose,start,end "
                                        "in seconds) to the same name with .csv."),
    hold: float = typer.Option(4.0, help="--video: seconds each pose is held."),
    transition: float = typer.Option(1.5, help="--video: seconds of movement between two holds."),
    fps: int = typer.Option(10, help="--video: frames per second."),
    poses: Optional[str] = typer.Option(None, help="Comma-separated poses (default the 5 Kaggle poses)."),
    per_class: int = typer.Option(60, help="Training images per pose."),
    test_per_class: int = typer.Option(20, help="Test images per pose."),
    size: int = typer.Option(224, help="Image size in pixels."),
    seed: int = typer.Option(0),
    masks: bool = typer.Option(False, "--masks", help="Also write each image's figure mask to "
                               "OUT/masks/<split>/<pose>/<name>.png (`evaluate --cam` then reports background "
                               "reliance); the images are the same either way."),
    shift: bool = typer.Option(False, "--shift", help="Render the same figures as without it (same --seed) on "
                               "backgrounds, clothing colours and lighting that a render without it never shows: "
                               "a robustness test set."),
    json_out: bool = typer.Option(False, "--json"),
):
    """Render a synthetic yoga-pose dataset (articulated figures in asanas on varied backgrounds), or with
    --video a session video with known answers."""
    if video is not None:
        return _synth_video(video, poses, hold, transition, fps, size, seed, json_out)
    if out is None:
        from posetune.errors import UsageError

        raise UsageError("give OUT (a folder for the dataset) or --video OUT.mp4 (a session video)")
    from posetune.data.synth import render_dataset
    from posetune.data.synth.dataset import SynthOptions

    opts = SynthOptions(out=out, poses=poses, per_class=per_class, test_per_class=test_per_class, size=size,
                        seed=seed, masks=masks, shift=shift).validate()  # before the progress bar, which needs the pose count
    reporter = reporter_for(json_out)
    advance = reporter.start("render", len(opts.pose_names) * (opts.per_class + opts.test_per_class))
    info = render_dataset(out, poses=opts.poses, per_class=per_class, test_per_class=test_per_class, size=size,
                          seed=seed, masks=masks, shift=shift, progress=lambda done, total: advance(1))
    reporter.stop()
    if json_out:
        return print_json(info)
    reporter.info(f"wrote {info['train']} train + {info['test']} test images of {', '.join(info['poses'])} to {out}; "
                  f"preview: {info['preview']}")


def _synth_video(video: str, poses: Optional[str], hold: float, transition: float, fps: int, size: int, seed: int,
                 json_out: bool) -> None:
    from posetune.data.synth import KAGGLE_POSES
    from posetune.data.synth.session import SessionOptions, frame_count, render_session

    opts = SessionOptions(video=video, poses=poses, hold=hold, transition=transition, fps=fps, size=size,
                          seed=seed).validate()
    reporter = reporter_for(json_out)
    names = opts.poses
    reporter.info(f"rendering a session: hold {hold:g} s, transition {transition:g} s, {fps} fps, {size} px, seed {seed}")
    advance = reporter.start("render", frame_count(len(names or KAGGLE_POSES), hold, transition, fps))
    info = render_session(video, poses=names, hold=hold, transition=transition, fps=fps, size=size, seed=seed,
                          progress=lambda done, total: advance(1))
    reporter.stop()
    if json_out:
        return print_json(info)
    reporter.table(f"ground truth ({info['segments_csv']})",
                   [{"pose": s["pose"], "start": s["start"], "end": s["end"]} for s in info["segments"]])
    reporter.info(f"wrote {info['video']} ({info['frames']} frames, {info['seconds']:g} s) + {info['segments_csv']}")


@data_app.command("check", epilog="Examples: `posetune data check DATASET --json` · "
                                   "`posetune data check DATASET --label-issues --fix-manifest fixed.csv`, then "
                                   "`posetune train fixed.csv`")
def data_check(
    data: str = typer.Argument(..., help="DATA in any supported layout."),
    json_out: bool = typer.Option(False, "--json"),
    near_duplicates: bool = typer.Option(True, help="Also look for near-duplicates (perceptual hash)."),
    label_level: int = typer.Option(6, help="Yoga-82 only: 6, 20 or 82 classes."),
    no_person: str = typer.Option("auto", help="List, per class, the images where BlazePose finds nobody: auto "
                                               "(when posetune[pose] is installed) | yes | no."),
    label_issues: bool = typer.Option(False, "--label-issues",
                                      help="Also find likely mislabelled and out-of-place images: pretrained features, "
                                           "out-of-fold logistic regression, cleanlab; a ranked table and a contact sheet."),
    backbone: str = typer.Option("efficientnet_lite0", help="--label-issues: the feature extractor (NAME, NAME@random, "
                                                            "NAME@PATH, pose: landmark features, NAME+pose: both)."),
    image_size: Optional[int] = typer.Option(None, help="--label-issues: input size (default the backbone's pretrained size)."),
    folds: int = typer.Option(5, help="--label-issues: stratified folds; every image is judged by a model that never saw it."),
    batch_size: int = typer.Option(32, help="--label-issues: feature-extraction batch."),
    device: str = typer.Option("auto", help="--label-issues: auto | cpu | cuda | mps."),
    seed: int = typer.Option(0, help="--label-issues: seed of the fold shuffles."),
    fix_manifest: Optional[str] = typer.Option(None, help="--label-issues: write a CSV manifest with the suggested labels "
                                                          "applied and outliers excluded (your files are never touched)."),
    contact_sheet: Optional[str] = typer.Option(None, help="--label-issues: PNG of the flagged images (default "
                                                           "NAME-label-issues.png here, NAME = the DATA folder)."),
):
    """Audit DATA before training: counts, resolutions, bad files, duplicates and train/test leaks; with
    --label-issues, likely mislabelled and out-of-place images too. Exit 1 on problems."""
    from pathlib import Path

    from posetune.data.check import print_report
    from posetune.label_issues import check_data
    from posetune.pose.audit import print_no_person

    reporter = reporter_for(json_out)
    report = check_data(data, reporter=reporter, near_duplicates=near_duplicates, label_level=label_level,
                        no_person=no_person,
                        label_issues=label_issues, backbone=backbone, image_size=image_size, folds=folds,
                        batch_size=batch_size, device=device, seed=seed, fix_manifest=fix_manifest,
                        contact_sheet=contact_sheet)
    if json_out:
        print_json(report)
    else:
        print_report(report, reporter)
        print_no_person(report.get("no_person"), reporter, str(Path(report["data"])) + "/")
    if report["problems"]:
        raise typer.Exit(1)


@app.command(epilog="Examples: `posetune backbones` · `posetune backbones resnet50` · "
             "`posetune backbones efficientnet_lite0+pose`")
def backbones(
    name: Optional[str] = typer.Argument(None, help="Show this backbone's stages (to choose --freeze-stages)."),
    json_out: bool = typer.Option(False, "--json"),
):
    """List backbones with their weight source, or show one backbone's stages and parameter counts."""
    from posetune import backbones as bb
    from posetune.pose import FEATURE_DIM

    reporter = reporter_for(json_out)
    if name is None:
        rows = bb.list_backbones(pose_dim=FEATURE_DIM)
        if json_out:
            return print_json(rows)
        reporter.table("backbones (any timm model name works too)", rows)
        reporter.info("offline_now: weights usable without internet. Others download from the Hugging Face hub. "
                      "pose / NAME+pose use BlazePose landmarks (posetune\\[pose]).")
        return
    info = bb.describe_backbone(name, pose_dim=FEATURE_DIM)
    if json_out:
        return print_json(info)
    reporter.info(f"{info['name']} = timm {info['arch']}, {info['params_m']} M params, weights: {info['weight_source']}, "
                  f"input {info['input_size'][-1]} px")
    reporter.table("stages (partial --freeze-stages K freezes the stem and stage1..K)",
                   info["stages"], ["stage", "params", "tensors", "first", "last"])
