"""Predicting with pose runs: 'no person detected' (a label of its own, never a class), the "pose" field of every
answer (predict --json, POST /predict), --overlay, videos with nobody in frame, and evaluate's skeletons."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import run_cli
from PIL import Image

import posetune
from posetune.errors import UsageError
from posetune.pose.drawing import LEFT_COLOUR, RIGHT_COLOUR
from posetune.predict.overlays import overlay_targets
from posetune.predict.prediction import NO_PERSON, Prediction, batched_predictions
from posetune.serve.app import create_app

pytest.importorskip("mediapipe", reason="posetune[pose] not installed")
POSES = ("goddess", "tree")


@pytest.fixture(scope="module")
def people(tmp_path_factory) -> Path:
    """Two classes of synthetic figures (BlazePose finds them) and one blank image in each (it finds nobody)."""
    from posetune.data.synth import render_pose

    root = tmp_path_factory.mktemp("people")
    for pose in POSES:
        (root / pose).mkdir()
        for seed in range(4):
            render_pose(pose, np.random.default_rng(seed), size=128).save(root / pose / f"{seed}.png")
        Image.new("RGB", (128, 128), (200, 200, 200)).save(root / pose / "blank.png")
    return root


@pytest.fixture(scope="module")
def runs(people, tmp_path_factory) -> dict[str, Path]:
    """A `pose` run and a tiny `test_efficientnet+pose` fusion run (~10 s together), landmarks cached apart."""
    out = tmp_path_factory.mktemp("pose-runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POSETUNE_CACHE", str(out / "cache"))
        posetune.train(people, backbone="pose", strategy="linear", epochs=3, batch_size=8, out=str(out / "pose"))
        posetune.train(people, backbone="test_efficientnet+pose", pretrained=False, image_size=64, epochs=1,
                       batch_size=8, out=str(out / "fusion"))
    return {"pose": out / "pose", "fusion": out / "fusion"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """A real person (skimage's astronaut), nobody (blank), an 8 x 8 image and a corrupt file."""
    from skimage.data import astronaut

    root = tmp_path_factory.mktemp("photos")
    files = {"astronaut": root / "astronaut.png", "blank": root / "blank.png", "tiny": root / "tiny.png",
             "corrupt": root / "corrupt.jpg"}
    Image.fromarray(astronaut()).save(files["astronaut"])
    Image.new("RGB", (240, 200), "white").save(files["blank"])
    Image.new("RGB", (8, 8), (90, 90, 90)).save(files["tiny"])
    files["corrupt"].write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return files


def _check_landmarks(pose: dict) -> None:
    assert pose["detected"] is True and len(pose["landmarks"]) == 33
    for x, y, v in pose["landmarks"]:
        assert all(round(c, 4) == c for c in (x, y, v)) and 0 <= v <= 1
    nose_y, shoulder_y = pose["landmarks"][0][1], pose["landmarks"][11][1]
    assert 0 < nose_y < shoulder_y < 1  # image coordinates of the full photo, y downwards


def test_pose_run_answers_no_person_detected_never_a_class(runs, photos):
    preds = posetune.load(runs["pose"], device="cpu").predict([str(p) for p in photos.values()], top_k=2)
    person, blank, tiny, corrupt = (p.as_dict() for p in preds)
    assert person["prediction"] in POSES and person["top_k"] and person["no_person"] is False
    _check_landmarks(person["pose"])
    for nobody in (blank, tiny):
        assert nobody["prediction"] == NO_PERSON and nobody["no_person"] is True
        assert nobody["probability"] == 0.0 and nobody["top_k"] == []
        assert nobody["pose"] == {"detected": False, "landmarks": []}
    assert corrupt["error"] and corrupt["pose"] is None and corrupt["prediction"] == ""


def test_fusion_run_still_answers_a_class_and_says_nobody_was_found(runs, photos):
    preds = posetune.load(runs["fusion"], device="cpu").predict([photos["astronaut"], photos["blank"]], top_k=2)
    person, blank = (p.as_dict() for p in preds)
    _check_landmarks(person["pose"])
    assert blank["prediction"] in POSES and len(blank["top_k"]) == 2 and blank["no_person"] is False
    assert blank["pose"] == {"detected": False, "landmarks": []}


def test_image_only_runs_have_a_null_pose(tiny_run, photos):
    pred = posetune.load(tiny_run, device="cpu").predict([photos["blank"]])[0].as_dict()
    assert pred["pose"] is None and pred["no_person"] is False and pred["prediction"] != NO_PERSON


def test_cli_json_csv_and_table_say_no_person_detected(runs, photos, tmp_path, monkeypatch, capsys):
    files = [photos["astronaut"], photos["blank"], photos["corrupt"]]
    code, out, _ = run_cli(monkeypatch, capsys, ["predict", runs["pose"], *files, "--json", "--engine", "torch",
                                                 "--csv", tmp_path / "p.csv"])
    assert code in (0, None)
    answers = json.loads(out)
    assert [a["no_person"] for a in answers] == [False, True, False] and answers[1]["prediction"] == NO_PERSON
    _check_landmarks(answers[0]["pose"])
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[1]["prediction"] == NO_PERSON and float(rows[1]["probability"]) == 0.0 and not rows[1]["top1"]
    code, out, err = run_cli(monkeypatch, capsys, ["predict", runs["pose"], *files, "--engine", "torch"])
    assert code in (0, None) and NO_PERSON in out and "nobody" in out and "1 of 3 images: no person" in out
    assert "could not read" in err + out and "Traceback" not in err


def test_a_class_named_no_person_detected_is_refused(runs, photos, tmp_path, monkeypatch, capsys):
    run = tmp_path / "renamed"
    shutil.copytree(runs["pose"], run)
    meta = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**meta, "classes": [NO_PERSON, meta["classes"][1]]}))
    code, out, err = run_cli(monkeypatch, capsys, ["predict", run, photos["blank"], "--engine", "torch"])
    assert code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0 and NO_PERSON in err
    with pytest.raises(UsageError, match="rename that class"):
        create_app(run, engine="torch", device="cpu")  # at start, not as a 500 per request
    with pytest.raises(UsageError, match="rename that class"):
        batched_predictions([], 0, lambda items: np.zeros((0, 2)), [NO_PERSON, "tree"], kind="pose")
    batched_predictions([], 0, lambda items: np.zeros((0, 2)), [NO_PERSON, "tree"], kind="fusion")  # answers a class


