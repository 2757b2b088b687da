"""Export to ONNX / TorchScript with parity checks, the onnx engine, and predicting without torch installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import CALIBRATED_RUNS
from PIL import Image

import posetune
from posetune.errors import CheckFailed, UsageError


def cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run `posetune ARGS` in this process through main() (errors -> exit codes), return (code, stdout, stderr)."""
    from posetune.cli import main

    monkeypatch.setattr(sys, "argv", ["posetune", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def test_onnx_export_carries_classes_preprocessing_and_parity(onnx_run: Path) -> None:
    import onnx

    meta = json.loads(onnx.load(str(onnx_run / "model.onnx")).metadata_props[0].value)
    model_json = json.loads((onnx_run / "model.json").read_text())
    assert meta["classes"] == model_json["classes"]
    assert meta["preprocessing"] == model_json["preprocessing"]
    assert meta["input_shape"] == [1, 3, 64, 64]
    sidecar = json.loads((onnx_run / "model.onnx.json").read_text())
    assert sidecar["ok"] and sidecar["classes"] == model_json["classes"]
    for kind in ("random", "images"):
        assert sidecar["parity"][kind]["top1_agreement"] == 1.0
        assert sidecar["parity"][kind]["max_abs_delta"] < 1e-4
    # The numpy preprocessing of the onnx engine gives the torch engine's exact input.
    assert sidecar["parity"]["images"]["input_max_abs_delta"] < 1e-6


def test_torchscript_export_and_dynamic_batch_onnx(tiny_run: Path, tmp_path: Path) -> None:
    import torch

    result = posetune.export(tiny_run, format="torchscript", out=tmp_path / "model.pt")
    assert result["ok"] and result["parity"]["images"]["top1_agreement"] == 1.0
    extra = {"posetune.json": ""}
    module = torch.jit.load(str(tmp_path / "model.pt"), _extra_files=extra)
    assert json.loads(extra["posetune.json"])["classes"] == ["circle", "square", "triangle"]
    assert module(torch.zeros(3, 3, 64, 64)).shape == (3, 3)

    result = posetune.export(tiny_run, format="onnx", dynamic_batch=True, out=tmp_path / "dyn.onnx", n_random=3)
    assert result["input_shape"][0] == "batch" and result["ok"]
    from posetune.predict.onnx_engine import OnnxClassifier

    clf = OnnxClassifier(tmp_path / "dyn.onnx")
    assert clf.fixed_batch is None
    assert clf.logits(np.zeros((5, 3, 64, 64), np.float32)).shape == (5, 3)


def test_onnx_engine_agrees_with_torch_engine(onnx_run: Path, shapes_kaggle: Path) -> None:
    files = sorted(str(p) for p in (shapes_kaggle / "TEST").rglob("*.jpg"))
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (50, 90, 3), dtype=np.uint8)  # not square, smaller than the resize target
    items = [*files, Image.fromarray(array).convert("RGBA"), array, str(onnx_run / "missing.jpg")]
    torch_preds = posetune.load(onnx_run).predict(items, top_k=3, batch_size=4)
    onnx_preds = posetune.load(onnx_run, engine="onnx").predict(items, top_k=3, batch_size=4)
    assert len(onnx_preds) == len(items)
    assert [p.label for p in onnx_preds] == [p.label for p in torch_preds]
    for t, o in zip(torch_preds, onnx_preds):
        assert o.probability == pytest.approx(t.probability, abs=1e-5)
        assert [c for c, _ in o.top_k] == [c for c, _ in t.top_k] or max(p for _, p in t.top_k) - min(
            p for _, p in t.top_k) < 1e-5  # an exact tie may order either way
    assert onnx_preds[-1].error and not onnx_preds[-1].label


@pytest.mark.parametrize("shape", [(67, 67), (40, 90), (300, 75), (64, 64)])
@pytest.mark.parametrize("crop_pct", [0.875, 1.0, 1.15])
def test_numpy_preprocessing_matches_torch_preprocess(shape, crop_pct) -> None:
    import torch

    from posetune.data.images import resize_short_side
    from posetune.data.pipeline import Preprocess
    from posetune.devices import Normalizer
    from posetune.predict.onnx_engine import ImageTransform

    cfg = {"input_size": [3, 64, 64], "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3],
           "interpolation": "bilinear", "crop_pct": crop_pct}
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8))
    ref, ours = Preprocess.from_config(cfg), ImageTransform.from_config(cfg)
    resized = np.asarray(resize_short_side(img, ref.short_side, ref.interpolation))
    crop = ref.eval_crop(torch.from_numpy(resized.copy()).permute(2, 0, 1))[None]
    expected = Normalizer(ref, torch.device("cpu"))(crop).numpy()  # what the torch engine feeds its model
    assert ours.short_side == ref.short_side
    np.testing.assert_allclose(ours([img]), expected, atol=1e-6)


