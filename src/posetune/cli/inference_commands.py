"""Commands on a trained run: `evaluate`, `predict`, `export`, `push`, `serve`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from posetune.cli.app import app, print_json, reporter_for
from posetune.console import print_metrics


@app.command(epilog="Examples: `posetune evaluate runs/yoga DATASET --split test --json` · "
                    "`posetune evaluate runs/yoga DATASET --min-confidence 0.8` (how many images it would answer, "
                    "and how well)")
def evaluate(
    run: str = typer.Argument(..., help="Run folder written by `posetune train`."),
    data: str = typer.Argument(..., help="DATA in any supported layout."),
    split: str = typer.Option("test", help="train | val | test (a plain class-folder DATA is 'train')."),
    batch_size: int = typer.Option(64),
    device: str = typer.Option("auto"),
    tta: bool = typer.Option(False, "--tta", help="Also score with test-time augmentation (flips + 5 crops)."),
    label_level: int = typer.Option(6, help="Yoga-82 only: 6, 20 or 82 classes."),
    min_confidence: Optional[float] = typer.Option(None, help="A threshold P in 0..1: report the coverage (share of "
                                                   "images whose top probability is >= P, which `predict "
                                                   "--min-confidence P` answers) and the accuracy on them; marked "
                                                   "on risk_coverage.png."),
    cam: bool = typer.Option(False, "--cam", help="Class-activation maps (HiResCAM) of the most confidently wrong "
                             "images and of a few correct ones per class (cam_top_losses.png, cam_correct.png); on "
                             "`data synth --masks` data also the background reliance (share of the map outside the "
                             "figure). Slower: a backward pass per image."),
    out: Optional[str] = typer.Option(None, help="Folder for evaluation.json and the plots (default RUN/eval/<data>-<hash>-<split>/)."),
    json_out: bool = typer.Option(False, "--json", help="Print the metrics as JSON on stdout."),
):
    """Accuracy, balanced accuracy and macro-F1 with 95% bootstrap intervals, per-class scores, confusion matrix,
    most-confused pairs; calibration (ECE, reliability.png), selective prediction (risk_coverage.png) and the most
    confidently wrong images (top_losses.png)."""
    from posetune.evaluation import evaluate as run_eval

    reporter = reporter_for(json_out)
    metrics = run_eval(run, data, split=split, batch_size=batch_size, device=device, tta=tta, label_level=label_level,
                       min_confidence=min_confidence, cam=cam, out=out, progress=reporter)
    reporter.stop()
    if json_out:
        print_json(metrics)
        return
    print_metrics(reporter, metrics, f"{split} metrics ({metrics['n']} images)")
    if "tta" in metrics:
        reporter.table("plain vs test-time augmentation",
                       [{"metric": k, "plain": metrics[k], "tta": metrics["tta"][k]}
                        for k in ("accuracy", "balanced_accuracy", "macro_f1")])
    print_trust(reporter, metrics)
    print_cam(reporter, metrics)
    print_no_person(reporter, metrics.get("no_person"))
    for s in metrics["skipped"]:
        reporter.warn(f"skipped {s['path']}: {s['reason']}")
    for key, what in (("confusion_png", "confusion matrix"), ("reliability_png", "reliability diagram"),
                      ("risk_coverage_png", "risk-coverage curve"), ("top_losses_png", "most confidently wrong"),
                      ("cam_top_losses_png", "class-activation maps, most confidently wrong"),
                      ("cam_correct_png", "class-activation maps, correct"),
                      ("skeletons_png", "BlazePose skeletons per class")):
        if metrics.get(key):
            reporter.info(f"{what} plot: {metrics[key]}")


def print_no_person(reporter, section: dict | None) -> None:
    """Pose / fusion runs: how many images showed nobody, and how well the model did with and without a person."""
    if not section:
        return
    f = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    rows = [{"measure": "images where BlazePose found nobody", "value": f"{section['no_person']} of {section['images']}"},
            {"measure": "accuracy where a person was found", "value": f(section["accuracy_person_found"])},
            {"measure": "accuracy where nobody was found", "value": f(section["accuracy_no_person"])}]
    if "answered_accuracy" in section:
        rows.append({"measure": "accuracy of predict's answers ('no person detected' counted wrong)",
                     "value": f(section["answered_accuracy"])})
    reporter.table("people found (BlazePose)", rows)


def print_cam(reporter, metrics: dict) -> None:
    """The class-activation maps' method and layer, and the background reliance where DATA has figure masks."""
    cam = metrics.get("cam")
    if not cam:
        return
    rows = [{"measure": "method (of the predicted class)", "value": cam["method"]},
            {"measure": "layer", "value": cam["layer"]}]
    if "background_reliance" in metrics:
        value = metrics["background_reliance"]
        rows.append({"measure": "background reliance (share of the map outside the figure)",
                     "value": "-" if value is None else f"{value:.3f} over {metrics['background_reliance_n']} images"})
        if metrics.get("background_area") is not None:
            rows.append({"measure": "share of the image outside the figure (a map with no preference)",
                         "value": f"{metrics['background_area']:.3f}"})
    reporter.table("class-activation maps", rows)


