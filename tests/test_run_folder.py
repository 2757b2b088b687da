"""The run folder's schema: model.json keys pinned, older and newer folders still load."""

from __future__ import annotations

import json
import shutil

import pytest

import posetune
from posetune.errors import UsageError
from posetune.run import RunDir, RunMeta

# What `posetune train` writes into model.json. A change here is a format change: old readers must cope.
MODEL_JSON_KEYS = {
    "format_version", "backbone", "arch", "weight_source", "classes", "preprocessing", "strategy", "frozen_stages",
    "stage_lrs", "best_epoch", "epochs_run", "train_seconds", "train_images_per_s", "data", "layout", "device", "precision",
    "metrics", "temperature", "calibration", "created", "kind", "pose_dim",
}


def test_model_json_keys_are_pinned(tiny_run):
    meta = json.loads((tiny_run / "model.json").read_text())
    assert set(meta) == MODEL_JSON_KEYS
    assert meta["format_version"] == 1
    assert set(meta["metrics"]["test"]) == {"accuracy", "balanced_accuracy", "macro_f1", "n"}


def test_a_folder_of_the_first_format_and_one_with_unknown_keys_load(tiny_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    meta = json.loads((old / "model.json").read_text())
    first_format = {k: meta[k] for k in ("backbone", "arch", "classes", "preprocessing", "strategy")}
    (old / "model.json").write_text(json.dumps(first_format))  # the minimum any posetune wrote
    assert posetune.load(old).classes == meta["classes"]
    newer = {**meta, "ensemble": [1, 2], "format_version": 2}  # a key this version does not know survives
    (old / "model.json").write_text(json.dumps(newer))
    loaded = RunDir(old).meta()
    assert loaded.extra == {"ensemble": [1, 2]} and loaded.to_json()["ensemble"] == [1, 2]


def test_a_run_from_before_temperature_scaling_loads_with_temperature_one(tiny_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_run, old)
    meta = json.loads((old / "model.json").read_text())
    del meta["temperature"], meta["calibration"]
    (old / "model.json").write_text(json.dumps(meta))
    clf = posetune.load(old, device="cpu")
    assert RunDir(old).meta().temperature == 1.0 and clf.temperature == 1.0
    image = next((tiny_run.parent.parent).rglob("*.jpg"), None)
    if image is not None:
        assert clf.predict([image])[0].label in clf.classes


def test_model_json_records_the_temperature_and_the_calibration(tiny_run):
    meta = json.loads((tiny_run / "model.json").read_text())
    cal = meta["calibration"]
    assert meta["temperature"] > 0 and cal["temperature"] == meta["temperature"] and cal["bins"] == 15
    assert cal["note"]  # how it was chosen (the tiny run's val split is too small to fit: 1.0, and it says so)
    for split in ("val", "test"):
        if split in cal:
            assert {"n", "ece_before", "ece_after", "nll_before", "nll_after"} <= set(cal[split])
    report = (tiny_run / "report.md").read_text()
    assert "## Calibration" in report and "## Error analysis" in report and "95% interval" in report


@pytest.mark.parametrize("value", [0, -1.5, "hot", None, True])
def test_a_bad_temperature_in_model_json_is_a_one_line_error(tiny_run, tmp_path, value):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    meta = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**meta, "temperature": value}))
    with pytest.raises(UsageError, match="temperature") as err:
        posetune.load(run)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"backbone": "x"}', ""])
def test_a_damaged_model_json_is_a_one_line_error(tiny_run, tmp_path, content):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "model.json").write_text(content)
    with pytest.raises(UsageError, match="model.json") as err:
        posetune.load(run)
    assert "\n" not in str(err.value)


def test_run_meta_round_trips():
    pre = {"input_size": [3, 8, 8], "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2], "interpolation": "bicubic",
           "crop_pct": 0.875}
    meta = RunMeta(backbone="b", arch="a", classes=["x", "y"], preprocessing=pre, strategy="full")
    assert RunMeta.from_json(meta.to_json()) == meta
