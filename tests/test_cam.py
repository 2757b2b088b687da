"""Class-activation maps: their shape and scale for a CNN and a ViT, `evaluate --cam`'s sheets, the synthetic
renderer's figure masks (the images unchanged), and the background reliance they measure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli
from PIL import Image

import posetune
from posetune.cam import activation_maps, background_reliance, background_share, cam_target
from posetune.data.synth import _image_rng, render_dataset, render_pose
from posetune.data.synth.dataset import MARKER, has_masks, mask_path

# ----------------------------------------------------------------------------- the maps


@pytest.mark.parametrize("arch, layer", [("test_efficientnet", "forward_features"), ("test_vit", "blocks.5 (input)"),
                                         ("test_mambaout", "forward_features")])  # NCHW, tokens, NHWC
def test_maps_cover_the_input_scaled_to_one(arch: str, layer: str):
    import timm
    import torch

    kwargs = {"img_size": 64} if arch == "test_vit" else {}
    model = timm.create_model(arch, pretrained=False, num_classes=3, **kwargs).eval()
    batch = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert cam_target(model, 64).layer_name == layer
    maps, classes = activation_maps(model, batch)
    assert maps.shape == (3, 64, 64) and maps.dtype == np.float32
    assert classes.tolist() == model(batch).argmax(1).tolist()
    assert maps.min() >= 0
    for m in maps:  # each map peaks at 1, unless nothing at all speaks for the class
        assert np.isclose(m.max(), 1.0) or m.max() == 0
    assert np.isclose(maps.max(), 1.0)
    other, _ = activation_maps(model, batch, targets=[(c + 1) % 3 for c in classes])
    assert not np.allclose(other, maps)  # the map depends on the class asked about


def test_the_model_is_left_as_it_was():
    import timm
    import torch

    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    activation_maps(model, torch.randn(2, 3, 64, 64))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training and all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- background reliance


def test_background_reliance_is_higher_for_a_map_that_ignores_the_figure():
    mask = np.zeros((2, 32, 32), bool)
    mask[:, 8:24, 10:20] = True  # the figure: 160 of 1024 pixels
    uniform = np.ones((2, 32, 32), np.float32)
    inside = uniform * mask
    outside = uniform * ~mask
    mixed = inside + 0.1 * outside
    values = {name: background_reliance(cams, mask) for name, cams in
              (("uniform", uniform), ("inside", inside), ("outside", outside), ("mixed", mixed))}
    assert all(0.0 <= v <= 1.0 for v in values.values())
    assert values["inside"] == 0.0 and values["outside"] == 1.0
    assert np.isclose(values["uniform"], 1 - 160 / 1024)
    assert values["inside"] < values["mixed"] < values["uniform"] < values["outside"]
    assert background_share(np.zeros((32, 32)), mask[0]) is None  # a map that points nowhere
    assert background_reliance(np.zeros((2, 32, 32)), mask) is None


# ----------------------------------------------------------------------------- the renderer's masks


def test_masks_leave_the_rendered_images_byte_identical(tmp_path: Path):
    for pose, i in (("tree", 0), ("plank", 3)):
        plain = render_pose(pose, _image_rng(5, "TRAIN", pose, i), 64)
        image, mask = render_pose(pose, _image_rng(5, "TRAIN", pose, i), 64, with_mask=True)
        assert plain.tobytes() == image.tobytes()
        values = set(np.unique(np.asarray(mask)).tolist())
        assert mask.mode == "L" and mask.size == (64, 64) and values == {0, 255}
    opts = dict(poses=["tree", "plank"], per_class=2, test_per_class=1, size=48, seed=3)
    info_plain = render_dataset(tmp_path / "plain", **opts)
    info = render_dataset(tmp_path / "masked", masks=True, **opts)
    images = sorted(p.relative_to(tmp_path / "plain") for p in (tmp_path / "plain").rglob("*.jpg"))
    assert len(images) == 7  # 6 images and the preview
    for rel in images:
        assert (tmp_path / "plain" / rel).read_bytes() == (tmp_path / "masked" / rel).read_bytes(), rel
    assert "masks" not in info_plain and not has_masks(tmp_path / "plain") and has_masks(tmp_path / "masked")
    root = tmp_path / "masked"
    for rel in images:
        if rel.name != "preview.jpg":
            mask = Image.open(mask_path(root, root / rel))
            assert mask.mode == "L" and mask.size == (48, 48) and 0 < np.asarray(mask).mean() < 255
    assert info["masks"] == str(root / "masks")
    render_dataset(root, **opts)  # a rerun without masks must not leave masks that no longer match
    assert not (root / "masks").exists() and (root / MARKER).is_file()


# ----------------------------------------------------------------------------- evaluate --cam


@pytest.fixture(scope="module")
def masked_shapes(shapes_kaggle: Path, tmp_path_factory) -> Path:
    """shapes_kaggle marked as a render with figure masks: the top half of each test image is the 'figure'."""
    root = tmp_path_factory.mktemp("masked") / "data"
    shutil.copytree(shapes_kaggle, root)
    (root / MARKER).write_text("test\n")
    for image in (root / "TEST").rglob("*.jpg"):
        size = Image.open(image).size
        mask = np.zeros(size[::-1], np.uint8)
        mask[: size[1] // 2] = 255
        target = mask_path(root, image)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(target)
    return root


def test_evaluate_cam_writes_the_sheets(tiny_run: Path, shapes_kaggle: Path, tmp_path: Path):
    plain = posetune.evaluate(tiny_run, shapes_kaggle, out=tmp_path / "plain")
    assert "cam" not in plain and not (tmp_path / "plain" / "cam_correct.png").exists()  # off by default
    m = posetune.evaluate(tiny_run, shapes_kaggle, cam=True, out=tmp_path / "ev")
    for key, name in (("cam_top_losses_png", "cam_top_losses.png"), ("cam_correct_png", "cam_correct.png")):
        assert m[key] == str(tmp_path / "ev" / name) and Path(m[key]).stat().st_size > 1000
    assert m["cam"] == {"method": "hirescam", "layer": "forward_features", "class": "predicted"}
    assert "background_reliance" not in m  # no figure masks in these data
    assert m["accuracy"] == plain["accuracy"]  # the maps change nothing else
    saved = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert saved["cam_correct_png"] == m["cam_correct_png"]


def test_cli_evaluate_cam_reports_background_reliance(tiny_run: Path, masked_shapes: Path, tmp_path: Path,
                                                      monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, ["evaluate", tiny_run, masked_shapes, "--cam", "--out",
                                                   tmp_path / "ev", "--json"])
    assert code == 0, err
    m = json.loads(out)
    assert Path(m["cam_top_losses_png"]).is_file() and Path(m["cam_correct_png"]).is_file()
    assert m["background_reliance_n"] == m["n"] and 0.0 <= m["background_reliance"] <= 1.0
    assert m["background_area"] == pytest.approx(0.5, abs=0.05)  # the masks' 'figure' is the top half
    code, out, err = run_cli(monkeypatch, capsys, ["evaluate", tiny_run, masked_shapes, "--cam", "--out",
                                                   tmp_path / "ev"])
    assert code == 0, err
    for words in ("background reliance", "a map with no preference", "hirescam", str(tmp_path / "ev" / "cam_correct.png")):
        assert words in out, words