def print_trust(reporter, metrics: dict) -> None:
    """Calibration and selective prediction as one table, then the most confidently wrong images."""
    if not metrics.get("n"):
        return
    rows = [{"measure": "temperature (logits / T)", "value": metrics["temperature"]},
            {"measure": "ECE (15 bins)", "value": metrics["ece"]}, {"measure": "NLL", "value": metrics["nll"]},
            {"measure": "AURC (area under risk-coverage)", "value": metrics["aurc"]}]
    cov = metrics.get("coverage")
    if cov:
        rows += [{"measure": f"coverage at min confidence {cov['min_confidence']:g}",
                  "value": f"{cov['coverage']:.3f} ({cov['n_covered']} of {cov['n']})"},
                 {"measure": "accuracy on the covered images",
                  "value": "-" if cov["accuracy"] is None else f"{cov['accuracy']:.4f}"}]
    reporter.table("calibration and selective prediction", rows)
    if metrics["top_losses"]:
        reporter.table("most confidently wrong", [{k: t[k] for k in ("path", "true", "predicted", "probability", "loss")}
                                                  for t in metrics["top_losses"][:5]])


@app.command(epilog="Examples: `posetune predict runs/yoga photos/ --top-k 3 --csv predictions.csv` · "
                    "`posetune predict runs/yoga photo.jpg --engine onnx` (after `posetune export runs/yoga`) · "
                    "`posetune predict runs/yoga photo.jpg --min-confidence 0.8` ('unsure' below 80%) · "
                    "`posetune predict runs/yoga-pose photos/ --overlay overlays/ --json` (skeleton + answer drawn "
                    "on each photo; landmarks in the JSON) · "
                    "`posetune predict runs/yoga session.mp4 --fps 5 --timeline plots/ --csv frames.csv` "
                    "(segments of a recorded session)")
