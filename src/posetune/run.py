"""The run folder: ``RunMeta`` (the schema of model.json) and ``RunDir``, the only code that writes one.

A run folder is self-contained: ``model.safetensors`` (timm key names), ``model.json`` (backbone,
classes in index order, preprocessing, strategy, metrics), ``config.yaml``, ``metrics.csv``,
``metrics.json``, ``skipped.csv``, ``report.md`` + plots. ``posetune.load(RUN)`` needs nothing else.
`train`, every `compare` cell and `export` write through :class:`RunDir`.

>>> run = RunDir("runs/yoga")                 # doctest: +SKIP
>>> run.meta().classes                        # doctest: +SKIP
['downdog', 'goddess', 'plank', 'tree', 'warrior2']
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from posetune.errors import UsageError
from posetune.io import atomic_write_bytes, atomic_write_text, remove_orphans, write_csv, write_json

FORMAT_VERSION = 1
METRIC_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "n")
# The files a run folder may hold that posetune wrote (train, compare cells, export): the only ones it
# replaces with --overwrite, and whose orphaned temporary files it clears.
RUN_FILES = ("model.safetensors", "model.json", "config.yaml", "metrics.csv", "metrics.json", "skipped.csv",
             "report.md", "training.png", "confusion_test.png", "top_losses_test.png", "top_losses_val.png", "cell.json", "model.onnx", "model.onnx.json",
             "model.torchscript.pt", "model.torchscript.pt.json")
CHECKPOINT_DIR = "checkpoint"
SELECTION_DIR = "selection"  # `train --refit`: the run whose val fitted the temperature; the final run takes its epochs
TENSORBOARD_DIR = "tensorboard"  # `--log tensorboard`: the run's event files (posetune.tracking)


@dataclass
class RunMeta:
    """model.json. Keys a newer or older posetune wrote that this one does not know survive in ``extra``."""

    backbone: str
    arch: str
    classes: list[str]
    preprocessing: dict  # PreprocessConfig.to_config()
    strategy: str
    weight_source: str = ""
    frozen_stages: list[str] = field(default_factory=list)
    stage_lrs: dict[str, float] = field(default_factory=dict)
    best_epoch: int = 0
    epochs_run: int = 0
    train_seconds: float = 0.0
    train_images_per_s: float = 0.0
    data: str = ""
    layout: str = ""
    device: str = ""
    precision: str = ""  # the training's autocast (fp32, bf16, fp16): --precision auto resolved on this device
    metrics: dict[str, dict] = field(default_factory=dict)  # split -> METRIC_KEYS
    temperature: float = 1.0  # predictions are softmax(logits / temperature); fitted on val (older runs: 1.0)
    calibration: dict = field(default_factory=dict)  # how the temperature was chosen; ECE and NLL before/after
    head: dict | None = None  # how the head was fitted, when not by the epoch loop (compare's probe)
    budget: dict | None = None  # train --time-budget: what was measured, what was chosen and why, time used
    refit: dict | None = None  # train --refit: the selection run's choice (epochs, temperature, val score)
    kind: str = "image"  # the backbone spec's kind: image | pose (landmarks only) | fusion (NAME+pose)
    pose_dim: int = 0  # landmark features per image (posetune.pose.FEATURE_DIM) for pose / fusion runs
    no_person: dict | None = None  # pose / fusion: {split: {class: images where BlazePose found nobody}}
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))
    format_version: int = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: dict, source: str = "model.json") -> RunMeta:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [k for k in ("backbone", "arch", "classes", "preprocessing", "strategy") if k not in obj]
        if missing:
            raise UsageError(f"{source} lacks {', '.join(missing)}; it was not written by posetune train")
        problem = schema_problem(obj)
        if problem:
            raise UsageError(f"{source} is damaged: {problem}; restore it or train again")
        return cls(**{k: v for k, v in obj.items() if k in known},
                   extra={k: v for k, v in obj.items() if k not in known})

    def to_json(self) -> dict:
        obj = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for optional in ("head", "budget", "refit", "no_person"):
            if obj[optional] is None:
                del obj[optional]
        return {"format_version": obj.pop("format_version"), **obj, **self.extra}

    @staticmethod
    def summarize(metrics: dict[str, dict]) -> dict[str, dict]:
        """The headline scores of each split, as model.json keeps them."""
        return {s: {k: m.get(k) for k in METRIC_KEYS} for s, m in metrics.items()}


def schema_problem(obj: dict) -> str | None:
    """What is wrong with the fields of model.json that loading a model relies on, or None."""
    for key in ("backbone", "arch", "strategy"):
        if not isinstance(obj[key], str) or not obj[key]:
            return f"'{key}' must be a non-empty string, not {obj[key]!r}"
    classes = obj["classes"]
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)
            and len(set(classes)) == len(classes)):
        return f"'classes' must be a list of distinct class names, not {str(classes)[:60]!r}"
    pre = obj["preprocessing"]
    if not isinstance(pre, dict):
        return f"'preprocessing' must be an object, not {str(pre)[:60]!r}"
    size = pre.get("input_size")
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and 0 < v <= 4096 for v in size)):
        return f"'preprocessing.input_size' must be [3, H, W], not {size!r}"
    for key in ("mean", "std"):
        v = pre.get(key)
        if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and x == x for x in v)
                and (key == "mean" or all(x > 0 for x in v))):
            return f"'preprocessing.{key}' must be three numbers, not {v!r}"
    crop = pre.get("crop_pct", 0.875)
    if not (isinstance(crop, (int, float)) and 0.1 <= crop <= 1.0):
        return f"'preprocessing.crop_pct' must be a number in 0.1..1, not {crop!r}"
    if not isinstance(pre.get("interpolation", "bicubic"), str):
        return f"'preprocessing.interpolation' must be a name like bicubic, not {pre['interpolation']!r}"
    if obj.get("kind", "image") not in ("image", "pose", "fusion"):
        return f"'kind' must be image, pose or fusion, not {obj['kind']!r}"
    if obj.get("kind", "image") != "image" and not (isinstance(obj.get("pose_dim"), int) and obj["pose_dim"] > 0):
        return f"'pose_dim' must be a positive integer for a {obj['kind']} run, not {obj.get('pose_dim')!r}"
    return temperature_problem(obj.get("temperature", 1.0))


def temperature_problem(value) -> str | None:
    """Why ``value`` cannot be a temperature (of model.json, or of an export's metadata), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return f"'temperature' must be a positive number, not {value!r}"
    return None


class EvaluationDir:
    """Where `posetune evaluate` writes: evaluation.json (the metrics) and its plots. A folder that holds
    anything but an earlier evaluation is refused."""

    MARKER = "evaluation.json"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"--out {self.path} is a file; give a folder for the evaluation's outputs")
        if self.path.is_dir() and any(self.path.iterdir()) and not (self.path / self.MARKER).is_file():
            raise UsageError(f"--out {self.path} already holds files that are not a posetune evaluation; "
                             "choose another --out")

    def write_confusion(self, metrics: dict) -> Path:
        from posetune.report import plot_confusion

        self.path.mkdir(parents=True, exist_ok=True)
        return plot_confusion(metrics, self.path / "confusion.png")

    def write_trust_plots(self, metrics: dict, curve: dict) -> dict[str, str]:
        """reliability.png, risk_coverage.png and top_losses.png from `evaluate`'s metrics: {json key: path}."""
        from posetune.report import plot_reliability, plot_risk_coverage, plot_top_losses

        self.path.mkdir(parents=True, exist_ok=True)
        split, t = metrics.get("split", ""), metrics.get("temperature", 1.0)
        return {"reliability_png": str(plot_reliability(metrics["reliability"], metrics["ece"], self.path / "reliability.png",
                                                        f"{split} reliability (temperature {t:.3g})")),
                "risk_coverage_png": str(plot_risk_coverage(curve, self.path / "risk_coverage.png",
                                                            metrics.get("coverage"), f"{split} risk vs coverage")),
                "top_losses_png": str(plot_top_losses(metrics["top_losses"], self.path / "top_losses.png",
                                                      f"{split}: the most confidently wrong images"))}

    def write_cam_plots(self, top_losses: list[dict], correct: list[dict], split: str) -> dict[str, str]:
        """cam_top_losses.png and cam_correct.png (items as report.plot_cams): {json key: path}."""
        from posetune.report import plot_cams

        self.path.mkdir(parents=True, exist_ok=True)
        return {"cam_top_losses_png": str(plot_cams(top_losses, self.path / "cam_top_losses.png",
                                                    f"{split}: where the most confidently wrong answers came from",
                                                    empty="no misclassified images")),
                "cam_correct_png": str(plot_cams(correct, self.path / "cam_correct.png",
                                                 f"{split}: where correct answers came from, a few per class"))}

    def write_skeletons(self, items: list[dict], split: str) -> Path:
        """skeletons.png: a pose / fusion run's overlays per class (items as report.plot_overlays)."""
        from posetune.report import plot_overlays

        self.path.mkdir(parents=True, exist_ok=True)
        return plot_overlays(items, self.path / "skeletons.png",
                             f"{split}: BlazePose skeletons, a few per class (red: a wrong answer)")

    def write_metrics(self, metrics: dict) -> None:
        write_json(self.path / self.MARKER, metrics)


