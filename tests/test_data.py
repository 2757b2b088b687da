"""Data: every layout, images loaded the way users expect, bad files skipped with their reason."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from helpers import messy_files, write_shapes

from posetune.data.images import ImageError, load_image
from posetune.data.layouts import discover
from posetune.data.pipeline import Preprocess, decode_all
from posetune.errors import UsageError

PRE = Preprocess(size=64, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_messy_files_load_or_skip_with_reason(tmp_path):
    kinds = messy_files(tmp_path / "x", np.random.default_rng(0))
    rotated = load_image(tmp_path / "x" / "rotated.JPG")
    assert rotated.size == (40, 80)  # EXIF orientation applied
    for name in ("cmyk.jpeg", "sixteen.png", "alpha.PNG", "palette.gif", "gray.webp", "plain.bmp", "tiff.TIF"):
        img = load_image(tmp_path / "x" / name)
        assert img.mode == "RGB", name
    sixteen = np.asarray(load_image(tmp_path / "x" / "sixteen.png"))
    assert sixteen.max() > 100  # 16-bit scaled to 8-bit, not clipped to white or black
    reasons = {}
    for name in ("zero.jpg", "truncated.jpg", "corrupt.png"):
        with pytest.raises(ImageError) as err:
            load_image(tmp_path / "x" / name)
        reasons[name] = str(err.value)
    assert reasons == {"zero.jpg": "zero-byte file", "truncated.jpg": "truncated image",
                       "corrupt.png": reasons["corrupt.png"]}
    assert kinds["notes.txt"] == "text"


def test_kaggle_layout_with_messy_files(tmp_path):
    write_shapes(tmp_path, 6, split="TRAIN")
    write_shapes(tmp_path, 2, split="test")
    messy_files(tmp_path / "TRAIN" / "circle", np.random.default_rng(1))
    index = discover(tmp_path, val_fraction=0.2)
    assert index.layout == "split-folders"
    assert index.classes == ["circle", "square", "triangle"]
    skipped = dict(index.skipped)
    assert any(p.endswith("notes.txt") for p in skipped)
    assert not any(".hidden" in s.path for s in index.samples)
    paths = [s.path for s in index.samples]
    images, failed = decode_all(paths, PRE)
    assert {p.rsplit("/", 1)[-1] for p in failed} == {"zero.jpg", "truncated.jpg", "corrupt.png"}
    assert all(img.shape[0] == 3 and min(img.shape[1:]) == PRE.short_side for img in images if img is not None)
    counts = index.counts()
    assert set(counts) == {"train", "val", "test"}
    assert all(counts["val"][c] >= 1 for c in index.classes)


def test_class_folders_csv_and_stratified_val(tmp_path):
    write_shapes(tmp_path / "flat", 10)
    index = discover(tmp_path / "flat", val_fraction=0.2, seed=3)
    assert index.layout == "class-folders"
    assert index.counts()["val"] == {"circle": 2, "square": 2, "triangle": 2}
    again = discover(tmp_path / "flat", val_fraction=0.2, seed=3)
    assert [s.split for s in again.samples] == [s.split for s in index.samples]  # seeded
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "split"])
        for s in index.samples:
            w.writerow([s.path, index.classes[s.label], "test" if s.split == "val" else "train"])
        w.writerow(["missing.jpg", "circle", "train"])
    m = discover(manifest)
    assert m.layout == "csv" and len(m.split("test")) == 6
    assert any("missing" in r for _, r in m.skipped)


def test_class_problems_are_named(tmp_path):
    write_shapes(tmp_path / "a", 3, split="train")
    (tmp_path / "a" / "test" / "extra").mkdir(parents=True)
    (tmp_path / "a" / "test" / "extra" / "x.jpg").write_bytes(b"")
    with pytest.raises(UsageError, match="extra"):
        discover(tmp_path / "a")
    write_shapes(tmp_path / "b", 3)
    (tmp_path / "b" / "empty").mkdir()
    index = discover(tmp_path / "b")
    assert "empty" not in index.classes and any("empty" in w for w in index.warnings)
    write_shapes(tmp_path / "c", 1)
    with pytest.raises(UsageError, match="fewer than 2 training images"):
        discover(tmp_path / "c")
    with pytest.raises(UsageError, match="not found"):
        discover(tmp_path / "nope")


def test_yoga82_lists(tmp_path):
    root = tmp_path / "y82"
    rng = np.random.default_rng(0)
    from helpers import shape_image

    lines = {"train": [], "test": []}
    for i, (folder, l6, l20, l82) in enumerate([("Tree_Pose", 0, 0, 0), ("Downward_Dog", 1, 2, 5)] * 6):
        rel = f"{folder}/{i}.jpg"
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        shape_image("circle", rng).save(root / "images" / rel)
        lines["train" if i < 8 else "test"].append(f"{rel},{l6},{l20},{l82}")
    lines["train"].append("Gone/404.jpg,0,0,0")
    for split, rows in lines.items():
        (root / f"yoga_{split}.txt").write_text("\n".join(rows) + "\n")
    index = discover(root, label_level=82)
    assert index.layout == "yoga82-82"
    assert index.classes == ["Tree_Pose", "Downward_Dog"]
    assert len(index.split("test")) == 4
    assert any("dead URL" in r for _, r in index.skipped)
    assert any("missing" in w for w in index.warnings)


def test_disk_cache_memory_maps_and_skips_the_second_decode(tmp_path, monkeypatch):
    import torch

    import posetune.data.pipeline as pipeline

    write_shapes(tmp_path / "d", 3)
    paths = [str(p) for p in sorted((tmp_path / "d").rglob("*.jpg"))]
    (tmp_path / "d" / "circle" / "bad.jpg").write_bytes(b"")
    paths.append(str(tmp_path / "d" / "circle" / "bad.jpg"))
    in_memory, _ = decode_all(paths, PRE, cache="memory")
    first, failed = decode_all(paths, PRE, cache="disk", cache_dir=str(tmp_path / "cache"))
    assert list(failed) == [paths[-1]]
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == len(paths) - 1
    monkeypatch.setattr(pipeline.Preprocess, "decode", lambda self, p: (_ for _ in ()).throw(AssertionError(p)))
    second, _ = decode_all(paths[:-1], PRE, cache="disk", cache_dir=str(tmp_path / "cache"))
    for a, b, c in zip(in_memory, first, second):
        assert torch.equal(a, b) and torch.equal(b, c)


def test_auto_cache_goes_to_disk_when_memory_is_short(tmp_path, monkeypatch):
    monkeypatch.setenv("POSETUNE_CACHE_MEMORY_GB", "0.000001")
    write_shapes(tmp_path / "d", 2)
    paths = [str(p) for p in sorted((tmp_path / "d").rglob("*.jpg"))]
    images, _ = decode_all(paths, PRE, cache="auto", cache_dir=str(tmp_path / "c"))
    assert len(list((tmp_path / "c").rglob("*.npy"))) == len(paths)
    assert all(img.shape[0] == 3 for img in images)


def test_train_augment_draws_and_crops_exactly_as_torchvision_compose():
    """TrainAugment calls the kernels directly for speed; a seed must still give the pixels (and leave the
    generator where) v2.Compose([RandomResizedCrop, RandomHorizontalFlip]) did, or old runs would not replay."""
    import torch
    from torchvision.transforms import v2

    from posetune.data.pipeline import TrainAugment

    g = torch.Generator().manual_seed(3)
    images = [torch.randint(0, 256, (3, 40, 40 + 12 * (i % 3)), dtype=torch.uint8, generator=g) for i in range(24)]
    compose = v2.Compose([v2.RandomResizedCrop(32, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip()])
    torch.manual_seed(11)
    ours, after_ours = [TrainAugment(32, scale=(0.5, 1.0))(img) for img in images], torch.rand(4)
    torch.manual_seed(11)
    theirs, after_theirs = [compose(img) for img in images], torch.rand(4)
    assert all(a.shape == (3, 32, 32) and torch.equal(a, b) for a, b in zip(ours, theirs))
    assert torch.equal(after_ours, after_theirs)


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_batch_color_jitter_is_torchvisions_colour_maths_per_image(layout):
    """BatchColorJitter on a whole batch = torchvision's adjust_brightness, _contrast, _saturation on each
    image with that image's factors (drawn from the generator in that order), in either memory layout."""
    import torch
    from torchvision.transforms.v2 import functional as F

    from posetune.data.pipeline import BatchColorJitter

    n, strength = 6, 0.2
    x = torch.rand(n, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=getattr(torch, layout + "_format" if layout == "contiguous" else layout))
    ours = BatchColorJitter(strength, strength, strength)(x.clone(), torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    factors = [1 - strength + 2 * strength * torch.rand(n, generator=g) for _ in range(3)]
    for i in range(n):
        img = F.adjust_brightness(x[i], factors[0][i].item())
        img = F.adjust_contrast(img, factors[1][i].item())
        img = F.adjust_saturation(img, factors[2][i].item())
        assert torch.allclose(ours[i], img, atol=1e-5)


def test_trivial_augment_is_a_function_of_the_batch_generator_and_leaves_the_global_stream():
    """--augment trivial: torchvision draws its op from the global generator; posetune seeds that from the
    batch's own generator in a fork, so the same batch seed gives the same pixels (resume stays exact) and
    the global stream (dropout, mixup) is where it would have been without the policy."""
    import torch

    from posetune.data.pipeline import TrainAugment

    images = [torch.randint(0, 256, (3, 40, 44), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
              for i in range(16)]
    trivial = TrainAugment(32, policy="trivial")

    def batch(seed: int) -> list:
        g = torch.Generator().manual_seed(seed)
        return [trivial(img, g) for img in images]

    torch.manual_seed(5)
    first, after = batch(7), torch.rand(3)
    torch.manual_seed(5)
    light = [TrainAugment(32)(img, torch.Generator().manual_seed(7)) for img in images]
    assert torch.equal(after, torch.rand(3))  # the global stream did not move
    again, other = batch(7), batch(8)
    assert all(a.shape == (3, 32, 32) and torch.equal(a, b) for a, b in zip(first, again))
    assert any(not torch.equal(a, b) for a, b in zip(first, other))
    assert any(not torch.equal(a, b) for a, b in zip(first, light))  # the policy changed some pixels


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_normalizer_gives_the_models_layout_and_mean_std_maths_from_either_input_layout(layout):
    """The Normalizer works on the NCHW batch and changes the layout once at the end: the model gets a
    channels_last batch equal to (x / 255 - mean) / std, whatever the layout of the uint8 batch it was given."""
    import torch

    from posetune.data.pipeline import BatchColorJitter
    from posetune.data.preprocessing import PreprocessConfig
    from posetune.devices import Normalizer

    config = PreprocessConfig(size=16, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    x = torch.randint(0, 256, (4, 3, 16, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=getattr(torch, layout + "_format" if layout == "contiguous" else layout))
    mean, std = torch.tensor(config.mean).view(1, 3, 1, 1), torch.tensor(config.std).view(1, 3, 1, 1)
    before = x.clone()
    normalize = Normalizer(config, torch.device("cpu"))
    out = normalize(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, (x.float() / 255 - mean) / std, atol=1e-6)
    jitter = BatchColorJitter()
    jittered = normalize(x, lambda b: jitter(b, torch.Generator().manual_seed(3)))
    expected = (jitter(x.float() / 255, torch.Generator().manual_seed(3)) - mean) / std
    assert jittered.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(jittered, expected, atol=1e-5)
    assert torch.equal(x, before)  # the loader's batch is left as it was
