"""Strategy plans: frozen stages, LRs, errors. The training contract of every strategy x weight source is in
test_contracts.py."""

from __future__ import annotations

import dataclasses

import pytest

from posetune import backbones, strategies
from posetune.errors import UsageError


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
    assert plan.lrs["head"] == 1e-3 and plan.lrs["stem"] == pytest.approx(1e-3 * strategies.BASE_LR_RATIO)
    decayed = strategies.make_plan("full", stages, lr=1e-3, layer_decay=0.5, base_lr_ratio=0.1)
    body = [s.name for s in stages if s.name != "head"]
    lrs = [decayed.lrs[n] for n in body]
    assert lrs == sorted(lrs) and lrs[-1] == pytest.approx(1e-4) and lrs[0] < lrs[-1]


def test_train_options_and_plans_share_the_default_base_lr_ratio():
    from posetune.options import TrainOptions

    field = {f.name: f for f in dataclasses.fields(TrainOptions)}["base_lr_ratio"]
    assert field.default == strategies.BASE_LR_RATIO


def test_freeze_stages_out_of_range_is_a_clear_error():
    stages = backbones.model_stages(backbones.build_model("test_resnet", 3))
    with pytest.raises(UsageError, match="--freeze-stages 99 is out of range"):
        strategies.make_plan("partial", stages, freeze_stages=99)
    with pytest.raises(UsageError, match="unknown strategy"):
        strategies.make_plan("everything", stages)


@pytest.mark.parametrize("spec", ["test_efficientnet@random", "pose", "test_efficientnet+pose@random"])
@pytest.mark.parametrize("strategy", list(strategies.STRATEGIES))
def test_every_strategy_plans_every_backbone_kind(strategy, spec):
    """The head (for pose kinds: the landmark embedding + the classifier) always trains; only body stages freeze.
    A `pose` model is all head, trained as `full` by every strategy but linear (training.prepare)."""
    import torch

    from posetune.pose import FEATURE_DIM

    parsed = backbones.parse_spec(spec)
    with torch.device("meta"):
        model = backbones.build_spec_model(parsed, 3, FEATURE_DIM if parsed.uses_pose else None)
    stages = backbones.model_stages(model)
    head = stages[-1]
    assert head.name == "head" and head.n_params > 0
    if parsed.uses_pose:
        assert any(n.startswith("embed.") for n in head.param_names) and all(
            not n.startswith("cnn.") for n in head.param_names)
    plan = strategies.make_plan("full" if parsed.kind == "pose" and strategy != "linear" else strategy, stages)
    assert "head" not in plan.frozen_at(0) and set(plan.frozen) <= {s.name for s in stages[:-1]}
    assert plan.lrs["head"] > 0
