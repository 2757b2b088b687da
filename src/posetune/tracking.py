"""Experiment tracking: what a run tells TensorBoard and MLflow (``--log tensorboard,mlflow``).

One small interface, :class:`Tracker`, that the training job calls with plain data: the parameters once,
the loss and learning rates after every optimisation step, the row of every epoch, and at the end the
run's metrics and folder. :func:`open_trackers` builds the trackers a ``--log`` asks for; without one it
returns the base class, which does nothing (``NullTracker``). A compare sweep opens one with
``sweep=True`` and gets a tracker per cell from :meth:`Tracker.child`: MLflow nested runs under the
sweep's run, TensorBoard one folder per cell.

>>> with open_trackers(["tensorboard"], Path("runs/yoga")) as tracker:    # doctest: +SKIP
...     tracker.log_params({"lr": 1e-3})
...     tracker.log_epoch(1, {"val_accuracy": 0.9})

torch, tensorboard and mlflow are imported only when a tracker of theirs opens.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import numbers
import os
import time
from pathlib import Path
from typing import Sequence

from posetune.checks import Names
from posetune.errors import InvalidOption, UsageError
from posetune.run import TENSORBOARD_DIR  # RUN/tensorboard/, and OUT/tensorboard/<cell>/ of a compare sweep

TRACKERS = ("tensorboard", "mlflow")
MLFLOW_DB = "mlflow.db"  # the default store: <the run's parent>/mlflow.db
MLFLOW_ARTIFACTS = "mlartifacts"  # beside a local SQLite store: the artifacts of its runs
EXPERIMENT = "posetune"  # the MLflow experiment, unless MLFLOW_EXPERIMENT_NAME names another
PARAM_CHARS = 6000  # MLflow's limit on a parameter value
# What each tracker needs installed (module, the pip name to show), and the extra that brings it.
NEEDS = {"tensorboard": ([("tensorboard", "tensorboard")], "train"),
         "mlflow": ([("mlflow", "mlflow-skinny")], "track")}
DB_NEEDS = [("sqlalchemy", "SQLAlchemy"), ("alembic", "alembic")]  # MLflow's database stores (sqlite://, ...)
DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
URI_SCHEMES = DB_SCHEMES + ("http", "https", "file", "databricks")  # a URI without a scheme is a folder (file store)


class TrackerNames(Names):
    """``--log``: tensorboard, mlflow, or both as ``tensorboard,mlflow``."""

    def __init__(self):
        super().__init__(",".join(TRACKERS), unique=True)
        self.expected = f"one of {', '.join(TRACKERS)}, or several as {','.join(TRACKERS)}"

    def __call__(self, value, label):
        names = super().__call__(value, label)
        if any(n not in TRACKERS for n in names):
            raise self.fail(value, label)
        return names


LOG = TrackerNames()


def default_mlflow_uri(run_dir: str | Path) -> str:
    """The store when no --mlflow-uri is given: MLFLOW_TRACKING_URI, else a SQLite file beside the run (every
    run under runs/ lands in runs/mlflow.db)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(run_dir).absolute().parent / MLFLOW_DB)}"


def check_trackers(kinds: Sequence[str] | None, log_dir: str | None, mlflow_uri: str | None, label) -> None:
    """At the door: the packages each tracker needs are installed, and --log-dir / --mlflow-uri go with the
    --log that uses them. ``label(field)`` names a field in the message. A stat of the installed modules only."""
    kinds = list(kinds or [])
    if log_dir and "tensorboard" not in kinds:
        raise InvalidOption(f"{label('log_dir')} is where TensorBoard logs go; add {label('log')} tensorboard, or drop it")
    if mlflow_uri and "mlflow" not in kinds:
        raise InvalidOption(f"{label('mlflow_uri')} is the MLflow store; add {label('log')} mlflow, or drop it")
    if mlflow_uri and "://" in mlflow_uri and _scheme(mlflow_uri) not in URI_SCHEMES:
        raise InvalidOption(f"{label('mlflow_uri')} must be an MLflow tracking URI ({', '.join(URI_SCHEMES)}) or a "
                            f"folder, not {mlflow_uri!r}")
    for kind in kinds:
        modules, extra = NEEDS[kind]
        uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:"
        if kind == "mlflow" and _scheme(uri) in DB_SCHEMES:
            modules = modules + DB_NEEDS
        missing = [pip for module, pip in modules if not installed(module)]
        if missing:
            raise InvalidOption(f"{label('log')} {kind} needs {' and '.join(missing)}, which "
                                f"{'is' if len(missing) == 1 else 'are'} not installed; pip install 'posetune[{extra}]'")


