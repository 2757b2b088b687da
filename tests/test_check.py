"""`posetune data check`: names every unreadable file and every cross-split duplicate; exit 0/1/2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from helpers import messy_files, shape_image, write_shapes
from PIL import Image

from posetune.data.check import check_data


def run_check(*args):
    return subprocess.run([sys.executable, "-m", "posetune", "data", "check", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_clean_data_exits_0(tmp_path):
    write_shapes(tmp_path, 4, split="TRAIN", seed=0)
    write_shapes(tmp_path, 2, split="TEST", seed=99)
    proc = run_check(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no problems found" in proc.stdout


def test_messy_kaggle_folder_exits_1_and_names_everything(tmp_path):
    write_shapes(tmp_path, 5, split="TRAIN", seed=0)
    write_shapes(tmp_path, 2, split="TEST", seed=99)
    messy_files(tmp_path / "TRAIN" / "circle", np.random.default_rng(5))
    train_img = tmp_path / "TRAIN" / "square" / "square_000.jpg"
    # An exact leak: the same bytes in TEST.
    (tmp_path / "TEST" / "square" / "leak_exact.jpg").write_bytes(train_img.read_bytes())
    # A near leak: the same photo re-encoded smaller (as a video frame or a re-upload would be).
    Image.open(train_img).resize((60, 60)).save(tmp_path / "TEST" / "square" / "leak_near.jpg", quality=70)
    # A PNG saved with a .jpg name.
    shape_image("triangle", np.random.default_rng(3)).save(tmp_path / "TRAIN" / "triangle" / "really_png.jpg", "PNG")
    # A class folder only in TEST.
    (tmp_path / "TEST" / "crow").mkdir()
    shape_image("circle", np.random.default_rng(4)).save(tmp_path / "TEST" / "crow" / "c.jpg")
    proc = run_check(tmp_path, "--json")
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    bad = {r["path"].rsplit("/", 1)[-1] for r in report["unreadable"]}
    assert {"zero.jpg", "truncated.jpg", "corrupt.png", "notes.txt"} <= bad
    assert any(m["path"].endswith("really_png.jpg") for m in report["mislabelled"])
    leaked = {p for g in report["leaks"] for p in (g.get("paths") or [g["a"], g["b"]])}
    assert str(train_img) in leaked
    assert any(p.endswith("leak_exact.jpg") for p in leaked) and any(p.endswith("leak_near.jpg") for p in leaked)
    assert any("crow" in m for m in report["class_mismatch"])
    text = run_check(tmp_path)
    assert text.returncode == 1 and "leak_near.jpg" in text.stdout and "truncated" in text.stdout


def test_bad_usage_exits_2(tmp_path):
    assert run_check(tmp_path / "nope").returncode == 2


def test_synthetic_data_has_no_leaks(tmp_path):
    from posetune.data.synth import render_dataset

    render_dataset(tmp_path, per_class=6, test_per_class=3, size=64)
    report = check_data(tmp_path)
    assert report["leaks"] == [] and report["unreadable"] == []
