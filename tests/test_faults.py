"""SIGKILL at several moments: the run folder still loads or clearly refuses, resume continues, and
`--engine auto` never picks a model that did not pass its parity check."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import posetune
from posetune.predict import choose_engine

TINY_ARGS = ["--backbone", "test_efficientnet", "--no-pretrained", "--image-size", "64", "--batch-size", "8"]


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "posetune", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def run_ok(*args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "posetune", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.mark.slow
def test_kill_before_the_first_checkpoint_then_resume_trains_the_run(shapes_kaggle, tmp_path):
    out = tmp_path / "run"
    proc = start("train", shapes_kaggle, "--out", out, *TINY_ARGS, "--epochs", "2")
    kill_when(proc, lambda: (out / "config.yaml").is_file())  # decoding or the first epoch
    assert not (out / "model.safetensors").exists() or posetune.load(out)
    run_ok("train", "--resume", out)
    assert posetune.load(out).predict([str(next((shapes_kaggle / "TEST").rglob("*.jpg")))])[0].label


@pytest.mark.slow
@pytest.mark.parametrize("moment", [0.3, 1.5])
def test_kill_during_export_never_leaves_a_model_that_auto_would_take_unchecked(tiny_run, tmp_path, moment):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    started = time.time()
    proc = start("export", run)
    kill_when(proc, lambda: time.time() - started > 2.5 + moment)  # during imports, export or the parity check
    engine, why = choose_engine(run)
    sidecar = run / "model.onnx.json"
    if engine == "onnx":  # only when the export finished: then it must be the checked file
        assert sidecar.is_file() and proc.returncode == 0, why
    assert posetune.load(run, engine="torch").classes == ["circle", "square", "triangle"]
    assert not list(run.glob(".*.tmp")) or engine == "torch"
    run_ok("export", run)  # a rerun repairs it
    assert choose_engine(run)[0] == "onnx"


@pytest.mark.slow
def test_kill_during_compare_then_the_same_command_finishes(shapes_kaggle, tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", shapes_kaggle, "--backbones", "test_efficientnet@random", "--strategies",
            "linear,partial", "--top-k", "1", "--epochs", "1", "--image-size", "64", "--batch-size", "8",
            "--out", out]
    proc = start(*args)
    kill_when(proc, lambda: any(Path(out, "cells").glob("*-linear-s0/cell.json")))
    run_ok(*args)
    assert (out / "leaderboard.md").is_file() and posetune.load(out / "best").classes