def _scheme(uri: str) -> str:
    """sqlite:///x -> sqlite, postgresql+psycopg2://... -> postgresql."""
    return uri.split(":", 1)[0].split("+", 1)[0].lower()


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (found on the path; nothing is imported)."""
    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------- the interface


class Tracker:
    """What a run tells an experiment tracker. This base class does nothing: it is the tracker of a run
    without ``--log`` (and of every rank but 0 under torchrun). A context manager: leaving it closes the
    tracker, with the run marked failed (or killed, on Ctrl-C / SIGTERM) when an exception left it."""

    def log_params(self, params: dict) -> None:
        """The run's hyper-parameters, once (values shown as text where they are not numbers)."""

    def log_step(self, step: int, loss: float, lrs: dict[str, float]) -> None:
        """After optimisation step ``step`` (counted over the whole run): the batch loss and the learning
        rate of each parameter group, by stage name, as the scheduler left it for the next step."""

    def log_epoch(self, epoch: int, row: dict) -> None:
        """The numbers of one epoch's row (train/val loss and accuracy, lr, seconds, ...)."""

    def log_results(self, folder: Path, metrics: dict[str, dict]) -> None:
        """At the end: the metrics per split (``{"test": {"accuracy": ...}}``), the confusion matrix as an
        image (the folder's confusion_<split>.png, else drawn from the metrics), and the folder's files."""

    def child(self, name: str, run_dir: Path) -> Tracker:
        """A tracker for one cell of a sweep (an MLflow nested run, a TensorBoard folder of its own)."""
        return NullTracker()

    def close(self, status: str = "FINISHED") -> None:
        """Flush and end the run: FINISHED, FAILED or KILLED."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exit_status(exc))


NullTracker = Tracker


def exit_status(exc: BaseException | None) -> str:
    """FINISHED, KILLED (Ctrl-C, or a stop signal after its checkpoint: exit code 130) or FAILED."""
    if exc is None:
        return "FINISHED"
    if isinstance(exc, KeyboardInterrupt) or getattr(exc, "exit_code", None) == 130:
        return "KILLED"
    return "FAILED"


class Trackers(Tracker):
    """Several trackers as one (``--log tensorboard,mlflow``)."""

    def __init__(self, trackers: list[Tracker]):
        self.trackers = trackers

    def log_params(self, params: dict) -> None:
        for t in self.trackers:
            t.log_params(params)

    def log_step(self, step: int, loss: float, lrs: dict[str, float]) -> None:
        for t in self.trackers:
            t.log_step(step, loss, lrs)

    def log_epoch(self, epoch: int, row: dict) -> None:
        for t in self.trackers:
            t.log_epoch(epoch, row)

    def log_results(self, folder: Path, metrics: dict[str, dict]) -> None:
        for t in self.trackers:
            t.log_results(folder, metrics)

    def child(self, name: str, run_dir: Path) -> Tracker:
        return Trackers([t.child(name, run_dir) for t in self.trackers])

    def close(self, status: str = "FINISHED") -> None:
        for t in self.trackers:
            t.close(status)


def open_trackers(kinds: Sequence[str] | None, run_dir: str | Path, log_dir: str | Path | None = None,
                  mlflow_uri: str | None = None, resume: bool = False, sweep: bool = False) -> Tracker:
    """The trackers ``--log`` names for the run (or sweep) folder ``run_dir``.

    TensorBoard writes into ``log_dir/<run name>`` (default ``run_dir/tensorboard``; for a sweep each cell's
    folder is ``<log_dir or OUT/tensorboard>/<cell>``). MLflow logs to ``mlflow_uri`` (default
    :func:`default_mlflow_uri`). ``resume``: continue the run's MLflow run (the latest one of this folder
    that did not finish) and append to its TensorBoard folder, rather than start afresh."""
    run_dir = Path(run_dir)
    trackers: list[Tracker] = []
    for kind in kinds or []:
        if kind == "tensorboard":
            root = Path(log_dir) if log_dir else None
            if sweep:
                trackers.append(TensorBoardSweep(root or run_dir / TENSORBOARD_DIR))
            else:
                trackers.append(TensorBoardTracker(root / run_dir.name if root else run_dir / TENSORBOARD_DIR, resume))
        elif kind == "mlflow":
            uri = mlflow_uri or default_mlflow_uri(run_dir)
            try:
                trackers.append(MlflowTracker.open(uri, run_dir, resume=resume))
            except Exception as exc:  # noqa: BLE001 - MLflow's errors (unreachable server, bad store) as one line
                for t in trackers:
                    t.close("FAILED")
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UsageError(f"MLflow could not open the tracking store {uri} ({message}); check --mlflow-uri "
                                 "or MLFLOW_TRACKING_URI") from exc
        else:
            raise InvalidOption(f"--log must be one of {', '.join(TRACKERS)}, not {kind!r}")
    if not trackers:
        return NullTracker()
    return trackers[0] if len(trackers) == 1 else Trackers(trackers)


def _numbers(row: dict) -> dict[str, float]:
    """The plain numbers of a row: no flags, no text, not the epoch itself."""
    return {k: float(v) for k, v in row.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and k != "epoch"}


def _final(metrics: dict[str, dict]) -> dict[str, dict[str, float]]:
    """split -> its scalar scores (accuracy, balanced accuracy, macro-F1, ...; not the image count)."""
    return {split: {k: v for k, v in _numbers(m).items() if k != "n"} for split, m in metrics.items()
            if isinstance(m, dict)}


def _confusion(folder: Path, metrics: dict[str, dict]) -> tuple[str, Path | None, dict | None] | None:
    """(split, the folder's confusion_<split>.png or None, the metrics to draw it from) of the first split
    with a confusion matrix, test first."""
    for split in sorted(metrics, key=lambda s: (s != "test", s)):
        m = metrics[split]
        png = folder / f"confusion_{split}.png"
        if png.is_file():
            return split, png, m
        if isinstance(m, dict) and m.get("confusion_matrix") and m.get("classes"):
            return split, None, m
    return None


def _param_value(v):
    if isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return str(v)


# ---------------------------------------------------------------- TensorBoard


class TensorBoardTracker(Tracker):
    """Event files in ``log_dir`` through torch's SummaryWriter: ``step/loss`` and ``step/lr/<stage>`` per
    optimisation step; ``epoch/<column>`` per epoch; ``<split>/<metric>`` at the end, with the confusion
    matrix as the image ``confusion/<split>``; the parameters in the HParams dashboard.

    A new run hides whatever an earlier run left in the folder (TensorBoard's purge from step 0); a resumed
    run appends."""

    def __init__(self, log_dir: Path, resume: bool = False):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir), purge_step=None if resume else 0, flush_secs=30)
        self.last_epoch = 0

    def log_params(self, params: dict) -> None:
        from torch.utils.tensorboard.summary import hparams

        values = {k: _param_value(v) for k, v in params.items() if v is not None}
        # Written at the start, so that a running run is already in the dashboard; the metrics named here are
        # the scalars log_results writes.
        metric_names = {f"{s}/{m}": 0.0 for s in ("val", "test") for m in ("accuracy", "macro_f1")}
        for summary in hparams(values, metric_names):
            self.writer.file_writer.add_summary(summary)

    def log_step(self, step: int, loss: float, lrs: dict[str, float]) -> None:
        self.writer.add_scalar("step/loss", loss, step)
        for stage, lr in lrs.items():
            self.writer.add_scalar(f"step/lr/{stage}", lr, step)

    def log_epoch(self, epoch: int, row: dict) -> None:
        for key, value in _numbers(row).items():
            self.writer.add_scalar(f"epoch/{key}", value, epoch)
        self.last_epoch = max(self.last_epoch, epoch)

    def log_results(self, folder: Path, metrics: dict[str, dict]) -> None:
        for split, values in _final(metrics).items():
            for key, value in values.items():
                self.writer.add_scalar(f"{split}/{key}", value, self.last_epoch)
        found = _confusion(Path(folder), metrics)
        if found:
            split, png, m = found
            if png is not None:
                import numpy as np
                from PIL import Image

                with Image.open(png) as img:
                    pixels = np.asarray(img.convert("RGB"))
                self.writer.add_image(f"confusion/{split}", pixels, self.last_epoch, dataformats="HWC")
            else:
                from posetune.report import confusion_figure, pyplot

                pyplot()  # the file-only backend
                self.writer.add_figure(f"confusion/{split}", confusion_figure(m), self.last_epoch)  # closes it
        self.writer.flush()

    def close(self, status: str = "FINISHED") -> None:
        self.writer.close()


class TensorBoardSweep(Tracker):
    """The TensorBoard side of a compare sweep: nothing of its own, one folder per cell under ``root``, so
    that ``tensorboard --logdir root`` shows the cells side by side (HParams: one row per cell)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def child(self, name: str, run_dir: Path) -> Tracker:
        return TensorBoardTracker(self.root / name)


# ---------------------------------------------------------------- MLflow


def _run_key(path: Path) -> str:
    """A tag value naming the run folder that search filters can quote safely (paths may hold quotes)."""
    return hashlib.sha256(str(Path(path).absolute()).encode()).hexdigest()[:24]


class MlflowTracker(Tracker):
    """One MLflow run through ``MlflowClient`` (no global active run): the parameters, the epoch rows as
    metrics at step = epoch, the final ``<split>/<metric>`` scores (as TensorBoard names them: apart from the
    epochs' ``val_accuracy``), and the folder's files as artifacts (the run folder without checkpoint/ and
    tensorboard/). Per-step figures go to TensorBoard only: one database
    write per step would slow training down."""

    def __init__(self, client, run_id: str, experiment_id: str, existing_params: dict | None = None):
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self.existing_params = existing_params or {}
        self.last_epoch = 0

    @classmethod
    def open(cls, uri: str, run_dir: Path, resume: bool = False, parent: MlflowTracker | None = None,
             name: str | None = None) -> MlflowTracker:
        from mlflow.tracking import MlflowClient

        if not parent and _scheme(uri) in ("http", "https"):
            _reachable(uri)
        if "MLFLOW_LOGGING_LEVEL" not in os.environ:  # "Creating initial MLflow database tables..." on stderr
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        client = parent.client if parent else MlflowClient(tracking_uri=uri)
        experiment_id = parent.experiment_id if parent else _experiment(client, uri)
        key = _run_key(run_dir)
        if resume:
            runs = client.search_runs([experiment_id], filter_string=f"tags.`posetune.run_key` = '{key}'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
            if runs and runs[0].info.status != "FINISHED":
                client.update_run(runs[0].info.run_id, status="RUNNING")
                return cls(client, runs[0].info.run_id, experiment_id, dict(runs[0].data.params))
        tags = {"posetune.run": str(Path(run_dir).absolute()), "posetune.run_key": key,
                "mlflow.source.name": "posetune"}
        if parent is not None:
            tags["mlflow.parentRunId"] = parent.run_id
        run = client.create_run(experiment_id, run_name=name or Path(run_dir).name, tags=tags)
        return cls(client, run.info.run_id, experiment_id)

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        # A resumed run keeps the parameters it has (MLflow's are write-once).
        values = [Param(k, str(_param_value(v))[:PARAM_CHARS]) for k, v in params.items()
                  if k not in self.existing_params]
        for i in range(0, len(values), 100):  # MLflow's batch limit on parameters
            self.client.log_batch(self.run_id, params=values[i:i + 100])

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items() if v == v]  # MLflow refuses NaN
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_epoch(self, epoch: int, row: dict) -> None:
        self._metrics(_numbers(row), epoch)
        self.last_epoch = max(self.last_epoch, epoch)

    def log_results(self, folder: Path, metrics: dict[str, dict]) -> None:
        folder = Path(folder)
        self._metrics({f"{split}/{k}": v for split, values in _final(metrics).items() for k, v in values.items()},
                      self.last_epoch)
        found = _confusion(folder, metrics)
        if found and found[1] is None:  # no PNG in the folder: draw one
            from posetune.report import confusion_figure, pyplot

            pyplot()  # the file-only backend
            fig = confusion_figure(found[2])
            self.client.log_figure(self.run_id, fig, f"confusion_{found[0]}.png")
            pyplot().close(fig)
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.is_symlink() and not path.name.startswith("."):
                self.client.log_artifact(self.run_id, str(path))

    def child(self, name: str, run_dir: Path) -> Tracker:
        return MlflowTracker.open("", run_dir, parent=self, name=name)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def _reachable(uri: str, timeout: float = 5.0) -> None:
    """A tracking server that does not answer fails now, not after MLflow's retries (minutes)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()  # noqa: S310 - the user's URI
    except urllib.error.HTTPError:
        pass  # it answered (an auth proxy may refuse /health): reachable
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UsageError(f"the MLflow tracking server {uri} does not answer ({reason}); start it, or check "
                         "--mlflow-uri or MLFLOW_TRACKING_URI") from exc


def _experiment(client, uri: str) -> str:
    """The id of the experiment (created on first use; for a local SQLite store with its artifacts beside
    the database, not in ./mlruns of wherever the command ran)."""
    from mlflow.exceptions import MlflowException

    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        location = (db.absolute().parent / MLFLOW_ARTIFACTS).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # another process created it meanwhile
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id
