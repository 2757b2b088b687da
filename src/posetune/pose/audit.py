"""``data check``'s no-person audit: per class, the images where BlazePose finds nobody.

In scraped yoga sets these are often not yoga photos at all. Landmarks go through the landmark cache, so a
later ``train --backbone pose`` on the same files does not look for them again.
"""

from __future__ import annotations

import importlib.util
from collections import defaultdict

from posetune.console import Reporter
from posetune.data.layouts import DataIndex
from posetune.errors import UsageError
from posetune.pose.landmarks import INSTALL_HINT


def mediapipe_installed() -> bool:
    """Without importing it (mediapipe's import costs a second and logs)."""
    return importlib.util.find_spec("mediapipe") is not None


def find_no_person(index: DataIndex, reporter: Reporter, cache_dir=None) -> dict:
    """{"per_class": [{split, class, images, no_person, detection_rate}], "paths": {class: [paths]},
    "unreadable": [paths]}: every readable image of the index looked at once."""
    from posetune.pose.cache import LandmarkCache

    cache = LandmarkCache(cache_dir)
    seen: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    paths: dict[str, list[str]] = defaultdict(list)
    unreadable: list[str] = []
    advance = reporter.start("looking for a person (BlazePose)", len(index.samples))
    try:
        for sample in index.samples:
            try:
                found = cache.get_or_extract(sample.path)[0]
            except (OSError, ValueError, SyntaxError):  # PIL's errors for a corrupt file: skipped and reported
                unreadable.append(sample.path)
                advance(1)
                continue
            name = index.classes[sample.label]
            counts = seen[(sample.split, name)]
            counts[0] += 1
            if found is None:
                counts[1] += 1
                paths[name].append(sample.path)
            advance(1)
    finally:
        reporter.stop()
    rows = [{"split": split, "class": name, "images": n, "no_person": k, "detection_rate": round(1 - k / n, 3)}
            for (split, name), (n, k) in sorted(seen.items())]
    return {"per_class": rows, "paths": dict(paths), "unreadable": unreadable,
            "cache": {"hits": cache.hits, "misses": cache.misses}}


def add_no_person(report: dict, index: DataIndex, wanted: str, reporter: Reporter) -> dict:
    """``report["no_person"]`` per ``wanted`` ("auto": when posetune[pose] is installed; "yes": or a one-line
    error; "no": null). Informational, not a problem: a dataset need not show people."""
    installed = mediapipe_installed()
    if wanted == "yes" and not installed:
        raise UsageError(f"--no-person yes: {INSTALL_HINT}, or leave --no-person at auto")
    report["no_person"] = find_no_person(index, reporter) if wanted != "no" and installed else None
    return report


def print_no_person(section: dict | None, reporter: Reporter, root: str) -> None:
    if not section:
        return
    reporter.table("people found by BlazePose, per split and class", section["per_class"])
    for name, paths in section["paths"].items():
        shown = ", ".join(p.replace(root, "") for p in paths[:10])
        more = f" (+{len(paths) - 10} more; --json lists all)" if len(paths) > 10 else ""
        reporter.info(f"{name}: no person in {shown}{more}")
