"""Trusting a model before shipping it: the temperature through train, both engines and the export; 'unsure'
in predict, its CLI and serve; evaluate's calibration, selective prediction, top losses and intervals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import TINY, run_cli

import posetune
from posetune.errors import InvalidOption, UsageError
from posetune.predict import choose_engine


@pytest.fixture(scope="module")
def test_images(shapes_kaggle: Path) -> list[str]:
    return sorted(str(p) for p in (shapes_kaggle / "TEST").rglob("*.jpg"))


# ----------------------------------------------------------------------------- the temperature


def test_both_engines_apply_the_temperature_identically(calibrated_run: Path, onnx_run: Path, test_images):
    """calibrated_run is onnx_run's model with temperature 0.25: the same logits, sharper probabilities."""
    t = posetune.load(calibrated_run, engine="torch", device="cpu").predict(test_images, top_k=3)
    o = posetune.load(calibrated_run, engine="onnx", device="cpu").predict(test_images, top_k=3)
    raw = posetune.load(onnx_run, engine="onnx", device="cpu").predict(test_images, top_k=3)
    for a, b, r in zip(t, o, raw):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4)
        logits = np.log(r.probabilities.astype(np.float64)) / 0.25  # softmax is shift-invariant: log p = z + c
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose(b.probabilities, expected, atol=1e-4)
    assert max(abs(a.probability - r.probability) for a, r in zip(t, raw)) > 1e-3  # it did change something
    sidecar = json.loads((calibrated_run / "model.onnx.json").read_text())
    assert sidecar["temperature"] == 0.25 and sidecar["ok"]


def test_an_export_from_before_temperature_scaling_predicts_with_one(onnx_run: Path, tmp_path: Path):
    import onnx

    from posetune.predict.onnx_engine import METADATA_KEY, OnnxClassifier

    proto = onnx.load(str(onnx_run / "model.onnx"))
    prop = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    meta = json.loads(prop.value)
    meta.pop("temperature")
    prop.value = json.dumps(meta)
    onnx.save(proto, str(tmp_path / "old.onnx"))
    assert OnnxClassifier(tmp_path / "old.onnx").temperature == 1.0
    prop.value = json.dumps({**meta, "temperature": -2})
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    with pytest.raises(UsageError, match="temperature"):
        OnnxClassifier(tmp_path / "bad.onnx")


def test_auto_engine_refuses_an_export_with_another_temperature(calibrated_run: Path, tmp_path: Path):
    assert choose_engine(calibrated_run, "auto", "cpu")[0] == "onnx"
    run = tmp_path / "run"
    shutil.copytree(calibrated_run, run)
    meta = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**meta, "temperature": 1.5}))
    engine, why = choose_engine(run, "auto", "cpu")
    assert engine == "torch" and "temperature" in why


def test_train_fits_the_temperature_on_val(shapes_kaggle: Path, tmp_path: Path):
    """With 60% of the 36 training images held out (21 >= 20), train fits T on val and records ECE/NLL."""
    result = posetune.train(shapes_kaggle, strategy="partial", epochs=1, val_fraction=0.6, out=str(tmp_path / "run"),
                            **TINY)
    cal = result.calibration
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["calibration"] == cal and meta["temperature"] == cal["temperature"]
    assert cal["val"]["n"] >= 20 and cal["test"]["n"] == 12
    if "fitted" in cal["note"] and "not fitted" not in cal["note"]:
        assert cal["val"]["nll_after"] < cal["val"]["nll_before"] and cal["temperature"] != 1.0
    else:  # a flawless val split (never for this model, but the guard is the rule)
        assert cal["temperature"] == 1.0
    assert posetune.load(tmp_path / "run", device="cpu").temperature == cal["temperature"]
    assert "ECE before" in (tmp_path / "run" / "report.md").read_text()


# ----------------------------------------------------------------------------- 'unsure'


def test_predict_answers_unsure_below_the_threshold_only(calibrated_run: Path, test_images):
    clf = posetune.load(calibrated_run, device="cpu")
    plain = clf.predict(test_images)
    threshold = float(np.median([p.probability for p in plain]))
    gated = posetune.predict_paths(calibrated_run, test_images, min_confidence=threshold)
    assert [g.unsure for g in gated] == [p.probability < threshold for p in plain]
    assert any(g.unsure for g in gated) and not all(g.unsure for g in gated)
    for p, g in zip(plain, gated):
        assert g.top_k == p.top_k and g.probability == p.probability
        assert g.label == ("unsure" if g.unsure else p.label)
        assert g.as_dict()["unsure"] == g.unsure and g.as_dict()["prediction"] == g.label
    assert not any(p.unsure for p in clf.predict(test_images, min_confidence=0.0))
    with pytest.raises(InvalidOption, match="--min-confidence must be a number from 0 to 1, not 1.5"):
        clf.predict(test_images, min_confidence=1.5)


