"""Two processes on CPU (gloo over loopback), launched by `posetune train --nproc 2` (torchrun)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest

BASE = ["--backbone", "test_efficientnet", "--no-pretrained", "--image-size", "64", "--batch-size", "8", "--seed", "0"]


def train(data, out, *extra):
    proc = subprocess.run([sys.executable, "-m", "posetune", "train", str(data), "--out", str(out), *BASE, *extra],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["partial", "linear"])
def test_two_processes_train_one_run_folder(strategy, shapes_kaggle, tmp_path):
    single, double = tmp_path / "one", tmp_path / "two"
    train(shapes_kaggle, single, "--strategy", strategy, "--epochs", "3")
    proc = train(shapes_kaggle, double, "--strategy", strategy, "--epochs", "3", "--nproc", "2")
    assert proc.stdout.count("run folder:") == 1  # rank 0 alone reports
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # only one run folder written
    rows = list(csv.DictReader(open(double / "metrics.csv")))
    n_train = int(rows[0]["images"])
    if strategy == "partial":
        assert all(int(r["images_per_rank"]) == math.ceil(n_train / 2) for r in rows)  # each rank half the data
    a = json.loads((single / "metrics.json").read_text())["test"]["accuracy"]
    b = json.loads((double / "metrics.json").read_text())["test"]["accuracy"]
    if strategy == "linear":
        assert b == pytest.approx(a, abs=1e-6)  # sharded feature extraction gathers the very same features
    else:
        assert abs(a - b) <= 0.34  # comparable: same data and schedule, a different batch composition


@pytest.mark.slow
def test_two_processes_refit(shapes_kaggle, tmp_path):
    """--refit under torchrun: both runs on both ranks, rank 0 alone writes RUN and RUN/selection."""
    run = tmp_path / "run"
    proc = train(shapes_kaggle, run, "--epochs", "2", "--refit", "--nproc", "2")
    assert proc.stdout.count("run folder:") == 1
    refit = json.loads((run / "model.json").read_text())["refit"]
    selection = json.loads((run / "selection" / "model.json").read_text())
    assert refit["epochs"] == selection["epochs_run"] == 2 and refit["temperature"] == selection["temperature"]
    assert refit["n_train"] == 36 and sorted(p.name for p in tmp_path.iterdir()) == ["run"]