def test_overlay_draws_the_skeleton_and_the_answer(runs, photos, tmp_path, monkeypatch, capsys):
    twin = tmp_path / "other" / "astronaut.png"  # the same stem as photos["astronaut"]
    twin.parent.mkdir()
    shutil.copy(photos["astronaut"], twin)
    folder = tmp_path / "overlays"
    inputs = [photos["astronaut"], twin, photos["blank"], photos["tiny"], photos["corrupt"]]
    code, out, _ = run_cli(monkeypatch, capsys, ["predict", runs["pose"], *inputs, "--overlay", folder, "--json",
                                                 "--engine", "torch"])
    assert code in (0, None)
    answers = json.loads(out)
    assert sorted(p.name for p in folder.iterdir()) == ["astronaut-2.png", "astronaut.png", "blank.png", "tiny.png"]
    assert [a["overlay"] for a in answers] == [str(folder / n) for n in ("astronaut.png", "astronaut-2.png",
                                                                         "blank.png", "tiny.png")] + [None]
    drawn = np.asarray(Image.open(folder / "astronaut.png").convert("RGB"))
    for colour in (LEFT_COLOUR, RIGHT_COLOUR):  # both sides of the skeleton
        assert (drawn == colour).all(-1).sum() > 50
    assert (drawn[2, 2] == 0).all()  # the caption's box, top left
    blank = np.asarray(Image.open(folder / "blank.png").convert("RGB"))
    assert not (blank == LEFT_COLOUR).all(-1).any() and (blank[2, 2] == 0).all()  # a caption, no skeleton
    assert min(Image.open(folder / "tiny.png").size) >= 256  # enlarged so that its caption fits
    before = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    code, out, err = run_cli(monkeypatch, capsys, ["predict", runs["pose"], photos["blank"], "--overlay", folder,
                                                   "--engine", "torch"])
    assert code == 2 and "exists" in err and err.strip().count("\n") == 0 and "prediction" not in out
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_overlay_of_an_image_only_run_and_through_the_api(tiny_run, photos, tmp_path):
    preds = posetune.predict_paths(tiny_run, [photos["blank"]], overlay=tmp_path / "o", device="cpu")
    assert preds[0].overlay == str(tmp_path / "o" / "blank.png")
    drawn = np.asarray(Image.open(preds[0].overlay).convert("RGB"))
    assert (drawn[2, 2] == 0).all() and not (drawn == LEFT_COLOUR).all(-1).any()  # the answer only
    with pytest.raises(UsageError, match="exists"):
        posetune.predict_paths(tiny_run, [photos["blank"]], overlay=tmp_path / "o")


