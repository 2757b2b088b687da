"""What posetune loads and where it writes: nothing unpickled, nothing of the user's overwritten or deleted,
no half-written file taken as good."""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY

import posetune
from posetune.errors import UsageError

TRAIN_ARGS = ["--backbone", "test_efficientnet", "--no-pretrained", "--image-size", "64", "--batch-size", "16",
              "--epochs", "1"]


def cli(*args, timeout: int = 300):
    return subprocess.run([sys.executable, "-m", "posetune", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


class Planted:
    """A pickle that, when unpickled, creates a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"model": Planted(marker), "optimizer": {}, "scheduler": {}, "loop": {}}))


def test_a_crafted_checkpoint_runs_nothing_and_names_the_file(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    marker = tmp_path / "pwned"
    plant(run / "checkpoint" / "last.pt", marker)
    proc = cli("train", "--resume", run)
    assert proc.returncode == 2, proc.stderr
    assert not marker.exists()
    assert "last.pt" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


def test_a_crafted_weights_file_runs_nothing(shapes_kaggle, tmp_path):
    marker, weights = tmp_path / "pwned", tmp_path / "weights.pth"
    weights.write_bytes(pickle.dumps(Planted(marker)))
    proc = cli("train", shapes_kaggle, "--backbone", "test_efficientnet", "--weights", weights, "--out", tmp_path / "r",
               *TRAIN_ARGS[3:])
    assert proc.returncode == 2, proc.stderr
    assert not marker.exists() and "weights.pth" in proc.stderr and "Traceback" not in proc.stderr


def test_an_existing_run_is_refused_without_overwrite_and_replaced_with_it(shapes_kaggle, tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = tree_digest(run)
    with pytest.raises(UsageError, match="--overwrite"):
        posetune.train(shapes_kaggle, out=str(run), epochs=1, **TINY)
    assert tree_digest(run) == before
    (run / "notes.txt").write_text("mine")  # the user's own file in the run folder survives an overwrite
    posetune.train(shapes_kaggle, out=str(run), epochs=1, overwrite=True, **TINY)
    assert (run / "notes.txt").read_text() == "mine" and (run / "model.safetensors").is_file()
    assert tree_digest(run)["model.safetensors"] != before["model.safetensors"]


def test_a_folder_that_is_not_a_run_is_never_written_into(shapes_kaggle, tmp_path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"not touched")
    for overwrite in (False, True):
        with pytest.raises(UsageError, match="not a posetune run"):
            posetune.train(shapes_kaggle, out=str(mine), epochs=1, overwrite=overwrite, **TINY)
    assert [p.name for p in mine.iterdir()] == ["holiday.jpg"]


def test_resume_refuses_options_and_restarts_a_run_killed_before_its_first_checkpoint(shapes_kaggle, tmp_path):
    import yaml

    run = tmp_path / "early"
    with pytest.raises(UsageError, match="drop --epochs"):
        posetune.train(resume=str(run), epochs=5)
    options = dict(posetune.options.TrainOptions(data=str(shapes_kaggle), out=str(run), epochs=1, **TINY).__dict__)
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(options))  # all a run killed while decoding leaves
    result = posetune.train(resume=str(run))
    assert (run / "model.safetensors").is_file() and result.metrics["test"]["n"] == 12


def test_a_checkpoint_of_another_config_is_refused(shapes_kaggle, tmp_path):
    import torch

    from posetune.training.checkpoint import CONFIG_KEY

    run = tmp_path / "run"
    posetune.train(shapes_kaggle, out=str(run), epochs=1, **TINY)
    checkpoint = run / "checkpoint" / "last.pt"
    state = torch.load(checkpoint, weights_only=True)
    assert state[CONFIG_KEY]
    state[CONFIG_KEY] = "0" * 64
    torch.save(state, checkpoint)
    with pytest.raises(UsageError, match="another config.yaml"):
        posetune.train(resume=str(run))


def test_files_follow_the_umask_and_orphans_of_killed_writes_are_cleared(shapes_kaggle, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data: x\n")
    orphan = run / ".model.safetensors.abc123.tmp"  # what a kill during an atomic write leaves
    orphan.write_bytes(b"x" * 100)
    posetune.train(shapes_kaggle, out=str(run), epochs=1, overwrite=True, **TINY)
    assert not orphan.exists()
    mask = os.umask(0)
    os.umask(mask)
    assert (run / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_link_back_into_data_is_not_a_class(shapes_kaggle, tmp_path):
    import shutil

    from posetune.data.layouts import discover

    data = tmp_path / "data"
    shutil.copytree(shapes_kaggle / "TRAIN", data)
    (data / "loop").symlink_to(data, target_is_directory=True)
    (data / "again").symlink_to(data / "circle", target_is_directory=True)
    assert discover(data).classes == ["circle", "square", "triangle"]


def test_evaluate_never_overwrites_the_runs_own_plots(tiny_run, shapes_kaggle, tmp_path):
    before = tree_digest(tiny_run)
    metrics = posetune.evaluate(tiny_run, shapes_kaggle, split="train")
    after = tree_digest(tiny_run)
    assert all(after[k] == v for k, v in before.items() if not k.startswith("eval/"))
    assert Path(metrics["confusion_png"]).parent.name.endswith("-train")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "confusion.png").write_bytes(b"my own plot")
    with pytest.raises(UsageError, match="not a posetune evaluation"):
        posetune.evaluate(tiny_run, shapes_kaggle, out=str(mine))
    assert (mine / "confusion.png").read_bytes() == b"my own plot"


def test_an_onnx_file_replaced_after_its_check_is_not_used(onnx_run, tmp_path):
    import shutil

    from posetune.predict import choose_engine

    run = tmp_path / "run"
    shutil.copytree(onnx_run, run)
    assert choose_engine(run)[0] == "onnx"
    with open(run / "model.onnx", "ab") as fh:  # a later, killed export: the sidecar still says ok
        fh.write(b"\0")
    engine, why = choose_engine(run)
    assert engine == "torch" and "parity check" in why


def test_predict_on_a_folder_without_images_is_a_usage_error(tiny_run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    proc = cli("predict", tiny_run, empty)
    assert proc.returncode == 2 and "no images in" in proc.stderr and "Traceback" not in proc.stderr


def test_compare_never_writes_into_or_replaces_what_it_did_not_make(shapes_kaggle, tmp_path):
    from posetune.comparison import link_best

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a posetune compare sweep"):
        posetune.compare(shapes_kaggle, backbones="test_efficientnet@random", out=str(mine))
    assert [p.name for p in mine.iterdir()] == ["thesis.txt"]
    sweep = tmp_path / "sweep"
    (sweep / "cells" / "a-linear-s0").mkdir(parents=True)
    (sweep / "best").mkdir()
    (sweep / "best" / "notes.txt").write_text("a folder of the user's named best")
    rows = [{"status": "ok", "run": str(sweep / "cells" / "a-linear-s0")}]
    with pytest.raises(UsageError, match="not posetune's"):
        link_best(sweep, rows)
    assert (sweep / "best" / "notes.txt").read_text() == "a folder of the user's named best"
    (sweep / "best" / "notes.txt").unlink()
    (sweep / "best").rmdir()
    assert link_best(sweep, rows).resolve() == (sweep / "cells" / "a-linear-s0").resolve()
    assert link_best(sweep, rows).is_symlink()  # its own link is replaced on a rerun
