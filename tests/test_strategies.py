"""One contract for every strategy: it trains, frozen parts stay bit-identical (BN statistics too),
trainable parts change, and the run saves, loads and predicts."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY
from safetensors.torch import load_file

import posetune
from posetune import backbones, strategies
from posetune.errors import UsageError


def _initial_state(seed: int = 0):
    # The random init the run starts from: same seed, same construction order as training.
    torch.manual_seed(seed)
    model, _ = backbones.create_backbone("test_efficientnet", num_classes=3, pretrained=False)
    return model


@pytest.mark.parametrize("strategy", list(strategies.STRATEGIES))
def test_strategy_contract(strategy, shapes_kaggle, tmp_path):
    out = tmp_path / strategy
    result = posetune.train(shapes_kaggle, strategy=strategy, epochs=2, out=str(out), seed=0, **TINY)
    before = _initial_state(0)
    after = load_file(str(out / "model.safetensors"))
    stages = backbones.model_stages(before)
    plan = strategies.make_plan(strategy, stages)
    frozen_stages = set(plan.frozen_at(2))  # frozen for the whole (2-epoch) run
    module_of = backbones.module_stage_map(before, stages)
    for stage in stages:
        changed = [n for n in stage.param_names if not torch.equal(before.state_dict()[n], after[n])]
        if stage.name in frozen_stages:
            assert not changed, f"{strategy}: frozen {stage.name} changed: {changed[:3]}"
        elif stage.name in ("head", "stem") or strategy in ("full", "lp-ft"):
            assert changed, f"{strategy}: trainable {stage.name} did not change"
    # BatchNorm running statistics in frozen stages must not drift.
    for key, value in before.state_dict().items():
        if "running_" in key and module_of.get(key.rsplit(".", 1)[0]) in frozen_stages:
            assert torch.equal(value, after[key]), f"{strategy}: BN statistics drifted in {key}"
    meta = (out / "model.json").read_text()
    assert f'"strategy": "{strategy}"' in meta
    for name in ("config.yaml", "metrics.csv", "skipped.csv", "report.md", "training.png", "confusion_test.png"):
        assert (out / name).is_file(), name
    preds = posetune.load(out).predict([str(p) for p in sorted((shapes_kaggle / "TEST").rglob("*.jpg"))[:4]])
    assert all(p.label in ("circle", "square", "triangle") for p in preds)
    assert result.metrics["test"]["n"] == 12


def test_full_changes_the_stem_and_linear_freezes_everything_but_the_head():
    stages = backbones.model_stages(backbones.build_model("test_resnet", 3))
    assert strategies.make_plan("full", stages).frozen == []
    linear = strategies.make_plan("linear", stages)
    assert set(linear.frozen) == {s.name for s in stages} - {"head"}
    partial = strategies.make_plan("partial", stages, freeze_stages=2)
    assert partial.frozen == ["stem", "stage1", "stage2"]


def test_pretrained_stages_get_a_lower_lr_and_layer_decay_shrinks_it():
    stages = backbones.model_stages(backbones.build_model("test_resnet", 3))
    plan = strategies.make_plan("full", stages, lr=1e-3)
    assert plan.lrs["head"] == 1e-3 and plan.lrs["stem"] == pytest.approx(1e-4)
    decayed = strategies.make_plan("full", stages, lr=1e-3, layer_decay=0.5)
    body = [s.name for s in stages if s.name != "head"]
    lrs = [decayed.lrs[n] for n in body]
    assert lrs == sorted(lrs) and lrs[-1] == pytest.approx(1e-4) and lrs[0] < lrs[-1]


def test_freeze_stages_out_of_range_is_a_clear_error():
    stages = backbones.model_stages(backbones.build_model("test_resnet", 3))
    with pytest.raises(UsageError, match="--freeze-stages 99 is out of range"):
        strategies.make_plan("partial", stages, freeze_stages=99)
    with pytest.raises(UsageError, match="unknown strategy"):
        strategies.make_plan("everything", stages)
