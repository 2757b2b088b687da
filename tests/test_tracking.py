"""`--log tensorboard,mlflow`: what a run logs, read back from TensorBoard's event files and MLflow's store;
compare logs one child per cell; under torchrun rank 0 alone logs; a missing package is one line at the door."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY, run_cli, write_shapes

import posetune
from posetune import tracking
from posetune.errors import InvalidOption, PosetuneError, UsageError


@pytest.fixture(scope="module", autouse=True)
def no_telemetry():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # MLflow's usage reporting: no network from tests
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store: beside each run
        mp.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        yield


def events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def hparams(acc) -> dict:
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: v.string_value or v.number_value for k, v in info.hparams.items()}


def mlflow_runs(store: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("posetune")
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def history(run: Path) -> list[dict]:
    return list(csv.DictReader(open(run / "metrics.csv")))


@pytest.fixture(scope="module")
def logged_run(shapes_kaggle, tmp_path_factory) -> Path:
    """One tiny run through the Python API, logged to both trackers (default places)."""
    run = tmp_path_factory.mktemp("logged") / "runs" / "yoga"
    posetune.train(shapes_kaggle, strategy="partial", epochs=2, out=str(run), log="tensorboard,mlflow", **TINY)
    return run


def test_tensorboard_has_steps_epochs_results_confusion_and_hparams(logged_run):
    acc = events(logged_run / "tensorboard")
    rows = history(logged_run)
    meta = json.loads((logged_run / "model.json").read_text())
    steps_per_epoch = math.ceil(int(rows[0]["images"]) / TINY["batch_size"])
    loss = scalars(acc, "step/loss")
    assert [s for s, _ in loss] == list(range(1, 2 * steps_per_epoch + 1))  # every optimisation step, counted over the run
    assert all(0 < v < 10 for _, v in loss)
    trainable = [s for s in meta["stage_lrs"] if s not in meta["frozen_stages"]]
    assert trainable and "head" in trainable
    for stage in trainable:
        lrs = scalars(acc, f"step/lr/{stage}")
        assert len(lrs) == len(loss) and max(v for _, v in lrs) == pytest.approx(meta["stage_lrs"][stage], rel=1e-6)
    for stage in meta["frozen_stages"]:
        assert f"step/lr/{stage}" not in acc.Tags()["scalars"]
    val = scalars(acc, "epoch/val_accuracy")
    assert [s for s, _ in val] == [1, 2]
    assert [v for _, v in val] == pytest.approx([float(r["val_accuracy"]) for r in rows])
    assert [v for _, v in scalars(acc, "epoch/train_loss")] == pytest.approx([float(r["train_loss"]) for r in rows])
    metrics = json.loads((logged_run / "metrics.json").read_text())
    assert scalars(acc, "test/accuracy") == [(2, pytest.approx(metrics["test"]["accuracy"]))]
    assert scalars(acc, "val/macro_f1") == [(2, pytest.approx(metrics["val"]["macro_f1"]))]
    image = acc.Images("confusion/test")[0]  # the run's confusion_test.png
    from PIL import Image

    with Image.open(logged_run / "confusion_test.png") as png:
        assert (image.width, image.height) == png.size
    params = hparams(acc)
    assert params["strategy"] == "partial" and params["backbone"] == "test_efficientnet"
    assert params["epochs"] == 2 and params["image_size"] == 64 and params["lr_head"] == pytest.approx(meta["stage_lrs"]["head"])
    assert params["classes"] == "circle,square,triangle"


def test_mlflow_has_params_epoch_metrics_and_the_run_folder(logged_run):
    store = logged_run.parent / "mlflow.db"  # beside the run, by default
    assert store.is_file()
    client, runs = mlflow_runs(store)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "yoga"
    assert run.data.tags["posetune.run"] == str(logged_run.absolute())
    assert run.data.params["strategy"] == "partial" and run.data.params["epochs"] == "2"
    assert run.data.params["batch_size"] == str(TINY["batch_size"])
    rows = history(logged_run)
    for key in ("val_accuracy", "train_loss", "lr"):
        got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        assert got == [(i + 1, pytest.approx(float(r[key]))) for i, r in enumerate(rows)], key
    metrics = json.loads((logged_run / "metrics.json").read_text())
    assert run.data.metrics["test/accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert run.data.metrics["val/accuracy"] == pytest.approx(metrics["val"]["accuracy"])
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"model.safetensors", "model.json", "config.yaml", "metrics.csv", "confusion_test.png", "report.md"} <= artifacts
    assert not {"checkpoint", "tensorboard"} & artifacts
    # the artifacts sit beside the database, not in ./mlruns of wherever the command ran
    assert (logged_run.parent / "mlartifacts").is_dir() and not Path("mlruns").exists()


def test_lp_ft_phases_and_a_confusion_drawn_without_test(tmp_path):
    """Two phases: the probe's epochs under phase1/, the fine-tuning's plain; no TEST split: the confusion
    image is drawn from the val metrics."""
    data = write_shapes(tmp_path / "flat", 10, seed=3)  # class folders only: val is held out, no test
    run = tmp_path / "lpft"
    posetune.train(data, strategy="lp-ft", epochs=2, out=str(run), log="tensorboard", **TINY)
    acc = events(run / "tensorboard")
    tags = acc.Tags()["scalars"]
    assert "epoch/phase1/val_accuracy" in tags and "epoch/phase1/epoch" not in tags
    assert [s for s, _ in scalars(acc, "epoch/val_accuracy")] == [1, 2]
    assert acc.Tags()["images"] == ["confusion/val"] and not (run / "confusion_val.png").exists()
    assert "test/accuracy" not in tags


def test_overwrite_replaces_the_runs_tensorboard_folder(tmp_path):
    from posetune.run import RunDir

    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    (run / "tensorboard" / "events.out.tfevents.1").write_bytes(b"old")
    (run / "model.json").write_text("{}")
    (run / "notes.txt").write_text("mine")
    RunDir(run).create(overwrite=True)
    assert not (run / "tensorboard").exists() and (run / "notes.txt").is_file()


def test_interrupted_then_resumed_continues_the_same_mlflow_run(shapes_kaggle, tmp_path, monkeypatch):
    """SIGTERM after epoch 1: the MLflow run ends KILLED; `--resume` continues it (one run, epochs 1..3)."""
    run = tmp_path / "runs" / "stopped"
    original = tracking.MlflowTracker.log_epoch

    def stop_after_first(self, epoch, row):
        original(self, epoch, row)
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # posetune's handler: checkpoint at the next step, then stop

    monkeypatch.setattr(tracking.MlflowTracker, "log_epoch", stop_after_first)
    with pytest.raises(PosetuneError, match="stopped by a signal"):
        posetune.train(shapes_kaggle, strategy="partial", epochs=3, patience=0, out=str(run), log="mlflow,tensorboard",
                       **TINY)
    client, runs = mlflow_runs(run.parent / "mlflow.db")
    assert [r.info.status for r in runs] == ["KILLED"]
    monkeypatch.setattr(tracking.MlflowTracker, "log_epoch", original)
    posetune.train(resume=str(run))
    client, runs = mlflow_runs(run.parent / "mlflow.db")
    assert [r.info.status for r in runs] == ["FINISHED"]
    steps = sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, "val_accuracy"))
    assert steps == [1, 2, 3]
    loss_steps = [s for s, _ in scalars(events(run / "tensorboard"), "step/loss")]
    assert loss_steps == sorted(set(loss_steps)) and loss_steps[0] == 1  # the resumed steps continue the count


def test_compare_logs_a_child_per_cell(shapes_kaggle, tmp_path):
    out = tmp_path / "sweeps" / "cmp"
    result = posetune.compare(shapes_kaggle, backbones="test_efficientnet@random,test_resnet@random",
                              strategies="linear,partial", top_k=1, epochs=1, image_size=64, batch_size=16,
                              out=str(out), log="tensorboard,mlflow")
    cells = sorted(Path(r["run"]).name for r in result.rows)
    assert len(cells) == 3  # two probe cells and one fine-tuned cell
    # TensorBoard: one folder per cell, each with its hyper-parameters and final scores
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == cells
    for cell in cells:
        acc = events(out / "tensorboard" / cell)
        assert hparams(acc)["strategy"] in ("linear", "partial")
        assert "val/accuracy" in acc.Tags()["scalars"]
    partial = next(c for c in cells if c.endswith("-partial-s0"))
    assert "step/loss" in events(out / "tensorboard" / partial).Tags()["scalars"]
    # MLflow: the sweep's run, the cells nested under it
    client, runs = mlflow_runs(out.parent / "mlflow.db")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [p.info.run_name for p in parents] == ["cmp"] and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(c.info.run_name for c in children) == cells
    assert all(c.info.status == "FINISHED" for c in children)
    by_name = {c.info.run_name: c for c in children}
    assert by_name[partial].data.params["strategy"] == "partial"
    assert [m.step for m in client.get_metric_history(by_name[partial].info.run_id, "val_accuracy")] == [1]
    assert "val/accuracy" in by_name[cells[0]].data.metrics
    assert parents[0].data.params["top_k"] == "1"
    assert parents[0].data.metrics["best/val_accuracy"] == pytest.approx(result.rows[0]["val_accuracy"])
    assert {"leaderboard.csv", "leaderboard.md", "compare.json"} <= {f.path for f in client.list_artifacts(parents[0].info.run_id)}


@pytest.mark.slow
def test_two_processes_log_once(shapes_kaggle, tmp_path):
    """Under torchrun rank 0 alone logs: one MLflow run, one event file, rank 0's steps."""
    run = tmp_path / "runs" / "ddp"
    proc = subprocess.run([sys.executable, "-m", "posetune", "train", str(shapes_kaggle), "--out", str(run),
                           "--backbone", "test_efficientnet", "--no-pretrained", "--image-size", "64", "--batch-size", "8",
                           "--epochs", "2", "--nproc", "2", "--log", "tensorboard,mlflow"],
                          capture_output=True, text=True, timeout=400,
                          env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert len(list((run / "tensorboard").iterdir())) == 1
    rows = history(run)
    per_rank = int(rows[0]["images_per_rank"])
    acc = events(run / "tensorboard")
    assert len(scalars(acc, "step/loss")) == 2 * math.ceil(per_rank / 8)
    assert [s for s, _ in scalars(acc, "epoch/val_accuracy")] == [1, 2]
    client, runs = mlflow_runs(run.parent / "mlflow.db")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.params["processes"] == "2"


# --------------------------------------------------------------------- at the door




@pytest.mark.parametrize("command", ["train", "compare"])
@pytest.mark.parametrize("missing, kind, extra", [("mlflow", "mlflow", "track"), ("sqlalchemy", "mlflow", "track"),
                                                  ("tensorboard", "tensorboard", "train")])
def test_a_missing_package_is_one_line_naming_the_extra(command, missing, kind, extra, shapes_kaggle, tmp_path,
                                                        monkeypatch, capsys):
    real = tracking.installed
    monkeypatch.setattr(tracking, "installed", lambda module: module != missing and real(module))
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, [command, shapes_kaggle, "--log", f"tensorboard,{kind}"
                                                   if kind == "mlflow" else kind])
    assert code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert f"pip install 'posetune[{extra}]'" in err and "--log" in err
    assert list(tmp_path.iterdir()) == []  # nothing trained, nothing written


