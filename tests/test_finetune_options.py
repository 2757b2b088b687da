"""Fine-tuning beyond the three strategies: every option works from the API and the CLI."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import pytest
from helpers import TINY

import posetune
from posetune import backbones, strategies


def test_api_functions_are_not_shadowed_by_submodules():
    for mod in pkgutil.walk_packages(posetune.__path__, "posetune."):
        if not mod.name.startswith("posetune.serve"):
            importlib.import_module(mod.name)
    for name in posetune.__all__:
        if name != "__version__":
            assert callable(getattr(posetune, name)) and not hasattr(getattr(posetune, name), "__path__"), name
            assert type(getattr(posetune, name)).__name__ == "function", name


def test_gradual_unfreezes_from_the_top_with_lower_lrs():
    stages = backbones.model_stages(backbones.build_model("test_resnet", 3))
    plan = strategies.make_plan("gradual", stages, lr=1e-3, freeze_epochs=2, unfreeze_every=1)
    body = [s.name for s in stages if s.name != "head"]
    assert plan.frozen_at(1) == body and plan.frozen_at(2) == body
    assert plan.frozen_at(3) == body[:-1]  # the top stage first
    assert plan.frozen_at(4) == body[:-2]
    assert plan.lrs[body[-1]] > plan.lrs[body[-2]] > plan.lrs[body[0]]
    floor = strategies.make_plan("gradual", stages, freeze_stages=1)
    assert set(floor.frozen_at(99)) == {"stem", "stage1"}  # --freeze-stages bounds the unfreezing


@pytest.mark.parametrize("options", [
    {"strategy": "full", "balance": "weights", "label_smoothing": 0.0},
    {"strategy": "partial", "balance": "sampler", "mixup": 0.2, "cutmix": 1.0},
    {"strategy": "full", "ema": 0.9, "bn": "train", "layer_decay": 0.75},
    {"strategy": "lp-ft", "freeze_stages": 1},
    {"strategy": "linear", "crop_pct": 1.0},
    {"strategy": "partial", "crop_scale": 0.9, "precision": "bf16", "augment": "trivial"},  # bf16 on the CPU
], ids=["weights", "sampler-mixup-cutmix", "ema-bn-layer-decay", "lp-ft-partial", "linear-crop-pct",
        "crop-scale-bf16-trivial"])
def test_options_train_and_save(options, shapes_kaggle, tmp_path):
    result = posetune.train(shapes_kaggle, epochs=2, out=str(tmp_path / "run"), **{**TINY, **options})
    assert len(result.history) == 2 and result.metrics["test"]["n"] == 12
    saved = (tmp_path / "run" / "config.yaml").read_text()
    for key, value in options.items():
        assert f"{key}: {value}" in saved
    # the autocast the run trained in: the asked one, else fp32 (--precision auto is exact fp32 on a CPU)
    assert json.loads((tmp_path / "run" / "model.json").read_text())["precision"] == options.get("precision", "fp32")
    if "ema" in options:
        assert "ema_val_accuracy" in result.history[0]
    if "crop_pct" in options:  # travels with the run folder, so predict / export / serve use it too
        assert posetune.load(tmp_path / "run").preprocess.crop_pct == options["crop_pct"]


@pytest.mark.parametrize("strategy", ["partial", "linear"])  # the fine-tuning loop and the head on cached features
def test_without_a_val_split_the_last_epoch_is_kept_and_nothing_stops_early(strategy, shapes_kaggle, tmp_path):
    """--val-fraction 0: no score to choose an epoch on, so every epoch runs and the last one's weights are saved
    (before, each epoch tied epoch 1 at "no score", patience ran out and epoch 1's weights were kept)."""
    run = tmp_path / "run"
    result = posetune.train(shapes_kaggle, strategy=strategy, epochs=3, patience=1, val_fraction=0.0, out=str(run), **TINY)
    assert len(result.history) == 3 and [row["best"] for row in result.history] == [True] * 3
    assert json.loads((run / "model.json").read_text())["best_epoch"] == 3


def test_bad_option_values_are_clear(shapes_kaggle, tmp_path):
    from posetune.errors import UsageError

    with pytest.raises(UsageError, match="--balance"):
        posetune.train(shapes_kaggle, balance="oversample", out=str(tmp_path / "a"), **TINY)
    with pytest.raises(UsageError, match="--bn"):
        posetune.train(shapes_kaggle, bn="sometimes", out=str(tmp_path / "b"), **TINY)
    with pytest.raises(UsageError, match="--crop-pct"):
        posetune.train(shapes_kaggle, crop_pct=2.0, out=str(tmp_path / "c"), **TINY)


def test_lr_find_cli_suggests_an_lr_and_plots(shapes_kaggle, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "posetune", "lr-find", str(shapes_kaggle), "--backbone", "test_resnet",
                           "--no-pretrained", "--image-size", "64", "--batch-size", "8", "--steps", "30",
                           "--out", str(tmp_path), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert 1e-7 <= result["suggested_lr"] <= 1.0
    assert len(result["lrs"]) == len(result["smoothed"]) >= 10
    assert result["lrs"] == sorted(result["lrs"])
    assert (tmp_path / "lr_find.png").is_file()


def test_tta_is_reported_beside_the_plain_score(tiny_run, shapes_kaggle):
    metrics = posetune.evaluate(tiny_run, shapes_kaggle, tta=True)
    assert set(metrics["tta"]) >= {"accuracy", "macro_f1"} and metrics["tta"]["n"] == metrics["n"]
    preds = posetune.load(tiny_run).predict(sorted(str(p) for p in (shapes_kaggle / "TEST").rglob("*.jpg"))[:3],
                                            tta=True)
    assert all(abs(sum(p for _, p in x.top_k) - 1) < 1e-3 for x in preds if len(x.top_k) == 3)


@pytest.mark.parametrize("native, asked, expected, warns", [
    (True, "auto", "fp32", False),  # auto stays exact fp32 on a CPU, native bf16 or not
    (True, "bf16", "bf16", False),
    (False, "bf16", "bf16", True),  # emulated bf16: said before training, still run as asked
    (False, "fp32", "fp32", False),
    (None, "bf16", "bf16", False),  # no /proc/cpuinfo (macOS, Windows): unknown, no warning
])
def test_training_precision_on_the_cpu(native, asked, expected, warns, monkeypatch):
    import torch

    from posetune import devices

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    precision, warning = devices.training_precision(torch.device("cpu"), asked)
    assert precision == expected and (warning is not None) == warns
    if warns:
        assert "--precision auto" in warning
