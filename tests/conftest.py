"""Shared fixtures: tiny generated image folders and a tiny trained run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import LANDMARK_BACKBONES, POSE_RUN_POSES, POSE_RUN_SIZE, TINY, write_shapes

# pytest -n N (xdist, as make test runs it): each worker, and what it spawns, gets its share of the cores for torch's
# ops, so N workers do not oversubscribe them (set before torch is imported; a user's own setting stays)
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))


@pytest.fixture(scope="session")
def shapes_kaggle(tmp_path_factory) -> Path:
    """Kaggle layout: DATA/TRAIN/<class>, DATA/TEST/<class>."""
    root = tmp_path_factory.mktemp("kaggle")
    write_shapes(root, 12, seed=1, split="TRAIN")
    write_shapes(root, 4, seed=2, split="TEST")
    return root


@pytest.fixture(scope="session")
def tiny_run(shapes_kaggle, tmp_path_factory) -> Path:
    """A real (random-init, tiny) run folder for evaluate/predict/export tests."""
    import posetune

    out = tmp_path_factory.mktemp("runs") / "tiny"
    posetune.train(shapes_kaggle, strategy="partial", epochs=2, out=str(out), **TINY)
    return out


@pytest.fixture(scope="session")
def rendered_poses(tmp_path_factory) -> Path:
    """Still renders of synthetic scenes (seeds 0-5) of three poses, one class folder each."""
    import numpy as np

    from posetune.data.synth import render_pose

    root = tmp_path_factory.mktemp("posedata")
    for seed in range(6):
        for pose in POSE_RUN_POSES:
            (root / pose).mkdir(exist_ok=True)
            render_pose(pose, np.random.default_rng(seed), size=POSE_RUN_SIZE).save(root / pose / f"{seed}.png")
    return root


@pytest.fixture(scope="session")
def pose_run(rendered_poses, tmp_path_factory) -> Path:
    """A linear head on pretrained efficientnet_lite0 (~15 s), trained on rendered_poses: the video and live tests
    play sessions of those scenes (seed 2), so they check the video path, not how well the model generalises."""
    import posetune

    out = tmp_path_factory.mktemp("runs") / "pose"
    posetune.train(rendered_poses, backbone="efficientnet_lite0", image_size=POSE_RUN_SIZE, batch_size=16, epochs=8,
                   strategy="linear", lr=1e-2, out=str(out))
    return out


def _calibrated_export(run: Path) -> Path:
    """model.json's temperature set to 0.25 (sharper than the raw logits), then RUN/model.onnx exported after the
    change: both engines must apply it, the ONNX one from the export's metadata alone."""
    import json

    import posetune

    meta = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**meta, "temperature": 0.25}))
    posetune.export(run, format="onnx")
    return run


def _calibrated_landmark_run(kind: str, rendered_poses: Path, tmp_path_factory) -> Path:
    """A tiny random-init run of ``kind`` (LANDMARK_BACKBONES) on rendered_poses (~5 s), calibrated and exported."""
    pytest.importorskip("mediapipe", reason="posetune[pose] not installed")
    import posetune

    out = tmp_path_factory.mktemp("runs") / f"calibrated-{kind}"
    posetune.train(rendered_poses, backbone=LANDMARK_BACKBONES[kind], image_size=64, batch_size=16, epochs=3,
                   strategy="linear", lr=1e-2, out=str(out))
    return _calibrated_export(out)


@pytest.fixture(scope="session")
def calibrated_pose_run(rendered_poses, tmp_path_factory) -> Path:
    return _calibrated_landmark_run("pose", rendered_poses, tmp_path_factory)


@pytest.fixture(scope="session")
def calibrated_fusion_run(rendered_poses, tmp_path_factory) -> Path:
    return _calibrated_landmark_run("fusion", rendered_poses, tmp_path_factory)


@pytest.fixture(scope="session")
def onnx_run(tiny_run, tmp_path_factory) -> Path:
    """A copy of tiny_run with RUN/model.onnx exported (batch 1): the onnx engine, serve and export tests."""
    import shutil

    import posetune

    out = tmp_path_factory.mktemp("runs") / "tiny-onnx"
    shutil.copytree(tiny_run, out)
    posetune.export(out, format="onnx")
    return out


@pytest.fixture(scope="session")
def calibrated_run(tiny_run, tmp_path_factory) -> Path:
    """A copy of tiny_run whose model.json holds temperature 0.25, exported to ONNX after the change."""
    import shutil

    out = tmp_path_factory.mktemp("runs") / "tiny-calibrated"
    shutil.copytree(tiny_run, out)
    return _calibrated_export(out)


def pytest_collection_modifyitems(items) -> None:
    """Tests marked slow run first: pytest-xdist hands tests out in collection order, so a 50 s test collected
    near the end kept one worker busy while the other had nothing left (longest first balances the two)."""
    items.sort(key=lambda item: "slow" not in item.keywords)  # stable: each group keeps its order


def pytest_terminal_summary(terminalreporter) -> None:
    """Name the tests marked slow and how long each took, so a slow suite says where its time went."""
    slow = [r for r in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
            if r.when == "call" and "slow" in r.keywords]
    if slow:
        terminalreporter.write_sep("-", "slow tests (marked @pytest.mark.slow; run by default)")
        for report in slow:
            terminalreporter.write_line(f"{report.duration:6.1f} s  {report.nodeid}")
