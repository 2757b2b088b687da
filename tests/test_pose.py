"""posetune.pose: BlazePose landmarks on a real photo, mirroring, no person, tiny images, the landmark cache."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from posetune.errors import UsageError
from posetune.pose import FEATURE_DIM, Landmarks, extract_landmarks, mirror_landmarks, pose_features
from posetune.pose.audit import mediapipe_installed
from posetune.pose.cache import LandmarkCache
from posetune.pose.drawing import draw_skeleton
from posetune.pose.features import presence

NOSE, L_SHOULDER, R_SHOULDER, L_HIP, R_HIP = 0, 11, 12, 23, 24


def test_features_need_no_mediapipe():
    """Normalisation and mirroring are numpy only: a body standing upright, made up, 200 x 400 px."""
    rows = np.zeros((33, 4), np.float32)
    rows[:, 3] = 1.0
    rows[:, 0] = 0.5 + 0.05 * np.where(np.arange(33) % 2, 1, -1) * (np.arange(33) > 0)  # left joints on the right
    rows[:, 1] = np.linspace(0.1, 0.9, 33)
    body = Landmarks(image=rows, world=rows.copy())
    f = pose_features(body, 200, 400)
    assert f.shape == (FEATURE_DIM,) and presence(f) == 1.0
    twice = mirror_landmarks(mirror_landmarks(body))
    np.testing.assert_allclose(twice.image, body.image, atol=1e-6)
    mirrored = pose_features(mirror_landmarks(body), 200, 400)
    np.testing.assert_allclose(mirrored[99:107], f[99:107], atol=1e-5)  # this body is symmetric: same angles


def test_python_313_gets_one_line(monkeypatch):
    from posetune.pose import landmarks

    monkeypatch.setattr(landmarks.sys, "version_info", (3, 13, 0))
    with pytest.raises(UsageError, match=r"needs mediapipe 0.10.14 \(wheels for CPython 3.8-3.12\)"):
        landmarks.require_mediapipe()


needs_mediapipe = pytest.mark.skipif(not mediapipe_installed(), reason="posetune[pose] not installed")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    pytest.importorskip("mediapipe", reason="posetune[pose] not installed")
    from skimage.data import astronaut as photo

    return photo()


@pytest.fixture(scope="module")
def astronaut_landmarks(astronaut):
    return extract_landmarks(astronaut)


def test_astronaut_nose_above_shoulders_above_hips(astronaut_landmarks):
    lm = astronaut_landmarks
    assert lm is not None and lm.image.shape == (33, 4)
    y = lm.image[:, 1]  # image y grows downwards
    assert y[NOSE] < min(y[L_SHOULDER], y[R_SHOULDER])
    assert max(y[L_SHOULDER], y[R_SHOULDER]) < min(y[L_HIP], y[R_HIP])
    assert lm.image[L_SHOULDER, 3] > 0.9 and lm.image[R_SHOULDER, 3] > 0.9  # both shoulders found
    assert lm.image[L_SHOULDER, 0] > lm.image[R_SHOULDER, 0]  # facing the camera: her left is on our right


def test_features_normalised_and_present(astronaut, astronaut_landmarks):
    h, w = astronaut.shape[:2]
    f = pose_features(astronaut_landmarks, w, h)
    assert f.shape == (FEATURE_DIM,) and presence(f) == 1.0
    coords = f[:99].reshape(33, 3)
    hip_centre = (coords[L_HIP] + coords[R_HIP]) / 2
    np.testing.assert_allclose(hip_centre, 0.0, atol=1e-5)
    assert np.linalg.norm(coords[:, :2], axis=1).max() <= 1.0 + 1e-5  # divided by the pose size
    assert ((f[99:107] >= 0) & (f[99:107] <= 1)).all()  # angles / pi


def test_mirroring_matches_the_flipped_photo(astronaut, astronaut_landmarks):
    mirrored = mirror_landmarks(astronaut_landmarks)
    flipped = extract_landmarks(np.ascontiguousarray(astronaut[:, ::-1]))
    joints = [L_SHOULDER, R_SHOULDER, L_HIP, R_HIP, NOSE]
    np.testing.assert_allclose(mirrored.image[joints, :2], flipped.image[joints, :2], atol=0.06)
    assert mirror_landmarks(mirrored).image == pytest.approx(astronaut_landmarks.image)
    assert mirror_landmarks(None) is None


@needs_mediapipe
@pytest.mark.parametrize("size", [256, 8, 1])
def test_blank_or_tiny_image_is_no_person(size):
    found = extract_landmarks(np.full((size, size, 3), 255, np.uint8))
    assert found is None
    f = pose_features(found, size, size)
    assert presence(f) == 0.0 and not f.any()


def test_downloading_complexities_are_refused(astronaut):
    with pytest.raises(UsageError, match="complexity 2 downloads"):
        extract_landmarks(astronaut, model_complexity=2)


def test_cache_hits_second_time_and_stores_misses(tmp_path, astronaut):
    photo, blank = tmp_path / "astronaut.png", tmp_path / "blank.png"
    Image.fromarray(astronaut).save(photo)
    Image.new("RGB", (200, 200), "white").save(blank)
    cache = LandmarkCache(tmp_path / "cache")
    first, w, h = cache.get_or_extract(photo)
    assert (w, h) == (astronaut.shape[1], astronaut.shape[0]) and cache.misses == 1
    again, _, _ = LandmarkCache(tmp_path / "cache").get_or_extract(photo)  # a later run
    np.testing.assert_array_equal(again.image, first.image)
    assert cache.get_or_extract(blank)[0] is None and cache.get_or_extract(blank)[0] is None
    assert (cache.hits, cache.misses) == (1, 2)


def test_skeleton_drawn_only_where_a_person_is(astronaut, astronaut_landmarks):
    photo = Image.fromarray(astronaut)
    drawn = np.asarray(draw_skeleton(photo, astronaut_landmarks))
    assert (drawn != astronaut).any() and drawn.shape == astronaut.shape
    np.testing.assert_array_equal(np.asarray(draw_skeleton(photo, None)), astronaut)


def test_data_check_lists_no_person_images_per_class(tmp_path, monkeypatch, capsys, astronaut):
    import json

    from helpers import run_cli

    monkeypatch.setenv("POSETUNE_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    for name in ("person", "empty"):
        (data / name).mkdir(parents=True)
    for i in range(2):
        Image.fromarray(astronaut).save(data / "person" / f"astronaut_{i}.png")
        Image.new("RGB", (240, 200), (40 + 60 * i, 90, 140)).save(data / "empty" / f"wall_{i}.png")
    rc, out, _ = run_cli(monkeypatch, capsys, ["data", "check", data, "--json"])
    section = json.loads(out)["no_person"]
    assert {r["class"]: r["no_person"] for r in section["per_class"]} == {"empty": 2, "person": 0}
    assert sorted(section["paths"]["empty"]) == sorted(str(p) for p in (data / "empty").glob("*.png"))
    assert "person" not in section["paths"] and rc == 0  # informational: not a problem of the data
    rc, out, _ = run_cli(monkeypatch, capsys, ["data", "check", data])
    assert rc == 0 and "empty: no person in" in out and "wall_0.png" in out
    rc, out, _ = run_cli(monkeypatch, capsys, ["data", "check", data, "--json", "--no-person", "no"])
    assert json.loads(out)["no_person"] is None


def test_feature_matrix_mirrors_flipped_rows_and_counts_no_person(tmp_path, astronaut, astronaut_landmarks):
    from posetune.pose.matrix import feature_matrix, no_person_counts

    photo, blank = tmp_path / "astronaut.png", tmp_path / "blank.png"
    Image.fromarray(astronaut).save(photo)
    Image.new("RGB", (200, 200), "white").save(blank)
    cache = LandmarkCache(tmp_path / "cache")
    feats = feature_matrix([photo, photo, blank], cache, flipped=[False, True, False])
    h, w = astronaut.shape[:2]
    np.testing.assert_allclose(feats[0], pose_features(astronaut_landmarks, w, h), atol=1e-5)
    np.testing.assert_allclose(feats[1], pose_features(mirror_landmarks(astronaut_landmarks), w, h), atol=1e-5)
    assert not np.allclose(feats[0], feats[1]) and not feats[2].any()
    assert cache.misses == 2 and cache.hits == 1  # the flipped row reused the photo's landmarks
    assert no_person_counts(feats, [0, 0, 1], ["person", "empty"]) == {"person": 0, "empty": 1}

