"""One cell of a compare sweep: a (backbone, strategy, seed), its run folder under ``OUT/cells/`` and
the ``cell.json`` beside the run that records its result and the settings it saw (the reuse key).

>>> cell = Cell.at(Path("cmp"), "resnet18@random", "partial", seed=1)
>>> cell.name
'resnet18-random-partial-s1'
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from posetune.options import CompareOptions

CELLS_DIR = "cells"  # OUT/cells/<cell>: every cell's run folder
CELL_FILE = "cell.json"


def cell_slug(spec: str) -> str:
    """A folder-safe name for a backbone spec: NAME, NAME-random, NAME-file-<stem>."""
    name, _, suffix = spec.partition("@")
    if suffix == "random":
        tag = "-random"
    elif suffix:
        tag = f"-file-{Path(suffix).stem}"
    else:
        tag = ""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{name}{tag}")


@dataclass
class Cell:
    """One (backbone, strategy, seed) of the sweep and its run folder."""

    backbone: str  # the spec as the user wrote it
    strategy: str
    seed: int
    path: Path

    @classmethod
    def at(cls, out: Path, backbone: str, strategy: str, seed: int) -> Cell:
        """The cell's folder in the sweep OUT: ``OUT/cells/<slug>-<strategy>-s<seed>``."""
        return cls(backbone, strategy, seed, out / CELLS_DIR / f"{cell_slug(backbone)}-{strategy}-s{seed}")

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def sweep(self) -> Path:
        """The sweep folder OUT the cell belongs to."""
        return self.path.parent.parent

    def reset(self) -> None:
        """Empty the folder of what posetune wrote into it before (a stale or unfinished cell). Anything else in
        it stays, and the cell's run then refuses the folder rather than write beside it."""
        from posetune.run import RunDir

        if self.path.is_dir():
            RunDir(self.path).clear()

    def load(self, key: dict) -> dict | None:
        """The cell's saved result if it finished with the same settings, else None."""
        from posetune.run import RunDir

        f = self.path / CELL_FILE
        if not (f.is_file() and RunDir(self.path).exists()):
            return None
        try:
            saved = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return saved if saved.get("status") == "ok" and saved.get("key") == key else None

    def save(self, result: dict) -> None:
        from posetune.io import write_json

        write_json(self.path / CELL_FILE, result)

    def save_failure(self, exc: BaseException) -> dict:
        """Record the cell as failed (its first error line) and return that record."""
        result = {"status": "failed", "backbone": self.backbone, "strategy": self.strategy, "seed": self.seed,
                  "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300], "run": str(self.path)}
        self.save(result)
        return result


def reuse_keys(opts: CompareOptions) -> tuple[dict, dict]:
    """(probe key, training key): a finished cell is reused only if it saw the same data and settings;
    probes ignore the training ones (the base LR ratio among them: cells trained before its default moved
    are not reused)."""
    from posetune.strategies import BASE_LR_RATIO

    probe_key = {"data": str(Path(opts.data).resolve()), "image_size": opts.image_size,
                 "val_fraction": opts.val_fraction, "label_level": opts.label_level}
    return probe_key, {**probe_key, "epochs": opts.epochs, "batch_size": opts.batch_size,
                       "base_lr_ratio": BASE_LR_RATIO}


def summarize_test(metrics: dict | None) -> dict | None:
    """A cell's ``test`` entry: accuracy, macro-F1 and the confusion matrix (enough to bootstrap over test
    images), or None without test images."""
    if not metrics or not metrics.get("n"):
        return None
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "n": metrics["n"],
            "confusion_matrix": metrics["confusion_matrix"]}
