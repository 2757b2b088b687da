"""`posetune train DATA --refit`: choose on val, then train again on train + val (scikit-learn's ``refit``,
AutoGluon's ``refit_full``).

The selection run is an ordinary run folder in RUN/selection: its val split fits the temperature, gives the
val score, may stop the run early (--patience) and, with ``--ema``, compares the EMA with the model's own
weights (its test split is not scored: the final model is what test measures). The final run in RUN starts
again from the same weights and seed and trains on train + val for as many epochs as the selection ran (its
cosine fitted to them), and keeps its last epoch (there is no val left to choose on): the EMA when the EMA
scored better on the selection's last epoch. It keeps the selection's temperature, and
model.json's ``refit`` records what the selection chose. Why: the 15% held out costs more test accuracy than
its epoch choice wins (Fashion-MNIST-1k, benchmarks/README.md), but without it there is no temperature (the
calibrated "unsure") and no val score; a refit keeps both for about twice the training.

Why the whole schedule and not the selection's best epoch: on 150 val images the best epoch is noise (Fashion-
MNIST-1k: 8, 8, 9 of 10), and a cosine schedule cut to it ends at a higher LR; a refit of 8 epochs scored
0.8685 where one of the whole 10 scored 0.8750 (seed 0; benchmarks/bench_levers.py).

>>> result = train("DATASET", refit=True, out="runs/yoga")   # doctest: +SKIP
>>> result.refit["epochs"], result.refit["temperature"]      # doctest: +SKIP
(10, 0.7)
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

from posetune.errors import UsageError
from posetune.options import TrainOptions
from posetune.run import SELECTION_DIR, RunDir

__all__ = ["SELECTION_DIR", "better_weights", "check_selection_folder", "final_options", "refit_record", "selection_choice",
           "selection_done", "selection_options"]


def check_selection_folder(run: RunDir, overwrite: bool) -> None:
    """Before anything is written or cleared: RUN/selection must be free for the selection run (missing, empty,
    or, with ``overwrite``, an earlier refit's selection holding only posetune's files)."""
    folder = run / SELECTION_DIR
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return
    replaceable = overwrite and run.is_refit() and folder.is_dir() and not RunDir(folder).foreign_files()
    if not replaceable:
        raise UsageError(f"--out {run.path} already has a {SELECTION_DIR}/ that posetune may not replace, and --refit "
                         f"writes its selection run there; move {folder} away or choose another --out"
                         + ("" if overwrite else " (or --overwrite, for an earlier --refit run)"))


def selection_options(opts: TrainOptions, run: Path) -> TrainOptions:
    """The selection run's options: the user's, into RUN/selection, logging to the final run's MLflow store (its
    default store is beside the run, which would be RUN/mlflow.db for the selection) and, with --log-dir, to
    LOG_DIR/<RUN's name>/selection (not every refit's LOG_DIR/selection)."""
    from posetune.tracking import default_mlflow_uri

    uri = opts.mlflow_uri or (default_mlflow_uri(run) if "mlflow" in (opts.log or []) else None)
    log_dir = str(Path(opts.log_dir) / run.name) if opts.log_dir else None
    return dataclasses.replace(opts, refit=False, out=str(run / SELECTION_DIR), mlflow_uri=uri, log_dir=log_dir)


def selection_done(run: Path) -> bool:
    """The selection run wrote its last file (report.md comes after the weights and model.json)."""
    selection = RunDir(run / SELECTION_DIR)
    return selection.exists() and (selection / "report.md").is_file()


def selection_choice(run: Path) -> dict:
    """What the finished selection run chose, from its folder: epochs run and the best one, the better weights on
    its last epoch (model or EMA: the final run keeps its last), temperature and how it was chosen, val scores,
    training seconds."""
    selection = RunDir(run / SELECTION_DIR)
    meta = selection.meta()
    with open(selection / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {"best_epoch": meta.best_epoch, "epochs_run": meta.epochs_run, "weights": better_weights(rows[-1] if rows else {}),
            "temperature": meta.temperature, "temperature_note": meta.calibration.get("note", ""),
            "val": meta.metrics.get("val"), "train_seconds": meta.train_seconds, "budget": meta.budget}


def better_weights(last: dict) -> str:
    """"ema" when the selection's last epoch scored its EMA above the model's own weights on val, else "model"."""
    from posetune.training.loop import ema_scored_better

    try:
        return "ema" if ema_scored_better(last) else "model"
    except (TypeError, ValueError):  # a metrics.csv cell that is not a number
        return "model"


def refit_record(chosen: dict) -> dict:
    """model.json's ``refit``: the selection run's folder, the epochs it ran (the final run's), its best epoch,
    the weights the final run keeps, its temperature and val scores (model.json's summary of them)."""
    return {"selection_run": SELECTION_DIR, "epochs": max(1, int(chosen["epochs_run"])),
            "selection_best_epoch": chosen["best_epoch"], "weights": chosen.get("weights", "model"),
            "temperature": float(chosen.get("temperature", 1.0)), "temperature_note": chosen.get("temperature_note", ""),
            "selection_val": chosen.get("val"),
            "selection_train_seconds": chosen.get("train_seconds", 0.0)}


def final_options(opts: TrainOptions, record: dict) -> TrainOptions:
    """The final run's options: the epochs the selection ran, into RUN."""
    return dataclasses.replace(opts, refit=False, epochs=record["epochs"])
