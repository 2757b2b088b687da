"""Recorded sessions: `data synth --video` renders one with known answers, `predict RUN session.mp4` finds its
holds (torch and ONNX engines), a corrupt or truncated video is one line while the rest is still predicted,
and the smoothing/segmenting steps on hand-made probabilities."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import POSE_RUN_POSES as POSES
from helpers import POSE_RUN_SIZE as SIZE
from helpers import run_cli

from posetune.video.segments import Segment, ema, hold, score_segments, segments_of, smooth


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    from posetune.data.synth.session import render_session

    out = tmp_path_factory.mktemp("video") / "session.mp4"
    render_session(out, poses=POSES, hold=3.0, transition=1.0, fps=10, size=SIZE, seed=2)
    return out


def _truth(video: Path) -> list[dict]:
    with open(video.with_suffix(".csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_synth_video_writes_a_decodable_session_and_its_ground_truth(tmp_path, monkeypatch, capsys):
    from posetune.video.decoding import sample_frames

    out = tmp_path / "s.mp4"
    code, _, err = run_cli(monkeypatch, capsys, ["data", "synth", "--video", out, "--poses", "tree,plank",
                                                 "--hold", "1", "--transition", "0.5", "--fps", "4", "--size", "48",
                                                 "--json"])
    assert code in (0, None), err
    truth = _truth(out)
    assert [(r["pose"], float(r["start"]), float(r["end"])) for r in truth] == [("tree", 0.0, 1.0),
                                                                                 ("plank", 1.5, 2.5)]
    frames = list(sample_frames(out, 4))
    assert len(frames) == 10 and frames[0][1].shape == (48, 48, 3)
    assert not np.array_equal(frames[0][1], frames[-1][1])  # the figure moved
    code, _, err = run_cli(monkeypatch, capsys, ["data", "synth", "--video", out])  # never overwritten
    assert code == 2 and "exists" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, says", [
    (["--size", "49"], "--size must be even"),
    (["--poses", "tree,lotus"], "--poses"),
    (["--fps", "0"], "--fps must be an integer from 1 to 60"),
    (["--hold", "0"], "--hold must be a number > 0"),
])
def test_synth_video_refuses_bad_options_in_one_line_from_cli_and_api(args, says, tmp_path, monkeypatch, capsys):
    """The CLI (at the door) and render_session (the API) check through SessionOptions: the same message."""
    from posetune.data.synth.session import render_session
    from posetune.errors import InvalidOption

    out = tmp_path / "s.mp4"
    code, _, err = run_cli(monkeypatch, capsys, ["data", "synth", "--video", out, *args])
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    keywords = {args[0][2:]: (args[1] if args[0] == "--poses" else float(args[1]) if args[0] == "--hold"
                              else int(args[1]))}
    with pytest.raises(InvalidOption, match=says):
        render_session(out, **keywords)
    assert not out.exists() and not out.with_suffix(".csv").exists()


def test_synth_video_writes_every_session_suffix_and_refuses_webm(tmp_path) -> None:
    """The writer's suffixes are the readable ones (data.images.VIDEO_SUFFIXES) but WebM, which takes neither
    codec used here; each written file decodes."""
    from posetune.data.images import VIDEO_SUFFIXES
    from posetune.data.synth.session import SESSION_SUFFIXES, render_session
    from posetune.errors import InvalidOption
    from posetune.video.decoding import is_video_path, sample_frames

    assert set(SESSION_SUFFIXES) == set(VIDEO_SUFFIXES) - {".webm"}
    for suffix in SESSION_SUFFIXES:
        out = tmp_path / f"s-{suffix[1:]}{suffix}"
        render_session(out, poses=["tree"], hold=0.5, transition=0, fps=4, size=32)
        assert is_video_path(out) and len(list(sample_frames(out, 4))) == 2
    with pytest.raises(InvalidOption, match=r"\.mp4, \.m4v"):
        render_session(tmp_path / "s.webm", poses=["tree"], hold=0.5, fps=4, size=32)


def test_predict_finds_the_holds_of_a_session(session, pose_run, tmp_path, monkeypatch, capsys):
    frames_csv, plots = tmp_path / "frames.csv", tmp_path / "plots"
    code, out, err = run_cli(monkeypatch, capsys, ["predict", pose_run, session, "--json", "--csv", frames_csv,
                                                   "--timeline", plots, "--engine", "torch"])
    assert code in (0, None), err
    video = json.loads(out)["videos"][0]
    assert video["error"] is None and video["frames"] == 55  # 11 s sampled at the default 5 fps
    segments = [Segment(s["pose"], s["start"], s["end"], s["mean_probability"]) for s in video["segments"]]
    assert [s.pose for s in segments] == list(POSES)
    score = score_segments(segments, _truth(session))
    assert score["time_accuracy"] >= 0.95 and score["boundaries_within"] == 1.0, score
    with open(frames_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == video["frames"] and set(rows[0]) >= {"time", "prediction", "smoothed"}
    assert (plots / "session-timeline.png").stat().st_size > 0 and video["timeline"]


def test_predict_reports_a_corrupt_and_a_truncated_video_and_predicts_the_rest(session, pose_run, tmp_path,
                                                                               monkeypatch, capsys):
    from posetune.data.synth import render_pose

    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "broken.mp4").write_bytes(b"not a video at all" * 50)
    data = session.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (folder / "session.mp4").write_bytes(data)
    render_pose("tree", np.random.default_rng(2), size=SIZE).save(folder / "still.png")
    frames_csv = tmp_path / "frames.csv"
    code, out, err = run_cli(monkeypatch, capsys, ["predict", pose_run, folder, "--json", "--engine", "torch",
                                                   "--csv", frames_csv])
    assert code in (0, None) and "Traceback" not in err
    result = json.loads(out)
    by_name = {Path(v["path"]).name: v for v in result["videos"]}
    assert by_name["broken.mp4"]["error"] and by_name["truncated.mp4"]["error"]
    assert [s["pose"] for s in by_name["session.mp4"]["segments"]] == list(POSES)
    assert [p["prediction"] for p in result["images"]] == ["tree"]
    with open(frames_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == by_name["session.mp4"]["frames"] + 1 and rows[-1]["time"] == "" and rows[-1]["smoothed"]
    warned = [line for line in err.splitlines() if "could not read" in line]
    assert len(warned) == 2 and all(".mp4" in line for line in warned)


def test_onnx_engine_gives_the_same_segments(session, pose_run, tmp_path):
    import shutil

    import posetune
    from posetune.video.prediction import predict_video

    run = tmp_path / "onnx-run"
    shutil.copytree(pose_run, run)
    posetune.export(run, format="onnx", dynamic_batch=True)
    torch_result, = predict_video(run, [session], engine="torch")
    onnx_result, = predict_video(run, [session], engine="onnx")
    assert [s.pose for s in onnx_result.segments] == [s.pose for s in torch_result.segments] == list(POSES)
    for a, b in zip(onnx_result.segments, torch_result.segments):
        assert abs(a.start - b.start) <= 0.2 and abs(a.end - b.end) <= 0.2


def test_hold_removes_flickers_shorter_than_the_minimum_and_keeps_true_starts():
    times = [i * 0.2 for i in range(15)]
    labels = [0] * 5 + [1] * 2 + [0] * 3 + [2] * 5  # a 0.4 s flicker of 1, then 2 for 1 s
    assert hold(labels, times, min_hold=1.0) == [0] * 10 + [2] * 5


def test_ema_smooths_towards_the_new_pose_and_segments_cover_the_video():
    probs = np.array([[1.0, 0.0]] * 4 + [[0.0, 1.0]] * 4)
    smoothed = ema(probs, 0.5)
    assert smoothed[4, 1] == pytest.approx(0.5) and smoothed[5, 1] == pytest.approx(0.75)
    times = [i * 0.5 for i in range(8)]
    idx, top = smooth(probs, times, "ema", alpha=0.5)
    segs = segments_of(times, ["a" if i == 0 else "b" for i in idx], top.max(1), 0.5)
    assert [(s.pose, s.start, s.end) for s in segs] == [("a", 0.0, 2.5), ("b", 2.5, 4.0)]
    assert segs[1].duration == 1.5


def test_score_segments_measures_time_and_boundaries():
    truth = [{"pose": "a", "start": 0, "end": 4}, {"pose": "b", "start": 5, "end": 9}]
    good = [Segment("a", 0, 4.5, 0.9), Segment("b", 4.5, 9, 0.9)]
    late = [Segment("a", 0, 7, 0.9), Segment("b", 7, 9, 0.9)]
    assert score_segments(good, truth) == {"time_accuracy": 1.0, "boundaries_within": 1.0, "tolerance_s": 1.0}
    scored = score_segments(late, truth)
    assert scored["time_accuracy"] == pytest.approx(0.75, abs=0.02) and scored["boundaries_within"] == 0.0


def test_centred_ema_has_no_lag_and_settled_segments_leave_transitions_out():
    step = np.array([[1.0, 0.0]] * 6 + [[0.0, 1.0]] * 6)
    causal, centred = ema(step, 0.5), ema(step, 0.5, centred=True)
    assert causal[6].argmax() == 0  # the causal average still says the old pose one frame after the change
    assert centred[5].argmax() == 0 and centred[6].argmax() == 1  # the centred one switches where the step is
    assert centred[5, 0] == pytest.approx(centred[6, 1], abs=1e-3)  # and is symmetric about it
    times = [i * 0.5 for i in range(10)]
    labels = ["a"] * 5 + ["b"] * 5
    top = [0.9, 0.9, 0.9, 0.6, 0.5, 0.5, 0.6, 0.9, 0.9, 0.9]  # a walk between two holds: the middle frames doubt
    tiled = segments_of(times, labels, top, 0.5)
    held = segments_of(times, labels, top, 0.5, settled=0.9)
    assert [(s.start, s.end) for s in tiled] == [(0.0, 2.5), (2.5, 5.0)]
    assert [(s.pose, s.start, s.end) for s in held] == [("a", 0.0, 1.5), ("b", 3.5, 5.0)]
    assert held[0].mean_probability == pytest.approx(0.9)


def test_prefetched_keeps_order_raises_the_sources_error_and_stops_its_thread_when_closed():
    import threading

    from posetune.data.images import prefetched

    assert list(prefetched(iter(range(100)), ahead=3)) == list(range(100))

    def broken():
        yield 1
        raise ValueError("frame 2 is corrupt")

    got = []
    with pytest.raises(ValueError, match="frame 2"):
        for x in prefetched(broken()):
            got.append(x)
    assert got == [1]
    endless = prefetched(iter(int, 1), ahead=2)  # never ends: only closing it stops the producer
    assert next(endless) == 0
    endless.close()
    assert not [t for t in threading.enumerate() if t.name == "posetune-prefetch"]