class RunDir:
    """Paths, readers and the writers of one run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def model_file(self) -> Path:
        return self.path / "model.safetensors"

    def exists(self) -> bool:
        return self.model_file.is_file() and (self.path / "model.json").is_file()

    def require(self) -> RunDir:
        if not self.path.exists():
            raise UsageError(f"run folder not found: {self.path} (train one with `posetune train DATA --out RUN`)")
        if not self.exists():
            raise UsageError(f"{self.path} is not a posetune run folder (it lacks model.safetensors or model.json)")
        return self

    # ------------------------------------------------------------------ readers

    def read_json(self, name: str) -> dict:
        path = self.path / name
        try:
            obj = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"{path} is unreadable or not JSON ({exc}); restore it or train again") from exc
        if not isinstance(obj, dict):
            raise UsageError(f"{path} must hold a JSON object; restore it or train again")
        return obj

    def meta(self) -> RunMeta:
        return RunMeta.from_json(self.read_json("model.json"), str(self.path / "model.json"))

    def load_state(self, arch: str) -> dict:
        """The weights of model.safetensors (safetensors never runs code from a file)."""
        from safetensors.torch import load_file

        try:
            return load_file(str(self.model_file))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type on damaged files
            raise UsageError(f"{self.model_file} is damaged ({exc}); train again or restore the file") from exc

    # ------------------------------------------------------------------ writers

    def is_run(self) -> bool:
        """A folder posetune trained into (even one killed before its weights were written)."""
        return (self.path / "model.json").is_file() or (self.path / "config.yaml").is_file()

    def create(self, overwrite: bool = False, resume: bool = False) -> RunDir:
        """Make the folder for a new run. posetune never writes into what it did not create: an existing
        folder with anything in it is refused, unless it is a posetune run and ``overwrite`` (its posetune
        files are then removed first) or ``resume`` (the run continues)."""
        if not resume and self.check_free(overwrite):
            self.clear()
        self.path.mkdir(parents=True, exist_ok=True)
        remove_orphans(self.path, RUN_FILES)
        return self

    def is_refit(self) -> bool:
        """A `train --refit` run: its config.yaml says so (its selection run is in selection/)."""
        import yaml

        try:
            config = yaml.safe_load((self.path / "config.yaml").read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return False
        return isinstance(config, dict) and config.get("refit") is True

    def foreign_files(self) -> list[str]:
        """Names in the folder that posetune did not write as part of a run (kept by :meth:`clear`)."""
        ours = {*RUN_FILES, CHECKPOINT_DIR, TENSORBOARD_DIR}
        return sorted(p.name for p in self.path.iterdir() if p.name not in ours) if self.path.is_dir() else []

    def check_free(self, overwrite: bool = False) -> bool:
        """Whether a new run may be written here (True: an earlier run is to be replaced), else a UsageError."""
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"--out {self.path} is a file; choose a folder name for the run")
        if not (self.path.is_dir() and any(self.path.iterdir())):
            return False
        if not self.is_run():
            raise UsageError(f"--out {self.path} already exists and is not a posetune run; choose another --out "
                             "(posetune never writes into a folder it did not create)")
        if not overwrite:
            raise UsageError(f"--out {self.path} holds an earlier run; pass --overwrite to replace it, or choose "
                             "another --out")
        return True

    def clear(self) -> None:
        """Remove the files of an earlier run that posetune wrote (RUN_FILES, checkpoint/, tensorboard/, and the
        same in a `--refit` run's selection/); nothing else."""
        import shutil

        for name in RUN_FILES:
            if name != "config.yaml":
                (self.path / name).unlink(missing_ok=True)
        for folder in (CHECKPOINT_DIR, TENSORBOARD_DIR):
            if (self.path / folder).is_dir():
                shutil.rmtree(self.path / folder)
        selection = RunDir(self.path / SELECTION_DIR)
        if self.is_refit() and selection.path.is_dir() and selection.is_run():
            selection.clear()
            if not any(selection.path.iterdir()):
                selection.path.rmdir()
        (self.path / "config.yaml").unlink(missing_ok=True)  # last: is_refit() reads it

    def write_json(self, name: str, obj) -> None:
        write_json(self.path / name, obj)

    def write_bytes(self, name: str, data: bytes) -> Path:
        atomic_write_bytes(self.path / name, data)
        return self.path / name

    def write_config(self, options: dict) -> None:
        """config.yaml: the resolved options, reusable with ``posetune train --config``."""
        import yaml

        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(options, sort_keys=False))

    def save_model(self, model, meta: RunMeta) -> None:
        from safetensors.torch import save as save_bytes

        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        atomic_write_bytes(self.model_file, save_bytes(state, metadata={"format": "posetune", "arch": meta.arch}))
        self.write_json("model.json", meta.to_json())

    def evaluation_dir(self, data: str | Path, split: str, out: str | Path | None = None) -> EvaluationDir:
        """``out``, or RUN/eval/<data name>-<hash of its path>-<split>/."""
        import hashlib

        if out is not None:
            return EvaluationDir(out)
        where = Path(data).resolve()
        tag = hashlib.sha256(str(where).encode()).hexdigest()[:6]
        return EvaluationDir(self.path / "eval" / f"{where.name or 'data'}-{tag}-{split}")

    def write_confusion(self, metrics: dict, split: str) -> Path:
        from posetune.report import plot_confusion

        return plot_confusion(metrics, self.path / f"confusion_{split}.png")

    def write_results(self, meta: RunMeta, history: list[dict], metrics: dict[str, dict],
                      skipped: Sequence[tuple[str, str]], stage_table: list[dict],
                      history_columns: Sequence[str] | None = None, errors: dict | None = None) -> list[Path]:
        """Everything after the weights: metrics.csv, skipped.csv, metrics.json, the plots, report.md.
        ``errors``: {"split": name, "top_losses": [...]}, the most confidently wrong images of that split."""
        from posetune.report import plot_history, plot_top_losses, write_run_report

        rows = [{k: r.get(k) for k in history_columns} for r in history] if history_columns else history
        write_csv(self.path / "metrics.csv", rows)
        write_csv(self.path / "skipped.csv", [{"path": p, "reason": r} for p, r in skipped], header=["path", "reason"])
        self.write_json("metrics.json", metrics)
        plots = [plot_history(history, self.path / "training.png")] if any("train_loss" in r for r in history) else []
        if metrics.get("test"):
            plots.append(self.write_confusion(metrics["test"], "test"))
        if errors is not None:
            plots.append(plot_top_losses(errors["top_losses"], self.path / f"top_losses_{errors['split']}.png",
                                         f"{errors['split']}: the most confidently wrong images"))
        write_run_report(self.path, meta.to_json(), stage_table, history, metrics.get("test"), list(skipped), plots,
                         errors)
        return plots
