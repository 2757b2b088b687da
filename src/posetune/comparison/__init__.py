"""`posetune compare`: which backbone and which strategy win on DATA, and what each costs.

Stage 1 (:mod:`.probe`) decodes every image once, runs each backbone once per image, and fits a
logistic probe and a k-NN on the pooled features: pretrained features predict the fine-tuned ranking
(Kornblith et al. 2019), so this ranks backbones for one forward pass per image, and measures what each
costs (:mod:`.costs`). The probe, folded into the model's head, is saved as the backbone's probe cell (a
run of the strategy that trains only the head, ``linear``). Stage 2 (:mod:`.finetune`) fine-tunes the
top-k backbones with every requested strategy that trains the base, over the seeds, through
:func:`posetune.training.train`. On `data synth --masks` data, :mod:`.reliance` measures each cell's
background reliance (class-activation mass outside the figure). :mod:`.leaderboard` ranks the cells and
writes the files.

Every cell (:mod:`.cells`) is a run folder under ``OUT/cells/`` plus a ``cell.json``; a rerun on the
same OUT skips the finished ones. (Named apart from ``posetune.compare`` so importing it never shadows
the function.)

>>> result = compare("DATASET", backbones="efficientnet_lite0,resnet18@random",
...                  strategies="linear,partial", epochs=3, out="cmp")        # doctest: +SKIP
>>> result.rows[0]["backbone"], result.best                                    # doctest: +SKIP
('efficientnet_lite0', PosixPath('cmp/best'))
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from posetune.comparison.cells import CELL_FILE, CELLS_DIR, Cell, cell_slug, reuse_keys
from posetune.comparison.costs import measure_costs
from posetune.comparison.finetune import (
    TRAIN_COST_PER_FORWARD,
    estimate_cell_seconds,
    run_stage2,
    stage2_cells,
    train_cell,
)
from posetune.comparison.leaderboard import (
    LEADERBOARD_COLUMNS,
    display_rows,
    leaderboard_rows,
    link_best,
    mark_pareto,
    write_leaderboard,
)
from posetune.comparison.probe import EXTRACT_BATCH, probe_backbone, run_stage1, top_backbones
from posetune.comparison.reliance import measure_reliance
from posetune.console import Reporter
from posetune.errors import UsageError
from posetune.evaluation import BOOTSTRAP_SAMPLES, CAM_BATCH, bootstrap_interval
from posetune.io import write_json
from posetune.options import CompareOptions
from posetune.tracking import Tracker, open_trackers

__all__ = [
    "BOOTSTRAP_SAMPLES", "CELL_FILE", "EXTRACT_BATCH", "LEADERBOARD_COLUMNS", "TRAIN_COST_PER_FORWARD", "Cell",
    "CompareResult", "bootstrap_interval", "cell_slug", "compare", "display_rows", "estimate_cell_seconds",
    "leaderboard_rows", "link_best", "mark_pareto", "measure_costs", "measure_reliance", "probe_backbone", "run_stage1", "run_stage2",
    "stage2_cells", "top_backbones", "train_cell", "write_leaderboard",
]


@dataclass
class CompareResult:
    out: Path
    rows: list[dict]  # the leaderboard, best first
    skipped: list[dict]  # cells not run: {"cell", "reason"}
    best: Path | None
    plots: list[Path]
    seconds: dict[str, float]  # wall time per phase: stage1, profile, stage2, reliance, total
    background: dict | None = None  # what background_reliance was measured on; None: DATA has no figure masks

    def as_dict(self) -> dict:
        return {"out": str(self.out), "best": str(self.best) if self.best else None, "rows": self.rows,
                "skipped": self.skipped, "plots": [str(p) for p in self.plots], "seconds": self.seconds,
                "background": self.background}


def compare(data: str | Path | None = None, reporter: Reporter | None = None, verbose: bool = False,
            **options) -> CompareResult:
    """Rank backbones on cached features, fine-tune the top-k with each strategy, write the leaderboard."""
    from posetune.console import RichReporter

    opts = CompareOptions.from_sources(None, data=str(data) if data is not None else None, **options)
    reporter = reporter or (RichReporter() if verbose else Reporter())
    return _compare(opts, reporter)


def _compare(opts: CompareOptions, reporter: Reporter) -> CompareResult:
    from posetune.data.layouts import discover
    from posetune.devices import resolve_device
    from posetune.runtime import tune_allocator

    t_start = time.perf_counter()
    specs = opts.backbone_specs()  # validated at the door (CompareOptions.from_sources)
    device = resolve_device(opts.device)
    index = discover(opts.data, val_fraction=opts.val_fraction, seed=0, label_level=opts.label_level)
    index.require_val("compare", "ranks backbones on")
    for w in index.warnings:
        reporter.warn(w)
    tune_allocator()
    out = Path(opts.out or Path("runs") / f"compare-{Path(opts.data).stem or 'data'}")
    if out.is_dir() and any(out.iterdir()) and not (out / "compare.json").is_file():
        raise UsageError(f"--out {out} already exists and is not a posetune compare sweep; choose another --out "
                         "(posetune never writes into a folder it did not create)")
    (out / CELLS_DIR).mkdir(parents=True, exist_ok=True)
    write_json(out / "compare.json", {**dataclasses.asdict(opts), "device": str(device)})
    reporter.info(f"compare {len(specs)} backbones x {', '.join(opts.strategies)} on {opts.data} "
                  f"({len(index.samples)} images, {len(index.classes)} classes), device {device} -> {out}")
    # A rerun of an unfinished sweep continues its MLflow run; every cell run now gets a child of it.
    with open_trackers(opts.log, out, opts.log_dir, opts.mlflow_uri, resume=True, sweep=True) as tracker:
        tracker.log_params({k: v for k, v in dataclasses.asdict(opts).items()
                            if k not in ("log", "log_dir", "mlflow_uri")} | {"device": str(device)})
        result = _sweep(opts, specs, index, device, out, reporter, tracker, t_start)
        best = result.rows[0] if result.rows else {}
        tracker.log_results(out, {"best": {k: best.get(k) for k in ("val_accuracy", "test_accuracy", "test_macro_f1")}})
    return result


def _sweep(opts: CompareOptions, specs: list, index, device, out: Path, reporter: Reporter, tracker: Tracker,
           t_start: float) -> CompareResult:
    """Stage 1, stage 2 and the leaderboard of the sweep in ``out``."""
    probe_key, train_key = reuse_keys(opts)
    seconds: dict[str, float] = {}
    probes = run_stage1(opts, specs, index, device, out, probe_key, reporter, seconds, tracker)

    # Stage 2: top-k backbones by probe val accuracy (then k-NN), each requested strategy that trains the base.
    top = top_backbones(probes, opts.top_k)
    cells = stage2_cells(out, top, opts.strategies, opts.seeds)
    if cells:
        trained = list(dict.fromkeys(c.strategy for c in cells))
        reporter.info(f"stage 2: {', '.join(top)} x {', '.join(trained)} x {opts.seeds} seed(s) = {len(cells)} cells")
    t2 = time.perf_counter()
    budget_s = opts.budget_minutes * 60 if opts.budget_minutes else None
    results, skipped = run_stage2(opts, cells, probes, index, train_key, reporter, budget_s, t_start, tracker)
    seconds["stage2"] = round(time.perf_counter() - t2, 2)
    t3 = time.perf_counter()
    background = measure_reliance(list(probes.values()) + results, opts.data, index, opts.reliance_images,
                                  opts.device, min(opts.batch_size, CAM_BATCH), reporter)
    seconds["reliance"] = round(time.perf_counter() - t3, 2)

    rows = leaderboard_rows(probes, results, opts.strategies)
    best = link_best(out, rows)
    plots = write_leaderboard(out, rows, skipped, background)
    seconds["total"] = round(time.perf_counter() - t_start, 2)
    write_json(out / "leaderboard.json", {"rows": rows, "skipped": skipped, "best": str(best) if best else None,
                                          "seconds": seconds, "background": background})
    return CompareResult(out=out, rows=rows, skipped=skipped, best=best, plots=plots, seconds=seconds,
                         background=background)