def predict(
    run: str = typer.Argument(..., help="Run folder written by `posetune train`."),
    paths: List[str] = typer.Argument(..., help="Image files, video files (.mp4 .mov .mkv .avi .webm .m4v) and/or "
                                                "folders of them."),
    top_k: int = typer.Option(3, help="How many classes to list per image."),
    batch_size: int = typer.Option(32),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write path,prediction,probability,top-k columns here "
                                                           "(videos: one row per sampled frame, raw and smoothed)."),
    device: str = typer.Option("auto"),
    engine: str = typer.Option("auto", help="auto: onnx when RUN/model.onnx matches the weights, else torch | torch "
                                            "(model.safetensors) | onnx (RUN/model.onnx, no torch needed)."),
    tta: bool = typer.Option(False, "--tta", help="Average flipped and multi-crop views (torch engine; images only)."),
    min_confidence: Optional[float] = typer.Option(None, help="A threshold P in 0..1: an image whose top probability "
                                                   "is below P gets the label 'unsure' (its top-k still listed, "
                                                   "\"unsure\": true in --json). `evaluate --min-confidence P` "
                                                   "shows how many images that leaves and how well they score."),
    fps: float = typer.Option(5.0, help="Videos: frames sampled per second."),
    smooth: str = typer.Option("ema+hold", help="Videos: ema (moving average of probabilities) | hold (a new label "
                                                "must last --min-hold s) | ema+hold | none."),
    ema_alpha: float = typer.Option(0.5, help="Videos: weight of the newest frame in the moving average (0..1]."),
    min_hold: float = typer.Option(1.0, help="Videos: seconds a new label must last before the segment changes."),
    timeline: Optional[Path] = typer.Option(None, help="Videos: write NAME-timeline.png per video into this folder."),
    overlay: Optional[Path] = typer.Option(None, help="Images: write each one as DIR/<name>.png with its BlazePose "
                                           "skeleton drawn (pose and NAME+pose runs) and its answer + probability "
                                           "written on it; an image-only run's overlay shows the answer only. "
                                           "DIR is created; a repeated name gets -2, -3; a file already there "
                                           "stops the command before it predicts (exit 2)."),
    json_out: bool = typer.Option(False, "--json", help="Print predictions as JSON on stdout (with videos: "
                                                        "{\"images\": [...], \"videos\": [...]}); pose and "
                                                        "NAME+pose runs add \"pose\": {\"detected\", "
                                                        "\"landmarks\": 33 x [x, y, visibility]}, else null."),
):
    """Predict the class of images (files or folders), in batches, and the held poses of videos (sampled, smoothed,
    cut into segments); unreadable files are reported, not fatal. Probabilities are after the run's temperature.
    A `pose` run answers "no person detected" (probability 0, no top-k) where BlazePose finds nobody; a
    NAME+pose run still answers from the image, with "pose": {"detected": false}."""
    from posetune.predict import choose_engine, collect_paths, load
    from posetune.predict.overlays import overlay_targets
    from posetune.runtime import tune_allocator
    from posetune.video.decoding import split_videos
    from posetune.video.prediction import VideoOptions

    opts = VideoOptions(run=run, paths=paths, top_k=top_k, batch_size=batch_size, device=device, engine=engine,
                        tta=tta, csv=csv, min_confidence=min_confidence, fps=fps, smooth=smooth, ema_alpha=ema_alpha,
                        min_hold=min_hold, timeline=timeline, overlay=overlay).validate()
    videos, others = split_videos(opts.paths)
    files = collect_paths(others, allow_empty=bool(videos)) if others else []
    targets = overlay_targets(files, opts.overlay) if opts.overlay else None  # refused before predicting
    tune_allocator()
    reporter = reporter_for(json_out)
    engine, why = choose_engine(opts.run, opts.engine, opts.device, opts.tta)
    reporter.info(f"engine: {engine} - {why}")
    clf = load(opts.run, device=opts.device, engine=engine)
    preds = _predict_images(clf, files, opts, reporter, json_out, csv_images=not videos) if files else []
    if targets is not None:
        _write_overlays(preds, targets, opts.overlay, reporter, videos)
    results = []
    if videos:
        from posetune.cli.video_output import predict_videos_cli, write_frames_csv

        results = predict_videos_cli(clf, videos, opts, reporter)
        if csv:
            write_frames_csv(csv, preds, results)
            reporter.info(f"wrote {csv} (one row per sampled video frame, then one per image)")
    if json_out:
        images = [p.as_dict() for p in preds]
        print_json({"images": images, "videos": [r.as_dict() for r in results]} if videos else images)
    for p in preds:
        if p.error:
            reporter.warn(f"could not read {p.path}: {p.error}")
    for r in results:
        if r.error:
            reporter.warn(f"could not read {r.path}: {r.error}")


def _predict_images(clf, files: list[str], opts, reporter, json_out: bool, csv_images: bool) -> list:
    from posetune.predict.prediction import write_predictions_csv

    advance = reporter.start("predict", len(files))
    preds = clf.predict(files, top_k=opts.top_k, batch_size=opts.batch_size, on_step=advance,
                        min_confidence=opts.min_confidence, **({"tta": True} if opts.tta else {}))
    reporter.stop()
    if opts.csv and csv_images:
        write_predictions_csv(preds, opts.csv)
    if json_out:
        return preds
    uses_pose = any(p.pose_detected is not None for p in preds)
    reporter.table(f"predictions ({len(preds)} images)",
                   [{"path": p.path, "prediction": p.label or "-", "probability": p.probability,
                     **({"person": _person(p)} if uses_pose else {}),
                     "top-k": ", ".join(f"{c} {pr:.2f}" for c, pr in p.top_k) or p.error or "-"} for p in preds])
    nobody = sum(p.no_person for p in preds)
    if nobody:
        reporter.info(f"{nobody} of {len(preds)} images: no person detected (a pose run needs a body to answer; "
                      "a NAME+pose run would still answer from the image)")
    if opts.min_confidence is not None:
        unsure = sum(p.unsure for p in preds)
        reporter.info(f"{unsure} of {len(preds)} images unsure (top probability below {opts.min_confidence:g})")
    if opts.csv and csv_images:
        reporter.info(f"wrote {opts.csv}")
    return preds


def _person(prediction) -> str:
    return "-" if prediction.pose_detected is None else ("found" if prediction.pose_detected else "nobody")


