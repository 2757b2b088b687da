"""Exact resume and crash safety: SIGKILL after epoch k + resume == the uninterrupted run;
SIGTERM checkpoints and exits cleanly; every run-folder file is written atomically."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from posetune.io import atomic_write_bytes

# gradual + EMA: the resumed run must also restore which stages are frozen and the EMA weights.
ARGS = ["--backbone", "test_efficientnet", "--no-pretrained", "--image-size", "64", "--batch-size", "8",
        "--strategy", "gradual", "--freeze-epochs", "1", "--epochs", "4", "--patience", "0", "--ema", "--ema-decay", "0.9",
        "--seed", "3"]


def train_cmd(data, out, *extra):
    return [sys.executable, "-m", "posetune", "train", str(data), "--out", str(out), *ARGS, *extra]


def wait_for_epoch(proc, checkpoint, epoch: int, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "training ended before it could be killed"
        if checkpoint.is_file():
            try:
                if torch.load(checkpoint, weights_only=True)["loop"]["epoch"] >= epoch:
                    return
            except Exception:  # noqa: BLE001 - never half-written (atomic), but be patient anyway
                pass
        time.sleep(0.05)
    raise AssertionError("no checkpoint in time")


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(shapes_kaggle, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(train_cmd(shapes_kaggle, full), check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(train_cmd(shapes_kaggle, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_epoch(proc, killed / "checkpoint" / "last.pt", 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists()
    done = subprocess.run([sys.executable, "-m", "posetune", "train", "--resume", str(killed)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    a, b = load_file(str(full / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst <= 1e-6
    assert (full / "metrics.csv").read_text().count("\n") == (killed / "metrics.csv").read_text().count("\n")


def test_sigterm_checkpoints_and_prints_the_resume_command(shapes_kaggle, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(shapes_kaggle, out, "--epochs", "30"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_epoch(proc, out / "checkpoint" / "last.pt", 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert f"posetune train --resume {out}" in err
    state = torch.load(out / "checkpoint" / "last.pt", weights_only=True)
    assert state["loop"]["epoch"] >= 1


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"
    atomic_write_bytes(target, b"old")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new" * 1000)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left behind
