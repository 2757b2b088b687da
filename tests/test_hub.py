"""`export --format timm` (a folder timm's own loader reads, with a model card) and `push` (offline: its
one-line failure and the folder it would upload)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import CLASSES
from test_export import cli

import posetune
from posetune.errors import UsageError


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny run: the timm export's default folder is RUN/timm/."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out, ignore=shutil.ignore_patterns("timm"))
    return out


def _timm_model(folder: Path):
    import timm

    return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()


def test_timm_loads_the_folder_with_the_runs_preprocessing_and_predictions(tiny_run: Path, shapes_kaggle: Path,
                                                                           tmp_path: Path) -> None:
    import timm
    import torch
    from PIL import Image

    from posetune.predict.torch_engine import Classifier
    from posetune.run import RunDir

    folder = tmp_path / "timm"
    result = posetune.export(tiny_run, format="timm", out=folder)
    assert result["ok"] and result["problems"] == []
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "confusion_test.png",
                                                        "model.safetensors"]
    for kind in ("random", "images"):
        assert result["parity"][kind]["top1_agreement"] == 1.0 and result["parity"][kind]["max_abs_delta"] < 1e-5
    assert result["parity"]["images"]["input_max_abs_delta"] == 0.0  # timm's transform == posetune's preprocessing
    # The weights travel byte for byte, bound to the run's model file.
    assert (folder / "model.safetensors").read_bytes() == (tiny_run / "model.safetensors").read_bytes()
    config = json.loads((folder / "config.json").read_text())
    assert config["posetune"]["source_sha256"] == hashlib.sha256((tiny_run / "model.safetensors").read_bytes()).hexdigest()

    model = _timm_model(folder)
    meta = json.loads((tiny_run / "model.json").read_text())
    assert model.num_classes == 3 and model.pretrained_cfg["label_names"] == list(CLASSES)
    cfg = timm.data.resolve_data_config({}, model=model)
    pre = meta["preprocessing"]
    assert (list(cfg["input_size"]), list(cfg["mean"]), list(cfg["std"]), cfg["interpolation"], cfg["crop_pct"]) == (
        pre["input_size"], pre["mean"], pre["std"], pre["interpolation"], pre["crop_pct"])
    assert cfg["crop_mode"] == "center"

    # timm alone (its transform, its model) gives what posetune gives on the same image files.
    files = sorted(str(p) for p in (shapes_kaggle / "TEST").rglob("*.jpg"))
    transform = timm.data.create_transform(**cfg)
    batch = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    with torch.no_grad():
        theirs = model(batch)
    exact = Classifier(RunDir(tiny_run), device="cpu", optimize=False)
    ours = exact.logits(exact.normalize(torch.stack([exact.preprocess.eval_crop(exact.preprocess.decode(f))
                                                     for f in files])))
    np.testing.assert_allclose(theirs.numpy(), ours.numpy(), atol=1e-5)
    preds = posetune.load(tiny_run).predict(files, top_k=3)  # the optimized engine (BatchNorm folded)
    probs = theirs.softmax(-1).numpy()
    assert [p.label for p in preds] == [CLASSES[i] for i in probs.argmax(1)]
    np.testing.assert_allclose([p.probability for p in preds], probs.max(1), atol=1e-5)


def test_model_card_says_what_a_user_needs_and_its_example_runs(tiny_run: Path, shapes_kaggle: Path,
                                                                tmp_path: Path) -> None:
    folder = tmp_path / "timm"
    posetune.export(tiny_run, format="timm", out=folder, n_random=1, n_images=2)
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: timm\npipeline_tag: image-classification\n")
    for heading in ("## What it recognises", "## How to use it", "## Training data", "## Training", "## Results",
                    "## Intended use and limits"):
        assert heading in card, heading
    assert all(f"`{c}`" in card for c in CLASSES)
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    n_test = metrics["test"]["n"]
    assert f"test {n_test}" in card and "train 30" in card and "split-folders layout" in card
    assert str(shapes_kaggle) not in card  # the data folder's name only, never its path on this machine
    # Test scores with their bootstrap interval, which is the one evaluation.bootstrap_interval computes.
    from posetune.evaluation import bootstrap_interval

    lo, hi = bootstrap_interval(metrics["test"]["confusion_matrix"])["accuracy"]
    assert f"| test | {n_test} | {metrics['test']['accuracy']:.3f} ({lo:.3f}-{hi:.3f}) |" in card
    assert "![confusion matrix on the test split](confusion_test.png)" in card
    assert "partial" in card and "stem, stage1, stage2" in card and "random init" in card

    # The card's example, pointed at this folder and a test image, runs and names posetune's prediction.
    code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    image = sorted((shapes_kaggle / "TEST" / "square").glob("*.jpg"))[0]
    code = code.replace("local-dir:PATH/TO/THIS/FOLDER", f"local-dir:{folder}").replace("photo.jpg", str(image))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    label, probability = printed.getvalue().split()
    expected = posetune.load(tiny_run).predict([str(image)])[0]
    assert label == expected.label and float(probability) == pytest.approx(expected.probability, abs=1e-5)


def test_alias_backbone_exports_under_the_timm_name(tmp_path: Path) -> None:
    """posetune's efficientnet_lite0 is timm's tf_efficientnet_lite0 ('SAME' padding); a run without
    metrics or a confusion matrix still exports, and its card says so."""
    import torch

    from posetune.backbones import ALIASES, build_model, data_config
    from posetune.run import RunDir, RunMeta

    arch = ALIASES["efficientnet_lite0"].arch
    torch.manual_seed(0)
    model = build_model(arch, len(CLASSES)).eval()
    meta = RunMeta(backbone="efficientnet_lite0", arch=arch, classes=list(CLASSES),
                   preprocessing=data_config(model, image_size=96), strategy="full", weight_source="random")
    run = RunDir(tmp_path / "lite0").create()
    run.save_model(model, meta)

    result = posetune.export(run.path, format="timm", n_random=2, n_images=4)
    assert result["ok"] and result["path"] == str(run.path / "timm")
    assert result["files"] == ["model.safetensors", "README.md", "config.json"]
    config = json.loads((run.path / "timm" / "config.json").read_text())
    assert config["architecture"] == "tf_efficientnet_lite0" and config["pretrained_cfg"]["input_size"] == [3, 96, 96]
    card = (run.path / "timm" / "README.md").read_text()
    assert "`tf_efficientnet_lite0` (posetune name `efficientnet_lite0`)" in card
    assert "No scores were recorded" in card and "confusion_test.png" not in card
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        np.testing.assert_allclose(_timm_model(run.path / "timm")(x).numpy(), model(x).numpy(), atol=1e-5)


def test_export_replaces_only_its_own_files(run_copy: Path, tmp_path: Path) -> None:
    folder = run_copy / "timm"
    posetune.export(run_copy, format="timm", n_random=1, n_images=1)  # default: RUN/timm/
    first = {p.name: p.read_bytes() for p in folder.iterdir()}
    posetune.export(run_copy, format="timm", n_random=1, n_images=1)  # again: the same bytes, nothing refused
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == first

    # A card the user edited is theirs now: refused, untouched.
    (folder / "README.md").write_text("my own notes\n")
    with pytest.raises(UsageError, match="README.md was changed after posetune exported it"):
        posetune.export(run_copy, format="timm")
    assert (folder / "README.md").read_text() == "my own notes\n"
    (folder / "README.md").write_bytes(first["README.md"])

    # Another file in the folder: refused, untouched.
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match=r"did not write \(notes.txt\)"):
        posetune.export(run_copy, format="timm")
    assert (folder / "notes.txt").read_text() == "mine"
    (folder / "notes.txt").unlink()

    # A timm folder someone else wrote (config.json without posetune's entry): refused.
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 3}))
    with pytest.raises(UsageError, match="did not write"):
        posetune.export(run_copy, format="timm", out=other)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        posetune.export(run_copy, format="timm", out=tmp_path / "a-file")

    # An export killed before its config.json: what is there is what the rerun writes, so the rerun repairs it.
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(first["model.safetensors"])
    (killed / ".config.json.x1y2.tmp").write_text("half")  # an orphan of posetune's atomic writer
    assert posetune.export(run_copy, format="timm", out=killed, n_random=1, n_images=1)["ok"]
    assert sorted(p.name for p in killed.iterdir()) == sorted(first)

    # A retrained run: the earlier export's files are what it recorded, so they are replaced.
    from safetensors.torch import load_file, save_file

    state = load_file(str(run_copy / "model.safetensors"))
    state["classifier.bias"] += 0.5
    save_file(state, str(run_copy / "model.safetensors"))
    posetune.export(run_copy, format="timm", n_random=1, n_images=1)
    assert (folder / "model.safetensors").read_bytes() == (run_copy / "model.safetensors").read_bytes()


def test_cli_export_timm(run_copy: Path, monkeypatch, capsys) -> None:
    code, out, err = cli(monkeypatch, capsys, "export", run_copy, "--format", "timm", "--json")
    result = json.loads(out)
    assert code == 0 and result["ok"] and result["path"] == str(run_copy / "timm")
    assert result["load"] == f'timm.create_model("local-dir:{run_copy / "timm"}", pretrained=True)'
    assert result["data_config"]["input_size"] == [3, 64, 64]
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps the table and messages at the terminal's width
    code, out, err = cli(monkeypatch, capsys, "export", run_copy, "--format", "timm")
    assert code == 0 and "load it with timm.create_model" in out and "top-1 agreement" in out
    code, _, err = cli(monkeypatch, capsys, "export", run_copy, "--format", "timm", "--opset", "17")
    assert code == 2 and "--opset applies to --format onnx only" in err
    code, _, err = cli(monkeypatch, capsys, "export", run_copy, "--format", "timm", "--dynamic-batch")
    assert code == 2 and "any batch size" in err
    code, _, err = cli(monkeypatch, capsys, "export", run_copy, "--format", "keras")
    assert code == 2 and "--format must be one of onnx, torchscript, timm" in err

    # A folder timm cannot load is a problem found (exit 1), named in one line.
    import posetune.hub.folder as hub

    honest = hub.timm_config
    monkeypatch.setattr(hub, "timm_config", lambda meta, model: {**honest(meta, model), "architecture": "resnet18"})
    code, out, err = cli(monkeypatch, capsys, "export", run_copy, "--format", "timm", "--out", run_copy / "bad", "--json")
    assert code == 1 and "timm cannot load it" in err and json.loads(out)["ok"] is False


def _posetune(args, env: dict, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "posetune", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})
    return proc, time.perf_counter() - t0


def _without_token(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    return {**env, "HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN_PATH": str(tmp_path / "hf-home" / "token")}


@pytest.mark.parametrize("env, message", [
    ({"HF_ENDPOINT": "https://hub.invalid"}, "the Hugging Face Hub at https://hub.invalid is unreachable"),
    ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
])
def test_push_offline_is_one_line_in_seconds(run_copy: Path, env: dict, message: str) -> None:
    quiet = {"HF_TOKEN": "hf_not_a_real_token", "HF_HUB_OFFLINE": "0", "HTTPS_PROXY": "", "https_proxy": "",
             "ALL_PROXY": "", "all_proxy": ""}  # whatever this machine's own settings are
    proc, seconds = _posetune(["push", run_copy, "me/yoga-poses"], {**quiet, **env})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and message in proc.stderr
    assert "Traceback" not in proc.stderr and seconds < 20
    assert not (run_copy / "timm").exists()  # checked before anything is exported


def test_push_needs_a_token_and_a_repo_id(run_copy: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "posetune", "push", str(run_copy), "me/yoga"], capture_output=True,
                          text=True, timeout=60, env=_without_token(tmp_path))
    assert proc.returncode == 2 and "no Hugging Face token: pass --token, set HF_TOKEN" in proc.stderr
    with pytest.raises(UsageError, match="is not a Hugging Face repo id"):
        posetune.push(run_copy, "me/yoga/poses", dry_run=True)


def test_push_dry_run_shows_the_folder_it_would_upload(run_copy: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    folder = tmp_path / "up"
    for key in ("HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a dry run needs neither a token nor the network
    code, out, err = cli(monkeypatch, capsys, "push", run_copy, "me/yoga-poses", "--dry-run", "--out", folder, "--json")
    result = json.loads(out)
    assert code == 0 and result["dry_run"] and not result["uploaded"] and result["folder"] == str(folder)
    assert [f["path"] for f in result["files"]] == ["README.md", "config.json", "confusion_test.png", "model.safetensors"]
    assert {f["path"]: f["bytes"] for f in result["files"]} == {p.name: p.stat().st_size for p in folder.iterdir()}
    card = (folder / "README.md").read_text()
    assert card.startswith("---") and "# yoga-poses" in card and 'timm.create_model("hf-hub:me/yoga-poses"' in card
    monkeypatch.setenv("COLUMNS", "400")
    code, out, err = cli(monkeypatch, capsys, "push", run_copy, "me/yoga-poses", "--dry-run")
    assert code == 0 and "would upload to me/yoga-poses" in out and str(run_copy / "timm") in out


def test_push_creates_the_repo_and_uploads_the_folder(run_copy: Path, tmp_path: Path, monkeypatch) -> None:
    """The upload path with huggingface_hub's client replaced (no network here): what it is asked to do, when it
    refuses, and how its errors read."""
    import huggingface_hub

    import posetune.weights

    calls = []
    remote = {".gitattributes": b"*.safetensors filter=lfs\n"}  # a new repo

    class FakeApi:
        def __init__(self, token=None, **kwargs):
            calls.append(("init", token))

        def create_repo(self, repo_id, private=False, exist_ok=False, repo_type=None):
            calls.append(("create_repo", repo_id, private, exist_ok))
            return _Url(repo_id)

        def list_repo_files(self, repo_id, repo_type=None):
            return sorted(remote)

        def hf_hub_download(self, repo_id, filename, repo_type=None):
            (tmp_path / "remote").mkdir(exist_ok=True)
            (tmp_path / "remote" / filename).write_bytes(remote[filename])
            return str(tmp_path / "remote" / filename)

        def upload_folder(self, repo_id, folder_path, allow_patterns=None, commit_message=None):
            calls.append(("upload_folder", repo_id, folder_path, sorted(allow_patterns)))
            return SimpleNamespace(commit_url=f"https://hub.example/{repo_id}/commit/1")

    monkeypatch.setattr(posetune.weights, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    result = posetune.push(run_copy, "me/yoga-poses", private=True, token="hf_x")
    assert result["uploaded"] and result["url"] == "https://hub.example/me/yoga-poses"
    assert calls == [("init", "hf_x"), ("create_repo", "me/yoga-poses", True, True),
                     ("upload_folder", "me/yoga-poses", str(run_copy / "timm"),
                      ["README.md", "config.json", "confusion_test.png", "model.safetensors"])]

    # A second push over posetune's own upload is a new commit; a repo with someone else's model is refused.
    remote.update({"config.json": (run_copy / "timm" / "config.json").read_bytes(), "README.md": b"card"})
    assert posetune.push(run_copy, "me/yoga-poses", token="hf_x")["uploaded"]
    remote["config.json"] = json.dumps({"architecture": "resnet50", "num_classes": 1000}).encode()
    calls.clear()
    with pytest.raises(UsageError, match=r"already holds files posetune did not upload \(README.md, config.json\)"):
        posetune.push(run_copy, "me/yoga-poses", token="hf_x")
    assert not [c for c in calls if c[0] == "upload_folder"]

    from huggingface_hub.errors import HfHubHTTPError

    def refuse(self, *args, **kwargs):
        raise HfHubHTTPError("401 Unauthorized", response=SimpleNamespace(headers={}, request=None, status_code=401))

    monkeypatch.setattr(FakeApi, "create_repo", refuse)
    with pytest.raises(UsageError, match=r"refused the token for me/yoga-poses \(HTTP 401\)"):
        posetune.push(run_copy, "me/yoga-poses", token="hf_x")

    def drop(self, *args, **kwargs):
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(FakeApi, "create_repo", drop)
    with pytest.raises(UsageError, match="the upload to .* failed .*connection reset"):
        posetune.push(run_copy, "me/yoga-poses", token="hf_x")


class _Url(str):
    """What create_repo returns: a URL string with the repo id."""

    def __new__(cls, repo_id: str):
        url = super().__new__(cls, f"https://hub.example/{repo_id}")
        url.repo_id = repo_id
        return url


def test_push_help_has_an_example() -> None:
    proc, _ = _posetune(["push", "--help"], {})
    assert proc.returncode == 0 and "Example" in proc.stdout and "--dry-run" in proc.stdout