def _write_overlays(preds: list, targets: list, folder, reporter, videos: list) -> None:
    from posetune.predict.overlays import write_overlays

    advance = reporter.start("overlays", len(targets))
    written = write_overlays(preds, targets, on_step=advance)
    reporter.stop()
    reporter.info(f"wrote {len(written)} overlay(s) to {folder}/" + (" (images only; videos get --timeline)"
                                                                     if videos else ""))


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
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Any batch size at run time (default: batch 1; pose and fusion runs: always any)."),
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

    reporter = reporter_for(json_out)
    if format == "timm":
        from posetune.hub import export_timm

        reporter.info(f"exporting {run} to timm...")
        result = export_timm(run, out=out, images=images or None, strict=False, opset=opset, dynamic_batch=dynamic_batch)
    else:
        result = run_export(run, format=format, opset=opset, dynamic_batch=dynamic_batch, out=out, images=images or None,
                            strict=False, reporter=reporter)
    if json_out:
        print_json(result)
    else:
        reporter.table("parity with the PyTorch model",
                       [{"inputs": kind, "n": c["n"], "max |delta logits|": f"{c['max_abs_delta']:.2e}",
                         "top-1 agreement": f"{100 * c['top1_agreement']:.1f}%"} for kind, c in result["parity"].items()])
        if format == "timm":
            reporter.info(f"wrote {result['path']}/ ({', '.join(result['files'])}; {result['bytes'] / 1e6:.1f} MB); "
                          f"load it with {result['load']}")
        else:
            inputs = ", ".join(f"{name} {spec['shape']}" for name, spec in result["inputs"].items())
            reporter.info(f"wrote {result['path']} ({result['bytes'] / 1e6:.1f} MB, inputs: {inputs}) + {result['sidecar']}")
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

    reporter = reporter_for(json_out)
    reporter.info(f"exporting {run} to a timm folder{' (dry run: nothing is uploaded)' if dry_run else ''}...")
    result = run_push(run, repo_id, private=private, token=token, out=out, dry_run=dry_run)
    if json_out:
        print_json(result)
        return
    reporter.table(f"{'would upload' if dry_run else 'uploaded'} to {repo_id}",
                   [{"file": f["path"], "MB": f"{f['bytes'] / 1e6:.2f}"} for f in result["files"]])
    reporter.info(f"the timm folder: {result['folder']}")
    if result["uploaded"]:
        reporter.info(f"{result['url']} - load it with timm.create_model(\"hf-hub:{repo_id}\", pretrained=True)")


@app.command(epilog="Examples: `posetune serve runs/yoga` then open http://127.0.0.1:8000 · "
                    "`posetune serve runs/yoga --engine onnx --host 0.0.0.0 --port 8080 --max-bytes 20MB` · "
                    "`POSETUNE_RUN=/models/yoga POSETUNE_HOST=0.0.0.0 POSETUNE_LOG_FORMAT=json posetune serve` "
                    "(each option also reads POSETUNE_ + its name in capitals; a flag wins over the variable)")
