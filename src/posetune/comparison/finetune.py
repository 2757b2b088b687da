"""Stage 2 of `posetune compare`: fine-tune the top backbones with each strategy that trains the base.

Each cell is one :func:`posetune.training.train` run into its folder. Before a cell starts, its time is
estimated from stage 1's measured throughput (corrected by the cells finished so far); with a budget,
cells that would not fit are skipped with the reason.

>>> estimate_cell_seconds({"images_per_s": 100.0, "n_train": 90, "n_val": 10, "n_test": 20}, epochs=1)
3.1
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from posetune.comparison.cells import Cell, summarize_test
from posetune.console import Reporter
from posetune.options import CompareOptions
from posetune.tracking import NullTracker, Tracker

TRAIN_COST_PER_FORWARD = 3.0  # forward + backward ~ 3 forwards per image (refined by finished cells)


def estimate_cell_seconds(probe: dict, epochs: int, correction: float = 1.0) -> float:
    """Forward seconds per image from stage 1; training per train image per epoch: a timed training step's
    (``train_images_per_s``, when measured), else ~3 forwards; plus a val pass per epoch and the final val + test
    pass; ``correction`` = measured / estimated so far."""
    # the model's own throughput (pose kinds: on cached landmarks, as training reads them), else predict's
    per_image = 1.0 / max(probe.get("forward_images_per_s") or probe.get("images_per_s") or 1e-9, 1e-9)
    n_train, n_val, n_test = probe.get("n_train", 0), probe.get("n_val", 0), probe.get("n_test", 0)
    per_train_image = (1.0 / probe["train_images_per_s"] if probe.get("train_images_per_s")
                       else TRAIN_COST_PER_FORWARD * per_image)
    return (per_train_image * n_train * epochs + (n_val * (epochs + 1) + n_test) * per_image) * correction


def stage2_cells(out: Path, backbones: Sequence[str], strategies: Sequence[str], seeds: int) -> list[Cell]:
    """Every backbone x each strategy whose object trains the base x seed, seed by seed; a strategy that
    trains only the head is what the backbone's stage-1 probe cell already stands for."""
    from posetune.strategies import get_strategy

    trained = [s for s in strategies if get_strategy(s).trains_base]
    return [Cell.at(out, b, s, seed) for seed in range(seeds) for b in backbones for s in trained]


def run_stage2(opts: CompareOptions, cells: list[Cell], probes: dict[str, dict], index, key: dict,
               reporter: Reporter, budget_s: float | None, t_start: float,
               tracker: Tracker = NullTracker()) -> tuple[list[dict], list[dict]]:
    """Train every cell that fits the budget (finished ones are loaded, failed ones recorded), each cell that
    runs with a child of ``tracker``; returns (cell results, skipped cells with their reasons)."""
    from posetune.strategies import get_strategy

    results: list[dict] = []
    skipped: list[dict] = []
    # measured / estimated seconds of the cells run so far, per backbone kind: a pose cell's cost is mostly the
    # image pipeline, not its MLP, so its ratio says nothing about an image backbone's
    ratios: dict[str, list[float]] = {}
    for cell in cells:
        saved = cell.load(key)
        if saved:
            reporter.info(f"{cell.name}: finished earlier, skipped")
            results.append(saved)
            continue
        epochs = opts.epochs or get_strategy(cell.strategy).epochs
        kind_ratios = ratios.setdefault(probes[cell.backbone].get("kind", "image"), [])
        correction = sum(kind_ratios) / len(kind_ratios) if kind_ratios else 1.0
        estimate = estimate_cell_seconds(probes[cell.backbone], epochs, correction)
        if budget_s is not None:
            left = budget_s - (time.perf_counter() - t_start)
            if estimate > left:
                skipped.append(_skip(cell, estimate, left, budget_s, measured=bool(kind_ratios)))
                reporter.warn(f"{cell.name}: skipped, {skipped[-1]['reason']}")
                continue
        reporter.info(f"{cell.name}: training ({epochs} epochs, ~{estimate:.0f} s estimated)")
        t = time.perf_counter()
        try:
            result = train_cell(cell, opts, key, reporter, tracker)
        except Exception as exc:  # noqa: BLE001 - a failing cell is recorded; the sweep goes on
            reporter.stop()
            result = cell.save_failure(exc)
            reporter.warn(f"{cell.name}: failed: {result['error']}")
        wall = time.perf_counter() - t
        if result["status"] == "ok" and estimate > 0:
            kind_ratios.append(wall / (estimate / correction))
        results.append(result)
    return results, skipped


def _skip(cell: Cell, estimate: float, left: float, budget_s: float, measured: bool) -> dict:
    """The record of a cell the budget leaves out, with the reason people read."""
    basis = "measured cells" if measured else "stage-1 throughput"
    reason = (f"estimated {estimate:.0f} s ({basis}) but {max(left, 0):.0f} s of the "
              f"{budget_s / 60:g}-minute budget left")
    return {"cell": cell.name, "backbone": cell.backbone, "strategy": cell.strategy, "seed": cell.seed,
            "estimated_seconds": round(estimate, 3), "reason": reason}


class CellReporter(Reporter):
    """Progress bars, epochs and warnings of a training cell; its setup tables would drown the sweep."""

    def __init__(self, parent: Reporter, prefix: str):
        self.parent, self.prefix = parent, prefix

    def warn(self, msg: str) -> None:
        self.parent.warn(f"{self.prefix}: {msg}")

    def start(self, description: str, total: int) -> Callable[[int], None]:
        return self.parent.start(f"{self.prefix} {description}", total)

    def stop(self) -> None:
        self.parent.stop()

    def epoch(self, row: dict) -> None:
        self.parent.epoch(row)


def train_cell(cell: Cell, opts: CompareOptions, key: dict, reporter: Reporter,
               tracker: Tracker = NullTracker()) -> dict:
    """One `posetune train` run into the cell's folder, logged to a child of the sweep's ``tracker``; saves
    and returns the cell's result."""
    from posetune.training import train  # looked up at call time: tests replace posetune.training.train

    cell.reset()  # an unfinished or stale cell starts clean
    t = time.perf_counter()
    with tracker.child(cell.name, cell.path) as child:  # a cell that raises ends its child run FAILED
        result = train(opts.data, reporter=CellReporter(reporter, cell.name), backbone=cell.backbone,
                       strategy=cell.strategy, epochs=opts.epochs, seed=cell.seed, out=str(cell.path),
                       image_size=opts.image_size, batch_size=opts.batch_size, device=opts.device,
                       val_fraction=opts.val_fraction, label_level=opts.label_level,
                       # decode each image once per decode size for the whole sweep, not once per cell
                       cache="disk", cache_dir=str(cell.sweep / "decoded-cache"), tracker=child)
    wall = time.perf_counter() - t
    val = result.metrics.get("val", {})
    summary = {"status": "ok", "key": key, "backbone": cell.backbone, "strategy": cell.strategy, "seed": cell.seed,
               "run": str(cell.path), "val_accuracy": val.get("accuracy"), "val_macro_f1": val.get("macro_f1"),
               "test": summarize_test(result.metrics.get("test")), "train_seconds": round(result.train_seconds, 3),
               "wall_seconds": round(wall, 3), "epochs_run": len(result.history)}
    cell.save(summary)
    return summary