def test_compare_flags_flips_and_gaps() -> None:
    from posetune.exporting import parity_check

    ref = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]], np.float32)
    assert parity_check(ref, ref + 1e-6)["problems"] == []
    flipped = parity_check(ref, ref[:, ::-1].copy(), ["a.jpg", "b.jpg"])
    assert flipped["top1_agreement"] == 0.5 and "a.jpg" in flipped["problems"][0]
    assert any("tolerance" in p for p in parity_check(ref, ref + np.float32(0.5))["problems"])


def test_cli_export_json_exit_codes(tiny_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    code, out, _ = cli(monkeypatch, capsys, "export", tiny_run, "--out", tmp_path / "m.onnx", "--json")
    result = json.loads(out)  # stdout carries only the JSON
    assert code == 0 and result["ok"] and result["parity"]["random"]["top1_agreement"] == 1.0

    code, _, err = cli(monkeypatch, capsys, "export", tiny_run, "--format", "tflite")
    assert code == 2 and "--format must be one of onnx, torchscript" in err
    code, _, err = cli(monkeypatch, capsys, "export", tmp_path / "nope")
    assert code == 2 and "run folder not found" in err
    code, _, err = cli(monkeypatch, capsys, "export", tiny_run, "--format", "torchscript", "--opset", "17")
    assert code == 2 and "--opset" in err

    # A real disagreement (the exported logits reversed) is exit 1, and --json still says what happened.
    import posetune.exporting as exporting

    honest = exporting.parity_check
    monkeypatch.setattr(exporting, "parity_check", lambda ref, got, names=None: honest(ref, got[:, ::-1].copy(), names))
    code, out, err = cli(monkeypatch, capsys, "export", tiny_run, "--out", tmp_path / "bad.onnx", "--json")
    assert code == 1 and "top-1 differs" in err and json.loads(out)["ok"] is False
    with pytest.raises(CheckFailed):
        exporting.export(tiny_run, out=tmp_path / "bad2.onnx", n_random=2, n_images=2)


def test_cli_predict_engine_onnx(onnx_run: Path, shapes_kaggle: Path, monkeypatch, capsys) -> None:
    folder = shapes_kaggle / "TEST" / "circle"
    code, out, _ = cli(monkeypatch, capsys, "predict", onnx_run, folder, "--engine", "onnx", "--json")
    onnx_rows = json.loads(out)
    code_t, out_t, err_t = cli(monkeypatch, capsys, "predict", onnx_run, folder, "--engine", "torch", "--json")
    assert code == code_t == 0
    assert [r["prediction"] for r in onnx_rows] == [r["prediction"] for r in json.loads(out_t)]
    code, _, err = cli(monkeypatch, capsys, "predict", onnx_run, folder, "--engine", "tensorrt")
    assert code == 2 and "--engine must be one of auto, torch, onnx" in err


def test_auto_engine_uses_a_matching_onnx_export_only(tiny_run: Path, onnx_run: Path, shapes_kaggle: Path,
                                                      tmp_path: Path, monkeypatch, capsys) -> None:
    from posetune.predict import choose_engine

    assert choose_engine(onnx_run, "auto", "cpu")[0] == "onnx"
    assert choose_engine(onnx_run, "auto", "cpu", tta=True)[0] == "torch"
    assert choose_engine(onnx_run, "auto", "cuda")[0] == "torch"
    engine, why = choose_engine(tiny_run, "auto", "cpu")
    assert engine == "torch" and "posetune export" in why
    stale = tmp_path / "stale"
    shutil.copytree(onnx_run, stale)
    sidecar = json.loads((stale / "model.onnx.json").read_text())
    sidecar["source_sha256"] = "0" * 64  # as if the run was retrained after the export
    (stale / "model.onnx.json").write_text(json.dumps(sidecar))
    engine, why = choose_engine(stale, "auto", "cpu")
    assert engine == "torch" and "stale" in why
    assert posetune.load(stale, engine="auto", device="cpu").engine == "torch"
    # Corrupt weights are a one-line error naming the file, not a deserialiser traceback.
    with open(stale / "model.safetensors", "ab") as fh:
        fh.write(b" ")
    with pytest.raises(UsageError, match="model.safetensors"):
        posetune.load(stale, engine="torch", device="cpu")
    # The CLI's default is auto, and it says which engine it picked.
    code, out, err = cli(monkeypatch, capsys, "predict", onnx_run, shapes_kaggle / "TEST" / "circle", "--json")
    assert code == 0 and "engine: onnx" in err and json.loads(out)


def test_onnx_engine_refuses_missing_or_stale_exports(tiny_run: Path, onnx_run: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(onnx_run, plain, ignore=shutil.ignore_patterns("model.onnx*"))
    with pytest.raises(UsageError, match="posetune export"):
        posetune.load(plain, engine="onnx")
    stale = tmp_path / "stale"
    shutil.copytree(onnx_run, stale)
    shutil.copy(tiny_run / "model.safetensors", stale / "model.safetensors")
    with open(stale / "model.safetensors", "ab") as fh:  # a retrained model: other bytes
        fh.write(b" ")
    with pytest.raises(UsageError, match="re-export"):
        posetune.load(stale, engine="onnx")
    # The .onnx file alone is a complete deployment: classes and preprocessing are inside it.
    alone = tmp_path / "deploy"
    alone.mkdir()
    shutil.copy(onnx_run / "model.onnx", alone / "pose.onnx")
    assert posetune.load(alone / "pose.onnx", engine="onnx").classes == ["circle", "square", "triangle"]


NO_TORCH = textwrap.dedent("""
    import importlib.abc, json, sys

    class Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "timm", "torchvision"}:
                raise ImportError(f"{name} is blocked: the onnx engine must not need it")
            return None

    sys.meta_path.insert(0, Blocked())
    run, image = sys.argv[1], sys.argv[2]

    import posetune
    preds = posetune.load(run, engine="onnx").predict([image], top_k=2)

    from fastapi.testclient import TestClient
    from posetune.serve.app import create_app
    client = TestClient(create_app(run, engine="onnx"))
    served = client.post("/predict", files={"file": ("x.jpg", open(image, "rb").read(), "image/jpeg")}).json()

    from posetune.cli import main
    sys.argv = ["posetune", "predict", run, image, "--engine", "onnx", "--json"]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, exc.code
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "timm", "torchvision"})
    print(json.dumps({"api": preds[0].label, "served": served["prediction"], "loaded": loaded}))
""")


@pytest.mark.parametrize("kind", ["image", "pose", "fusion"])
def test_onnx_predicts_and_serves_with_torch_blocked(kind: str, request, shapes_kaggle: Path,
                                                     rendered_poses: Path) -> None:
    """The API, the server and the CLI on the ONNX engine import no torch: a pose/fusion run's landmarks come
    from mediapipe, its head (and CNN) from ONNX Runtime."""
    run = request.getfixturevalue("onnx_run" if kind == "image" else CALIBRATED_RUNS[kind])
    folder = shapes_kaggle / "TEST" / "square" if kind == "image" else rendered_poses / "tree"
    image = sorted(folder.iterdir())[0]
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(run), str(image)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli_rows, summary = proc.stdout.rsplit("\n", 2)[0], json.loads(proc.stdout.strip().splitlines()[-1])
    expected = posetune.load(run).predict([str(image)])[0].label
    assert summary == {"api": expected, "served": expected, "loaded": []}
    assert json.loads(cli_rows)[0]["prediction"] == expected


@pytest.mark.parametrize("kind", ["image", "pose", "fusion"])
def test_onnx_export_without_onnxscript_uses_the_torchscript_exporter(kind: str, request, tmp_path: Path,
                                                                      monkeypatch) -> None:
    run = request.getfixturevalue("tiny_run" if kind == "image" else CALIBRATED_RUNS[kind])
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` now raises ImportError
    result = posetune.export(run, out=tmp_path / "legacy.onnx", n_random=2, n_images=4)
    assert result["exporter"] == "torch.onnx.export(dynamo=False)"
    assert result["ok"] and result["parity"]["images"]["top1_agreement"] == 1.0
    assert posetune.load(tmp_path / "legacy.onnx", engine="onnx").predict([np.zeros((80, 80, 3), np.uint8)])[0].label


@pytest.fixture(scope="module", params=["pose", "fusion"])
def landmark_run(request) -> Path:
    """Each kind of run that uses landmarks, calibrated and exported to ONNX (conftest)."""
    return request.getfixturevalue(CALIBRATED_RUNS[request.param])


def test_landmark_export_takes_the_models_inputs_with_a_dynamic_batch(landmark_run: Path) -> None:
    """fusion: images + landmark features; pose: the features alone; both any batch size. The sidecar and the
    metadata record the kind, and parity held on real renders and on a blank image (nobody: zero features)."""
    import onnx

    model_json = json.loads((landmark_run / "model.json").read_text())
    kind, pose_dim = model_json["kind"], model_json["pose_dim"]
    proto = onnx.load(str(landmark_run / "model.onnx"))
    graph_inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    expected = {"pose": [[pose_dim]], "fusion": [[3, 64, 64], [pose_dim]]}[kind]
    assert [dims[1:] for dims in graph_inputs.values()] == expected
    assert all(isinstance(dims[0], str) for dims in graph_inputs.values())  # the batch axis is symbolic
    meta = json.loads(proto.metadata_props[0].value)
    assert (meta["kind"], meta["pose_dim"], list(meta["inputs"])) == (kind, pose_dim, list(graph_inputs))
    sidecar = json.loads((landmark_run / "model.onnx.json").read_text())
    assert sidecar["ok"] and sidecar["kind"] == kind
    for check in sidecar["parity"].values():
        assert check["top1_agreement"] == 1.0 and check["max_abs_delta"] < 1e-4
    images = sidecar["parity"]["images"]
    assert images["no_person"] >= 1 and images["input_max_abs_delta"] < 1e-6  # the blank image at least


def test_landmark_engines_agree_on_a_person_and_on_nobody(landmark_run: Path, rendered_poses: Path) -> None:
    """The ONNX engine decodes the torch engine's triple (pixels, features, landmarks or None) with numpy, and both
    give the same labels and probabilities on the astronaut photo, a blank image and renders."""
    from skimage.data import astronaut

    photo, blank = astronaut(), np.full((120, 90, 3), 255, np.uint8)
    renders = [str(p) for p in sorted(rendered_poses.rglob("*.png"))[:5]]
    items = [photo, blank, Image.fromarray(photo), *renders, str(landmark_run / "missing.jpg")]
    torch_clf, onnx_clf = posetune.load(landmark_run), posetune.load(landmark_run, engine="onnx")
    assert onnx_clf.engine == "onnx" and onnx_clf.uses_pose
    pixels, features, found = onnx_clf.decode(photo)
    size = onnx_clf.preprocess.size
    assert pixels.shape == (size, size, 3) and pixels.dtype == np.uint8
    assert features.dtype == np.float32 and found is not None and found.image.shape == (33, 4)
    np.testing.assert_array_equal(features, torch_clf.decode(photo)[1].numpy())
    _, nobody, missing = onnx_clf.decode(blank)
    assert missing is None and not nobody.any()
    torch_preds, onnx_preds = torch_clf.predict(items, batch_size=3), onnx_clf.predict(items, batch_size=3)
    assert [p.label for p in onnx_preds] == [p.label for p in torch_preds]
    for t, o in zip(torch_preds[:-1], onnx_preds[:-1]):
        np.testing.assert_allclose(o.probabilities, t.probabilities, atol=1e-4)
    assert onnx_preds[-1].error and torch_preds[-1].error


def test_landmark_torchscript_export_and_timm_refused(landmark_run: Path, tmp_path: Path, monkeypatch,
                                                      capsys) -> None:
    import torch

    result = posetune.export(landmark_run, format="torchscript", out=tmp_path / "model.pt", n_images=4)
    assert result["ok"] and result["dynamic_batch"] and result["parity"]["images"]["no_person"] >= 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream, still loadable
        module = torch.jit.load(str(tmp_path / "model.pt"))
    pose = torch.zeros(3, posetune.load(landmark_run).meta.pose_dim)
    inputs = (pose,) if result["kind"] == "pose" else (torch.zeros(3, 3, 64, 64), pose)
    assert module(*inputs).shape == (3, 3)
    code, _, err = cli(monkeypatch, capsys, "export", landmark_run, "--format", "timm", "--out", tmp_path / "timm")
    assert code == 2 and "--format onnx" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "timm").exists()


def test_auto_engine_takes_a_landmark_export_and_tta_stays_refused(landmark_run: Path, rendered_poses: Path,
                                                                   monkeypatch, capsys) -> None:
    from posetune.predict import choose_engine

    assert choose_engine(landmark_run, "auto", "cpu")[0] == "onnx"
    code, out, err = cli(monkeypatch, capsys, "predict", landmark_run, rendered_poses / "tree", "--json")
    assert code == 0 and "engine: onnx" in err and len(json.loads(out)) == 6
    code, _, err = cli(monkeypatch, capsys, "predict", landmark_run, rendered_poses / "tree", "--tta")
    assert code == 2 and "--tta" in err and len(err.strip().splitlines()) == 1
    from fastapi.testclient import TestClient

    from posetune.serve.app import create_app

    client = TestClient(create_app(landmark_run, engine="auto", device="cpu"))
    photo = (rendered_poses / "tree" / "0.png").read_bytes()
    answer = client.post("/predict", files={"file": ("tree.png", photo, "image/png")}).json()
    assert answer["engine"] == "onnx" and answer["prediction"] in posetune.load(landmark_run).classes


def test_landmark_onnx_engine_without_mediapipe_names_the_extra(landmark_run: Path, rendered_poses: Path,
                                                                monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # `import mediapipe` now raises ImportError
    with pytest.raises(UsageError, match=r"posetune\[pose\]"):
        posetune.load(landmark_run, engine="onnx")
    code, _, err = cli(monkeypatch, capsys, "predict", landmark_run, rendered_poses / "tree", "--engine", "onnx")
    assert code == 2 and "posetune[pose]" in err and len(err.strip().splitlines()) == 1


def test_landmark_export_of_another_feature_size_or_kind_is_refused(calibrated_fusion_run: Path, tmp_path: Path) -> None:
    """Metadata that does not fit this posetune (another landmark feature size, an unknown kind): one line that says
    to re-export, not a shape error from ONNX Runtime on the first image."""
    import onnx

    for key, value, says in (("pose_dim", 7, "landmark features; re-export"), ("kind", "hands", "kind 'hands'")):
        proto = onnx.load(str(calibrated_fusion_run / "model.onnx"))
        meta = json.loads(proto.metadata_props[0].value)
        proto.metadata_props[0].value = json.dumps({**meta, key: value})
        onnx.save(proto, str(tmp_path / "other.onnx"))
        with pytest.raises(UsageError, match=says):
            posetune.load(tmp_path / "other.onnx", engine="onnx")