def test_a_class_named_unsure_cannot_take_a_threshold():
    from posetune.predict.prediction import check_min_confidence

    assert check_min_confidence(None, ["unsure", "tree"]) is None
    with pytest.raises(UsageError, match="class named 'unsure'"):
        check_min_confidence(0.5, ["unsure", "tree"])


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_cli_predict_json_says_unsure(engine, calibrated_run: Path, test_images, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, ["predict", calibrated_run, *test_images[:3], "--engine", engine,
                                                   "--min-confidence", "1", "--json"])
    assert code == 0, err
    preds = json.loads(out)
    assert all(p["prediction"] == "unsure" and p["unsure"] and p["top_k"] for p in preds)
    code, out, err = run_cli(monkeypatch, capsys, ["predict", calibrated_run, *test_images[:3], "--engine", engine,
                                                   "--min-confidence", "0", "--json"])
    assert code == 0 and not any(p["unsure"] or p["prediction"] == "unsure" for p in json.loads(out))
    code, out, err = run_cli(monkeypatch, capsys, ["predict", calibrated_run, test_images[0], "--engine", engine,
                                                   "--min-confidence", "1"])
    assert code == 0 and "1 of 1 images unsure (top probability below 1)" in out


@pytest.mark.parametrize("engine", ["torch", "onnx"])
def test_serve_answers_unsure(engine, calibrated_run: Path, test_images):
    from posetune.serve.app import create_app

    photo = Path(test_images[0]).read_bytes()
    sure = TestClient(create_app(calibrated_run, engine=engine, min_confidence=0.0)).post("/predict", content=photo)
    unsure = TestClient(create_app(calibrated_run, engine=engine, min_confidence=1.0)).post("/predict", content=photo)
    assert sure.status_code == unsure.status_code == 200
    a, b = sure.json(), unsure.json()
    assert a["unsure"] is False and a["prediction"] == a["top_k"][0]["label"]
    assert b["unsure"] is True and b["prediction"] == "unsure" and b["top_k"] == a["top_k"]
    assert b["probability"] == a["probability"] < 1.0
    with pytest.raises(InvalidOption, match="--min-confidence"):
        create_app(calibrated_run, engine=engine, min_confidence=2)


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_reports_calibration_coverage_top_losses_and_intervals(calibrated_run: Path, shapes_kaggle: Path,
                                                                         test_images, tmp_path: Path):
    plain = posetune.load(calibrated_run, device="cpu").predict(test_images)
    threshold = float(np.median([p.probability for p in plain]))
    m = posetune.evaluate(calibrated_run, shapes_kaggle, min_confidence=threshold, out=tmp_path / "ev")
    for name in ("evaluation.json", "confusion.png", "reliability.png", "risk_coverage.png", "top_losses.png"):
        assert (tmp_path / "ev" / name).is_file(), name
    assert m["reliability_png"] == str(tmp_path / "ev" / "reliability.png")
    assert m["temperature"] == 0.25 and 0 <= m["ece"] <= 1 and m["nll"] > 0 and 0 <= m["aurc"] <= 1
    assert len(m["reliability"]) == 15 and sum(b["count"] for b in m["reliability"]) == m["n"] == 12
    for key in ("accuracy", "macro_f1"):
        lo, hi = m["intervals"][key]
        assert lo <= m[key] <= hi
    gated = posetune.load(calibrated_run, device="cpu").predict(test_images, min_confidence=threshold)
    covered = [g for g in gated if not g.unsure]
    cov = m["coverage"]
    assert cov["min_confidence"] == threshold and cov["n_covered"] == len(covered) and cov["n"] == 12
    truth = {p: Path(p).parent.name for p in test_images}
    assert cov["accuracy"] == pytest.approx(np.mean([g.label == truth[g.path] for g in covered]))
    wrong = m["n"] - sum(m["confusion_matrix"][i][i] for i in range(3))
    losses = m["top_losses"]
    assert len(losses) == min(16, wrong)
    assert all(set(t) == {"path", "true", "predicted", "probability", "loss"} and t["true"] != t["predicted"]
               and t["true"] == truth[t["path"]] for t in losses)
    assert [t["loss"] for t in losses] == sorted((t["loss"] for t in losses), reverse=True)
    saved = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert saved["ece"] == m["ece"] and saved["coverage"] == cov and len(saved["top_losses"]) == len(losses)
    assert "coverage" not in posetune.evaluate(calibrated_run, shapes_kaggle, plot=False)


def test_cli_evaluate_prints_intervals_and_trust(tiny_run: Path, shapes_kaggle: Path, tmp_path: Path, monkeypatch,
                                                 capsys):
    code, out, err = run_cli(monkeypatch, capsys, ["evaluate", tiny_run, shapes_kaggle, "--min-confidence", "0.3",
                                                   "--out", tmp_path / "ev", "--json"])
    assert code == 0, err
    m = json.loads(out)
    for key in ("ece", "intervals", "coverage", "top_losses", "aurc", "temperature", "reliability_png",
                "risk_coverage_png", "top_losses_png"):
        assert key in m, key
    code, out, err = run_cli(monkeypatch, capsys, ["evaluate", tiny_run, shapes_kaggle, "--min-confidence", "0.3",
                                                   "--out", tmp_path / "ev"])
    assert code == 0, err
    for words in ("95% interval", "ECE (15 bins)", "coverage at min confidence 0.3", "reliability diagram plot",
                  "risk-coverage curve plot", str(tmp_path / "ev" / "top_losses.png")):
        assert words in out, words
    code, out, err = run_cli(monkeypatch, capsys, ["evaluate", tiny_run, shapes_kaggle, "--min-confidence", "1.2"])
    assert code == 2 and "--min-confidence must be a number from 0 to 1" in err and err.count("\n") == 1
