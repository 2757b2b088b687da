"""`posetune predict` on videos: progress over the sampled frames, a segments table per video, one line per
unreadable video. The images given alongside go through the image path as before."""

from __future__ import annotations

from posetune.console import Reporter


def _clock(seconds: float) -> str:
    m, s = divmod(seconds, 60)
    return f"{int(m)}:{s:04.1f}"


def predict_videos_cli(clf, videos: list[str], opts, reporter: Reporter) -> list:
    """Predict ``videos`` with the loaded ``clf`` under ``opts`` (VideoOptions); print segments unless JSON."""
    from posetune.video.decoding import expected_frames
    from posetune.video.prediction import predict_video

    total = sum(expected_frames(v, opts.fps) for v in videos)
    advance = reporter.start(f"predict {len(videos)} video(s) at {opts.fps:g} fps", max(total, 1))
    options = {k: getattr(opts, k) for k in opts.names() if k not in ("run", "paths", "csv")}
    results = predict_video(opts.run, videos, on_frames=advance, clf=clf, **options)
    reporter.stop()
    for r in results:
        if r.error:
            continue
        reporter.table(f"{r.path}: {len(r.segments)} segments ({len(r.times)} frames, smoothing {opts.smooth})",
                       [{"pose": s.pose, "start": _clock(s.start), "end": _clock(s.end),
                         "duration": f"{s.duration:.1f} s", "mean probability": s.mean_probability}
                        for s in r.segments])
        if r.timeline:
            reporter.info(f"timeline: {r.timeline}")
    if not opts.timeline:
        reporter.info("--timeline DIR writes a timeline PNG per video")
    return results


def write_frames_csv(path, images: list, results: list) -> None:
    """One CSV for a mixed call: a row per sampled video frame, then a row per image (no time; smoothed = its label)."""
    from posetune.io import write_csv

    rows = [r for res in results for r in res.frame_rows()]
    rows += [{"path": p.path, "time": "", "prediction": p.label, "probability": p.probability, "smoothed": p.label,
              "smoothed_probability": p.probability} for p in images]
    write_csv(path, rows, header=["path", "time", "prediction", "probability", "smoothed", "smoothed_probability"])