def test_overlay_names_are_unique_within_a_call(tmp_path):
    names = [t.name for t in overlay_targets(["a/x.jpg", "b/x.png", "x-2.jpg", "c/y.webp"], tmp_path)]
    assert names == ["x.png", "x-2.png", "x-2-2.png", "y.png"]


def test_serve_answers_the_pose_field_and_no_person(runs, tiny_run, photos):
    client = TestClient(create_app(runs["pose"], engine="torch", device="cpu"))
    assert client.get("/info").json()["uses_pose"] is True
    person = client.post("/predict", content=photos["astronaut"].read_bytes()).json()
    assert person["prediction"] in POSES and person["no_person"] is False
    _check_landmarks(person["pose"])
    buf = io.BytesIO()
    Image.new("RGB", (160, 120), "white").save(buf, "JPEG")
    nobody = client.post("/predict", files={"file": ("b.jpg", buf.getvalue(), "image/jpeg")}).json()
    assert (nobody["prediction"], nobody["probability"], nobody["top_k"]) == (NO_PERSON, 0.0, [])
    assert nobody["no_person"] is True and nobody["pose"] == {"detected": False, "landmarks": []}
    plain = TestClient(create_app(tiny_run, engine="torch", device="cpu"))
    assert plain.get("/info").json()["uses_pose"] is False
    assert plain.post("/predict", content=photos["astronaut"].read_bytes()).json()["pose"] is None


def test_video_frames_with_nobody_get_the_label(runs, photos, tmp_path):
    import av
    from skimage.data import astronaut

    video = tmp_path / "half-empty.mp4"
    person = Image.fromarray(astronaut()).resize((256, 256))
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width = stream.height = 256
        stream.pix_fmt = "yuv420p"
        for i in range(16):  # 2 s of the astronaut, 2 s of a white wall
            frame = person if i < 8 else Image.new("RGB", (256, 256), "white")
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    result = posetune.predict_video(runs["pose"], [video], fps=4, smooth="ema+hold", min_hold=0.5, device="cpu")[0]
    assert result.error is None and result.raw[-4:] == [NO_PERSON] * 4 and NO_PERSON not in result.raw[:4]
    assert result.segments[-1].pose == NO_PERSON and result.segments[0].pose in POSES
    assert result.segments[-1].mean_probability == 0.0
    fusion = posetune.predict_video(runs["fusion"], [video], fps=4, device="cpu")[0]
    assert NO_PERSON not in fusion.raw  # the image still answers


def test_evaluate_shows_skeletons_per_class_and_the_no_person_images(runs, people, tmp_path):
    metrics = posetune.evaluate(runs["pose"], people, split="train", out=str(tmp_path / "eval"), device="cpu")
    section = metrics["no_person"]
    assert section["no_person"] == 2 and section["per_class"] == {"goddess": 1, "tree": 1}
    assert section["images"] == metrics["n"] == 10 and section["answered_accuracy"] <= 0.8
    sheet = Image.open(metrics["skeletons_png"])
    assert Path(metrics["skeletons_png"]).parent == tmp_path / "eval" and sheet.size[0] > 300
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["no_person"] == section
    plain = posetune.evaluate(runs["fusion"], people, split="train", out=str(tmp_path / "eval2"), device="cpu")
    assert "answered_accuracy" not in plain["no_person"] and plain["skeletons_png"]


def test_as_dict_keeps_its_keys_for_every_kind():
    keys = {"path", "prediction", "probability", "top_k", "unsure", "no_person", "pose", "overlay", "error"}
    assert set(Prediction("x", "a", 1.0).as_dict()) == keys
