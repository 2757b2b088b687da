"""Background reliance of every cell of a compare sweep on synthetic data (`data synth --masks`): the share
of each cell's class-activation mass (posetune.cam, HiResCAM of the predicted class) that falls outside the
figure, on the same bounded set of images for every cell, so the cells compare like for like.

The images come from the test split (the val split when DATA has no test images), taken class by class in
turn (sorted paths) up to ``--reliance-images``; only images with a figure mask count. A `pose` or `NAME+pose`
cell's figure is null with its reason (LANDMARK_REASON): HiResCAM would see only the fusion CNN's share of a
decision the landmarks take part in (and `pose` reads no pixels at all). DATA without masks
measures nothing: the leaderboard's column is then empty (null in JSON), never zero. The figure is saved in
each cell's ``cell.json`` (``background``), so a rerun of the sweep measures only cells that lack it.

>>> reliance_images([Sample("a/x.jpg", 0, "test"), Sample("a/y.jpg", 0, "test"), Sample("b/z.jpg", 1, "test")], 2)
['a/x.jpg', 'b/z.jpg']
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from posetune.comparison.cells import CELL_FILE
from posetune.console import Reporter
from posetune.data.layouts import Sample


def reliance_split(index) -> tuple[str, list[Sample]]:
    """(split name, its samples): test, else val (a DATA with neither gives val and no samples)."""
    test = index.split("test")
    return ("test", test) if test else ("val", index.split("val"))


def reliance_images(samples: Sequence[Sample], limit: int) -> list[str]:
    """Up to ``limit`` paths, one class after another in turn (each class's paths sorted), so a small limit
    still sees every class."""
    by_class: dict[int, list[str]] = {}
    for s in sorted(samples, key=lambda s: (s.label, s.path)):
        by_class.setdefault(s.label, []).append(s.path)
    queues = [iter(paths) for _, paths in sorted(by_class.items())]
    chosen: list[str] = []
    while queues and len(chosen) < limit:
        for queue in list(queues):
            path = next(queue, None)
            if path is None:
                queues.remove(queue)
            elif len(chosen) < limit:
                chosen.append(path)
    return chosen


def measure_reliance(cells: Sequence[dict], data: str, index, limit: int, device, batch_size: int,
                     reporter: Reporter) -> dict | None:
    """Measure (or keep, where cell.json already holds it for the same images) each finished cell's
    ``background`` entry; returns what was measured on ({split, images, requested}) or None when DATA has no
    figure masks or ``limit`` is 0, with ``background_area`` (the mean share of those images outside the figure:
    what a map with no preference for the figure would score)."""
    from posetune.data.synth.dataset import has_masks

    if limit <= 0 or not has_masks(data):
        _forget(cells)  # an earlier figure (other data, or asked for) is not this sweep's
        return None
    split, samples = reliance_split(index)
    paths = reliance_images(samples, limit)
    setting = {"split": split, "images": len(paths), "requested": limit}
    if not paths:
        reporter.warn(f"background reliance: {data} has no {split} images to measure it on")
        return setting
    _forget([c for c in cells if (c.get("background") or {}).get("setting") != setting])
    todo = [c for c in cells if c.get("status") == "ok" and "background" not in c]
    if todo:
        reporter.info(f"background reliance of {len(todo)} cell(s) on {len(paths)} {split} images")
    for cell in todo:
        try:
            figure = {"background_reliance": None, "reason": LANDMARK_REASON} if _uses_landmarks(cell) else \
                _cell_reliance(cell["run"], data, paths, device, batch_size, reporter)
        except Exception as exc:  # noqa: BLE001 - a cell whose maps fail keeps its scores; the column stays empty
            reporter.stop()
            reporter.warn(f"background reliance of {Path(cell['run']).name} failed: {type(exc).__name__}: {exc}"
                          .splitlines()[0][:300])
            continue
        cell["background"] = {"setting": setting, **figure}
        _save_cell(cell)
    areas = [c["background"]["background_area"] for c in cells if c.get("background", {}).get("background_area") is not None]
    return {**setting, "background_area": sum(areas) / len(areas) if areas else None}


LANDMARK_REASON = ("not measured: a pose / NAME+pose model also reads landmark features, which a class-activation "
                   "map of its pixels does not account for")


def _uses_landmarks(cell: dict) -> bool:
    """A cell of a `pose` / `NAME+pose` backbone (its run's model.json kind)."""
    from posetune.run import RunDir

    return RunDir(cell["run"]).read_json("model.json").get("kind", "image") != "image"


def _cell_reliance(run: str, data: str, paths: list[str], device, batch_size: int, reporter: Reporter) -> dict:
    from posetune.cam import figure_reliance
    from posetune.predict.torch_engine import Classifier
    from posetune.run import RunDir

    clf = Classifier(RunDir(run), device=str(device), optimize=False)  # gradients through the training graph
    return figure_reliance(clf, data, paths, batch_size=batch_size, progress=reporter,
                           description=f"{Path(run).name} background reliance") or {}


def _forget(cells: Sequence[dict]) -> None:
    """Drop a background figure from these cells' results in memory (their cell.json is rewritten only when
    measured again)."""
    for cell in cells:
        cell.pop("background", None)


def _save_cell(cell: dict) -> None:
    from posetune.io import write_json

    write_json(Path(cell["run"]) / CELL_FILE, cell)