def test_an_http_store_needs_no_database_packages(monkeypatch):
    real = tracking.installed
    monkeypatch.setattr(tracking, "installed", lambda module: module not in ("sqlalchemy", "alembic") and real(module))
    tracking.check_trackers(["mlflow"], None, "http://127.0.0.1:5000", lambda f: f"--{f}")
    with pytest.raises(InvalidOption, match="SQLAlchemy and alembic"):
        tracking.check_trackers(["mlflow"], None, None, lambda f: f"--{f}")  # the default: a SQLite file


def test_a_server_that_does_not_answer_is_one_line_at_once(tmp_path):
    import socket
    import time

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.perf_counter()
    with pytest.raises(UsageError, match=f"server http://127.0.0.1:{port} does not answer"):
        tracking.open_trackers(["mlflow"], tmp_path / "run", mlflow_uri=f"http://127.0.0.1:{port}")
    assert time.perf_counter() - t < 30  # not MLflow's minutes of retries


def test_the_default_store_is_beside_the_run_or_the_environments(tmp_path, monkeypatch):
    assert tracking.default_mlflow_uri(tmp_path / "runs" / "a") == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.default_mlflow_uri(tmp_path / "runs" / "a") == "http://127.0.0.1:5000"


def test_lr_find_refuses_log():
    from posetune.options import LrFindOptions

    with pytest.raises(InvalidOption, match="lr-find logs to no experiment tracker"):
        LrFindOptions(data=".", log="tensorboard").validate()
