"""The CLI as a user meets it: help with examples, exit codes, JSON, CSV, config files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = ["train", "evaluate", "predict", "backbones", "demo", "data synth", "data check", "export", "serve"]


def posetune(*args, check=False):
    proc = subprocess.run([sys.executable, "-m", "posetune", *map(str, args)], capture_output=True, text=True,
                          timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    proc = posetune(*command.split(), "--help", check=True)
    assert "Example" in proc.stdout


@pytest.mark.parametrize("args", [["train", "DATA", "--epoch", "3"], ["evaluate", "RUN"], ["trian"],
                                  ["train", "DATA", "--epochs", "two"], ["predict", "RUN"]])
def test_usage_errors_print_typers_usage_and_exit_2(args):
    """Typer's own errors (unknown option or command, missing argument, wrong type): its usage message, exit 2."""
    proc = posetune(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Usage:" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    proc = posetune("train", tmp_path / "missing")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "DATA not found" in proc.stderr
    proc = posetune("train", tmp_path, "--backbone", "resnet_50")
    assert proc.returncode == 2 and "did you mean" in proc.stderr
    proc = posetune("evaluate", tmp_path, tmp_path)
    assert proc.returncode == 2 and "not a posetune run folder" in proc.stderr


def test_quick_exit_keeps_exit_codes_and_output(tiny_run, tmp_path):
    """predict/evaluate leave through os._exit after flushing (no teardown): codes and output survive."""
    proc = posetune("predict", tiny_run, tmp_path / "missing.jpg")
    assert proc.returncode == 2 and "no such file or folder" in proc.stderr
    image = next((tiny_run.parent).rglob("*.png"), None) or next(tiny_run.glob("*.png"))
    proc = posetune("predict", tiny_run, image, "--json", check=True)
    assert len(json.loads(proc.stdout)) == 1


def test_evaluate_json(tiny_run, shapes_kaggle):
    proc = posetune("evaluate", tiny_run, shapes_kaggle, "--json", check=True)
    out = json.loads(proc.stdout)
    for key in ("accuracy", "macro_f1", "per_class", "confusion_matrix", "classes", "n", "balanced_accuracy"):
        assert key in out
    assert out["n"] == 12 and len(out["confusion_matrix"]) == 3
    png = Path(out["confusion_png"])  # beside the run's own plots, never over them
    assert png.is_file() and png.parent.parent == tiny_run / "eval" and png.parent.name.endswith("-test")
    assert json.loads((png.parent / "evaluation.json").read_text())["n"] == 12


def test_predict_folder_with_a_bad_file_and_csv(tiny_run, shapes_kaggle, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted((shapes_kaggle / "TEST" / "square").glob("*.jpg"))[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not really a jpeg")
    out_csv = tmp_path / "pred.csv"
    proc = posetune("predict", tiny_run, folder, "--top-k", "2", "--csv", out_csv, check=True)
    assert "broken.jpg" in proc.stdout + proc.stderr
    rows = list(csv.DictReader(open(out_csv)))
    assert list(rows[0])[:5] == ["path", "prediction", "probability", "top1", "p1"]
    assert len(rows) == 4 and sum(1 for r in rows if r["prediction"]) == 3
    proc = posetune("predict", tiny_run, folder, "--json", check=True)
    preds = json.loads(proc.stdout)
    assert len(preds) == 4 and sum(1 for p in preds if p["error"]) == 1


def test_config_file_and_flags_override(shapes_kaggle, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("backbone: test_resnet\npretrained: false\nimage_size: 64\nstrategy: linear\nepochs: 50\n")
    out = tmp_path / "run"
    proc = posetune("train", shapes_kaggle, "--config", config, "--epochs", "2", "--out", out, "--json", check=True)
    result = json.loads(proc.stdout)
    assert result["run"] == str(out)
    saved = (out / "config.yaml").read_text()
    assert "backbone: test_resnet" in saved and "epochs: 2" in saved
    config.write_text("bogus_option: 1\n")
    proc = posetune("train", shapes_kaggle, "--config", config)
    assert proc.returncode == 2 and "bogus_option" in proc.stderr


def test_backbones_table_and_stages():
    rows = json.loads(posetune("backbones", "--json", check=True).stdout)
    lite0 = next(r for r in rows if r["name"] == "efficientnet_lite0")
    assert lite0["offline_now"] and lite0["weight_source"].startswith("offline")
    info = json.loads(posetune("backbones", "test_vit", "--json", check=True).stdout)
    assert info["stages"][0]["stage"] == "stem"


def test_missing_training_extra_is_a_one_line_error(shapes_kaggle):
    """A light install (posetune[onnx]) has no torch: `train` names the extra to install."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'timm', 'torchvision'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"sys.argv = ['posetune', 'train', {str(shapes_kaggle)!r}]\n"
        "from posetune.cli import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "pip install 'posetune[train]'" in proc.stderr and proc.stderr.count("\n") == 1
