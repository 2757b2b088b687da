"""Backbones: offline ImageNet weights, any timm name, stages, local weight files, clear errors."""

from __future__ import annotations

import pytest
import torch

import posetune.backbones as backbones
from posetune.errors import UsageError


@pytest.fixture(scope="module")
def lite0_imagenet():
    model, info = backbones.create_backbone("efficientnet_lite0", num_classes=1000)
    return model.eval(), info


def test_offline_lite0_recognises_imagenet_photos(lite0_imagenet):
    """The offline weights are real: skimage's chelsea is a cat, coffee is an espresso."""
    from PIL import Image
    from skimage import data
    from timm.data import create_transform, resolve_data_config

    model, info = lite0_imagenet
    assert info["weight_source"].startswith("offline:")
    transform = create_transform(**resolve_data_config({}, model=model))
    with torch.inference_mode():
        cat = model(transform(Image.fromarray(data.chelsea())).unsqueeze(0)).argmax().item()
        coffee = model(transform(Image.fromarray(data.coffee())).unsqueeze(0)).argmax().item()
    assert 281 <= cat <= 285
    assert coffee == 967


def test_new_head_for_user_classes_keeps_pretrained_base():
    model, info = backbones.create_backbone("efficientnet_lite0", num_classes=5)
    ref, _ = backbones.create_backbone("efficientnet_lite0", num_classes=1000)
    assert model.get_classifier().out_features == 5
    assert torch.equal(model.conv_stem.weight, ref.conv_stem.weight)
    assert model.get_classifier().weight.abs().max() < 0.1  # small init, not timm's +-1/sqrt(n)


@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet", "test_vit", "test_convnext"])
def test_stages_cover_every_parameter_once(name):
    model = backbones.build_model(name, 3)
    stages = backbones.model_stages(model)
    assert stages[0].name == "stem" and stages[-1].name == "head"
    assert [s.name for s in stages[1:-1]] == [f"stage{i}" for i in range(1, len(stages) - 1)]
    names = [n for s in stages for n in s.param_names]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert sum(s.n_params for s in stages) == sum(p.numel() for p in model.parameters())


def test_unknown_backbone_suggests_close_names():
    with pytest.raises(UsageError, match="did you mean.*resnet50"):
        backbones.parse_spec("resnet_50")


def test_spec_forms(tmp_path):
    assert backbones.parse_spec("efficientnet_lite1").source.kind == "offline"
    assert backbones.parse_spec("resnet18@random").source.kind == "random"
    assert backbones.parse_spec("efficientnet_lite0", pretrained=False).source.kind == "random"
    with pytest.raises(UsageError, match="not found"):
        backbones.parse_spec(f"test_resnet@{tmp_path / 'missing.pth'}")


def test_local_weights_file_drops_head_and_names_mismatches(tmp_path):
    from safetensors.torch import save_file

    src = backbones.build_model("test_resnet", 1000)
    path = tmp_path / "w.safetensors"
    save_file(src.state_dict(), str(path))
    model, info = backbones.create_backbone(f"test_resnet@{path}", num_classes=3)
    first = next(iter(src.state_dict()))
    assert torch.equal(model.state_dict()[first], src.state_dict()[first])
    assert any("dropped head keys" in n for n in info["notes"])
    torch.save(backbones.build_model("test_efficientnet", 10).state_dict(), tmp_path / "other.pth")
    with pytest.raises(UsageError, match="do not fit this model.*(missing|unexpected)"):
        backbones.create_backbone("test_resnet", 3, weights=str(tmp_path / "other.pth"))


def test_hub_unreachable_names_the_ways_out(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # no such host: the hub is unreachable
    with pytest.raises(UsageError) as err:
        backbones.create_backbone("resnet18", num_classes=3)
    msg = str(err.value)
    assert "efficientnet_lite" in msg and "--weights" in msg and "--no-pretrained" in msg
    assert "\n" not in msg


def test_describe_backbone_lists_stages():
    info = backbones.describe_backbone("efficientnet_lite0")
    assert info["weight_source"].startswith("offline")
    assert [s["stage"] for s in info["stages"]][:2] == ["stem", "stage1"]
    assert info["stages"][-1]["stage"] == "head"


def test_pose_and_fusion_specs_parse_to_their_kind():
    assert backbones.parse_spec("efficientnet_lite0").kind == "image"
    pose = backbones.parse_spec("pose")
    assert (pose.kind, pose.arch, pose.uses_pose) == ("pose", backbones.POSE_ARCH, True)
    fusion = backbones.parse_spec("efficientnet_lite0+pose")
    assert (fusion.kind, fusion.arch, fusion.source.kind) == ("fusion", "tf_efficientnet_lite0", "offline")
    assert backbones.parse_spec("efficientnet_lite0+pose@random").source.kind == "random"
    for bad, says in (("pose@random", "no image weights"), ("pose+pose", "image backbone"),
                      ("efficientnet_lit0+pose", "did you mean")):
        with pytest.raises(UsageError, match=says):
            backbones.parse_spec(bad)


def test_fusion_keeps_the_pretrained_cnn_and_puts_the_landmark_embedding_in_the_head():
    from posetune.pose import FEATURE_DIM

    model, info = backbones.create_backbone("efficientnet_lite0+pose", num_classes=5, pose_dim=FEATURE_DIM)
    ref, _ = backbones.create_backbone("efficientnet_lite0", num_classes=5)
    assert info["kind"] == "fusion"
    assert torch.equal(model.cnn.conv_stem.weight, ref.conv_stem.weight)
    stages = backbones.model_stages(model)
    head = stages[-1]
    assert head.name == "head" and all(not n.startswith("cnn.") for n in head.param_names)
    assert any(n.startswith("embed.") for n in head.param_names)
    # the CNN's stages are the image backbone's, same names and sizes (so --freeze-stages K means the same)
    assert [(s.name, s.n_params) for s in stages[:-1]] == [(s.name, s.n_params) for s in backbones.model_stages(ref)[:-1]]
    with torch.inference_mode():
        logits = model.eval()(torch.rand(2, 3, 64, 64), torch.zeros(2, FEATURE_DIM))
    assert logits.shape == (2, 5)


def test_pose_backbone_is_all_head_and_ignores_the_pixels():
    from posetune.pose import FEATURE_DIM

    model, info = backbones.create_backbone("pose", num_classes=3, pose_dim=FEATURE_DIM)
    assert info["kind"] == "pose" and info["notes"] == []
    assert [s.name for s in backbones.model_stages(model)] == ["head"]
    pose = torch.randn(4, FEATURE_DIM)
    with torch.inference_mode():
        model.eval()
        assert torch.equal(model(torch.rand(4, 3, 32, 32), pose), model(None, pose))
    with pytest.raises(ValueError, match="pose_dim"):
        backbones.create_backbone("pose", num_classes=3)


def test_backbones_lists_the_pose_kinds():
    from posetune.pose import FEATURE_DIM

    rows = {r["name"]: r for r in backbones.list_backbones(extra=["resnet18"], pose_dim=FEATURE_DIM)}
    assert rows["pose"]["kind"] == "pose" and rows["pose"]["offline_now"]
    assert rows["efficientnet_lite0+pose"]["kind"] == "fusion"
    assert rows["efficientnet_lite0+pose"]["params_m"] > rows["efficientnet_lite0"]["params_m"]
    assert backbones.describe_backbone("efficientnet_lite0+pose", pose_dim=FEATURE_DIM)["stages"][-1]["stage"] == "head"
