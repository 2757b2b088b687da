"""`train --refit`: the usual run in RUN/selection fits the temperature on val (and stops early, picks the EMA),
then train + val trains again in RUN for as many epochs."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import TINY

import posetune
from posetune.errors import UsageError


def _meta(run) -> dict:
    return json.loads((run / "model.json").read_text())


# the epoch loop, a head on cached features, both phases, and the EMA's weights chosen on val
@pytest.mark.parametrize("options", [{"strategy": "partial"}, {"strategy": "linear"}, {"strategy": "lp-ft"},
                                     {"strategy": "full", "ema": 0.5}], ids=["partial", "linear", "lp-ft", "ema"])
def test_refit_trains_again_on_train_and_val_for_the_selections_epochs(options, shapes_kaggle, tmp_path):
    run = tmp_path / "run"
    result = posetune.train(shapes_kaggle, epochs=3, refit=True, out=str(run), **{**TINY, **options})
    selection, final = _meta(run / "selection"), _meta(run)
    refit = final["refit"]
    assert refit["selection_run"] == "selection" and result.refit == refit
    assert refit["epochs"] == selection["epochs_run"] == len(result.history) == final["epochs_run"]
    assert refit["selection_best_epoch"] == selection["best_epoch"] and final["best_epoch"] == refit["epochs"]
    assert refit["temperature"] == selection["temperature"] == final["temperature"] == result.calibration["temperature"]
    assert refit["selection_val"]["n"] == selection["metrics"]["val"]["n"] > 0
    assert refit["n_train"] == 30 + refit["selection_val"]["n"]  # shapes_kaggle's 36 TRAIN images: 6 held out as val
    assert set(selection["metrics"]) == {"val"}  # the selection run does not score test: the final model does
    assert set(final["metrics"]) == {"test"} and result.metrics["test"]["n"] == 12
    assert result.train_seconds == pytest.approx(final["train_seconds"] + refit["selection_train_seconds"], abs=0.02)
    if "ema" in options:  # no val in the final run: the EMA when it scored better on the selection's last epoch
        assert {row["weights"] for row in result.history} == {refit["weights"]}
    assert "refit: trained on train + val" in (run / "report.md").read_text()
    assert "refit: true" in (run / "config.yaml").read_text()
    clf = posetune.load(run)  # both are whole run folders; the final one predicts with the kept temperature
    assert clf.temperature == pytest.approx(refit["temperature"])
    assert posetune.load(run / "selection").classes == clf.classes


def test_the_final_run_keeps_the_selections_temperature_stop_and_ema(shapes_kaggle, tmp_path, monkeypatch):
    """What the selection's val decided reaches the final run: a temperature (fitted: here made up, as 6 val
    images are too few to fit one), an early stop (--patience 1 at a high LR stops it after 2 of 6 epochs) and
    the EMA (here said to be better on its last epoch)."""
    from posetune import calibration
    from posetune.training import refit as refit_module

    monkeypatch.setattr(calibration, "fit_temperature", lambda logits, labels: (0.5, "made up for the test"))
    monkeypatch.setattr(refit_module, "better_weights", lambda last: "ema")
    run = tmp_path / "run"
    result = posetune.train(shapes_kaggle, epochs=6, patience=1, lr=0.3, ema=0.5, refit=True, out=str(run), **TINY)
    selection, final = _meta(run / "selection"), _meta(run)
    assert selection["temperature"] == final["temperature"] == 0.5
    assert "selection/" in final["calibration"]["note"] and "made up for the test" in final["calibration"]["note"]
    assert selection["epochs_run"] == 2 < 6 and final["epochs_run"] == result.refit["epochs"] == 2
    assert result.refit["weights"] == "ema" and {row["weights"] for row in result.history} == {"ema"}


def test_refit_needs_a_val_split_and_refuses_other_jobs(shapes_kaggle, tmp_path):
    with pytest.raises(UsageError, match="--refit fits the temperature"):
        posetune.train(shapes_kaggle, refit=True, val_fraction=0.0, out=str(tmp_path / "run"), **TINY)
    assert not (tmp_path / "run").exists()
    config = tmp_path / "refit.yaml"
    config.write_text("refit: true\n")
    with pytest.raises(UsageError, match="drop refit"):  # from --config too, before anything is measured
        posetune.train(shapes_kaggle, time_budget="1m", config=str(config), out=str(tmp_path / "budget"))
    with pytest.raises(UsageError, match="drop refit"):
        posetune.lr_find(shapes_kaggle, refit=True, out=str(tmp_path / "lr"), **TINY)
    from posetune.tracking import NullTracker
    from posetune.training import train

    with pytest.raises(UsageError, match="drop tracker="):  # compare's cells log to a tracker of theirs
        train(shapes_kaggle, refit=True, tracker=NullTracker(), out=str(tmp_path / "tracked"), **TINY)
    assert not any((tmp_path / name).exists() for name in ("budget", "lr", "tracked"))


def test_refit_resumes_where_it_stopped_and_overwrite_keeps_the_users_files(shapes_kaggle, tmp_path):
    run = tmp_path / "run"
    posetune.train(shapes_kaggle, epochs=2, refit=True, out=str(run), **TINY)
    # killed after the selection, before the final run saved anything: the selection is not trained again
    weights = (run / "selection" / "model.safetensors").stat().st_mtime_ns
    for name in ("model.safetensors", "model.json", "metrics.csv", "report.md"):
        (run / name).unlink()
    shutil.rmtree(run / "checkpoint")
    result = posetune.train(resume=str(run))
    assert result.refit["epochs"] == len(result.history) and (run / "model.safetensors").is_file()
    assert (run / "selection" / "model.safetensors").stat().st_mtime_ns == weights
    # killed while the selection wrote its results: it finishes from its checkpoint, then the final run
    (run / "selection" / "report.md").unlink()
    shutil.rmtree(run / "checkpoint")
    result = posetune.train(resume=str(run))
    assert (run / "selection" / "report.md").is_file() and result.metrics["test"]["n"] == 12
    # a file of the user's in selection/: --overwrite is refused before anything is removed
    (run / "selection" / "notes.txt").write_text("the user's own notes")
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(UsageError, match="selection/ that posetune may not replace"):
        posetune.train(shapes_kaggle, epochs=2, refit=True, out=str(run), overwrite=True, **TINY)
    assert sorted(p.name for p in run.iterdir()) == before and (run / "model.json").is_file()
    # a plain run over it clears the old selection's files, and only those
    posetune.train(shapes_kaggle, epochs=2, out=str(run), overwrite=True, **TINY)
    assert sorted(p.name for p in (run / "selection").iterdir()) == ["notes.txt"] and "refit" not in _meta(run)