def serve(
    run: str = typer.Argument(..., envvar="POSETUNE_RUN", show_envvar=True,
                              help="Run folder written by `posetune train` (for --engine onnx: after `posetune export`)."),
    host: str = typer.Option("127.0.0.1", envvar="POSETUNE_HOST",
                             help="Address to bind; 0.0.0.0 exposes the server to your network."),
    port: int = typer.Option(8000, envvar="POSETUNE_PORT"),
    engine: str = typer.Option("auto", envvar="POSETUNE_ENGINE",
                               help="auto: onnx when RUN/model.onnx matches the weights, else torch | torch | "
                                    "onnx (RUN/model.onnx through ONNX Runtime)."),
    max_bytes: str = typer.Option("10MB", envvar="POSETUNE_MAX_BYTES", help="Largest upload accepted (413 beyond it)."),
    max_pixels: int = typer.Option(50_000_000, envvar="POSETUNE_MAX_PIXELS",
                                   help="Largest image in pixels (decompression-bomb guard)."),
    max_queue: int = typer.Option(16, envvar="POSETUNE_MAX_QUEUE",
                                  help="Requests in progress at once; more get 503 with Retry-After."),
    top_k: int = typer.Option(5, envvar="POSETUNE_TOP_K", help="Classes returned per image."),
    read_timeout: float = typer.Option(10.0, envvar="POSETUNE_READ_TIMEOUT",
                                       help="Seconds to receive a whole upload; slower ones get 408 (10 s: a 10 MB "
                                            "photo at 8 Mbit/s). No queue slot is held meanwhile."),
    allowed_hosts: Optional[str] = typer.Option(None, envvar="POSETUNE_ALLOWED_HOSTS",
                                                help="Host headers accepted, comma-separated (pose.example,*.lan; * any); "
                                                     "others get 400. Default: loopback names when bound to loopback, "
                                                     "else any."),
    min_confidence: Optional[float] = typer.Option(None, envvar="POSETUNE_MIN_CONFIDENCE",
                                                   help="A threshold P in 0..1: answer the label 'unsure' "
                                                   "(top-k still given, \"unsure\": true) when the top probability "
                                                   "is below P."),
    device: str = typer.Option("auto", envvar="POSETUNE_DEVICE"),
    max_batch: int = typer.Option(16, envvar="POSETUNE_MAX_BATCH",
                                  help="Requests that share one forward pass at most (1: one at a time); an ONNX "
                                       "export of a fixed batch still runs them one by one (`posetune export RUN "
                                       "--dynamic-batch` for a real batch)."),
    batch_wait_ms: float = typer.Option(5.0, envvar="POSETUNE_BATCH_WAIT_MS",
                                        help="How long a forming batch waits for requests still decoding, in ms after "
                                             "the first (never when no other request is on its way)."),
    log_format: str = typer.Option("text", envvar="POSETUNE_LOG_FORMAT",
                                   help="text (uvicorn's logs) | json (one JSON object per request on stdout: time, "
                                        "method, path, status, latency_ms, batch_size, client; other messages as "
                                        "JSON on stderr)."),
):
    """Serve a web page and a JSON API that name the pose in a photo (FastAPI + uvicorn): GET /, POST /predict,
    GET /info, GET /health, GET /metrics (Prometheus), docs at /docs and /redoc (offline). Every option can also
    be set from an environment variable, POSETUNE_ and its name (POSETUNE_PORT, POSETUNE_MAX_BYTES, ...; RUN:
    POSETUNE_RUN); a flag overrides the variable."""
    import uvicorn

    from posetune.predict import choose_engine
    from posetune.runtime import tune_allocator
    from posetune.serve.app import create_app
    from posetune.serve.limits import default_allowed_hosts, parse_hosts, parse_size
    from posetune.serve.monitoring import LogReporter, uvicorn_log_config
    from posetune.serve.options import ServeOptions

    ServeOptions(run=run, host=host, port=port, engine=engine, max_bytes=max_bytes, max_pixels=max_pixels,
                 max_queue=max_queue, top_k=top_k, read_timeout=read_timeout, allowed_hosts=allowed_hosts,
                 device=device, max_batch=max_batch, batch_wait_ms=batch_wait_ms, log_format=log_format,
                 min_confidence=min_confidence).validate()  # before the model loads or a port binds
    tune_allocator()
    log_config = uvicorn_log_config() if log_format == "json" else None
    reporter = LogReporter(log_config) if log_config else reporter_for(False)  # json: stdout has requests only
    hosts = parse_hosts(allowed_hosts) if allowed_hosts is not None else default_allowed_hosts(host)
    engine, why = choose_engine(run, engine, device)
    reporter.info(f"engine: {engine} - {why}")
    app_ = create_app(run, engine=engine, max_bytes=parse_size(max_bytes), max_pixels=max_pixels, max_queue=max_queue,
                      top_k=top_k, device=device, read_timeout=read_timeout, allowed_hosts=hosts, max_batch=max_batch,
                      batch_wait_ms=batch_wait_ms, log_format=log_format,
                      min_confidence=min_confidence)
    if app_.state.info["model_batch"] != "any" and max_batch > 1:
        reporter.info(f"batching up to {max_batch} requests, but {run}'s ONNX export takes batch "
                      f"{app_.state.info['model_batch']}: re-export with `posetune export {run} --dynamic-batch` for one "
                      "forward pass per batch")
    if host not in ("127.0.0.1", "localhost", "::1"):
        reporter.warn(f"binding {host}: anyone who can reach this machine can use the model")
    reporter.info("allowed hosts: " + ("any (--allowed-hosts NAME,... to restrict)" if "*" in hosts
                                       else f"{', '.join(hosts)} (others get 400; --allowed-hosts to change)"))
    reporter.info(f"serving {run} ({engine} engine) on http://{'[' + host + ']' if ':' in host else host}:{port}  "
                  "(Ctrl+C to stop)")
    uvicorn.run(app_, host=host, port=port, log_level="info", timeout_keep_alive=5,
                **({"log_config": log_config, "access_log": False} if log_config else {}))
