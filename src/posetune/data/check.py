"""`posetune data check`: the audit to run before training.

Counts and resolutions per split and class, unreadable / truncated / zero-byte / mislabelled files,
exact duplicates (content hash) and near-duplicates (perceptual hash) within and across splits —
a train/test leak is the most common hidden error in yoga datasets — and class folders that
differ between splits. Problems make the exit code 1.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from posetune.checks import DATA, LABEL_LEVELS, Bool, Choice, Int, Options, option
from posetune.data.images import ImageError, extension_mismatch, load_image
from posetune.data.layouts import DataIndex, discover
from posetune.io import file_digest

NEAR_DUPLICATE_BITS = 6  # max Hamming distance between 64-bit pHashes to call two images near-duplicates


@dataclass
class CheckOptions(Options):
    """Every option of `posetune data check` (same names as the flags; ``max_bits`` is Python API only)."""

    data: str = option("", DATA, flag="DATA")
    near_duplicates: bool = option(True, Bool())
    label_level: int = option(6, Choice(*LABEL_LEVELS))
    max_bits: int = option(NEAR_DUPLICATE_BITS, Int(0, 64), flag="max_bits")  # of a 64-bit perceptual hash


def exact_duplicates(index: DataIndex) -> list[dict]:
    """Groups of byte-identical files: [{"paths": [...], "splits": [...], "cross_split": bool}]."""
    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(partial(file_digest, algorithm="blake2b"), [s.path for s in index.samples]))
    groups: dict[str, list] = defaultdict(list)
    for s, d in zip(index.samples, digests):
        groups[d].append(s)
    return [_group(members) for members in groups.values() if len(members) > 1]


def _group(members) -> dict:
    splits = sorted({m.split for m in members})
    return {"paths": [m.path for m in members], "splits": splits, "cross_split": len(splits) > 1}


def _inspect(path: str) -> dict:
    """Decode one file fully (catches truncation); size and perceptual hash from a small copy."""
    import imagehash

    info: dict = {"path": path}
    try:
        mismatch = extension_mismatch(path) if Path(path).stat().st_size else None
        if mismatch:
            info["mislabelled"] = mismatch
        img = load_image(path, min_side=64)  # first: it names every reason a file cannot be used
        with Image.open(path) as raw:
            info["size"] = raw.size
        info["phash"] = int(str(imagehash.phash(img)), 16)
    except ImageError as exc:
        info["error"] = str(exc)
    except Image.DecompressionBombError as exc:
        info["error"] = f"too many pixels (decompression bomb guard): {exc}"
    except OSError as exc:  # gone, a dangling link, no permission
        info["error"] = f"unreadable: {exc.strerror or exc}"
    return info


def find_near_duplicates(index: DataIndex, hashes: dict[str, int], max_bits: int = NEAR_DUPLICATE_BITS) -> list[dict]:
    """Pairs of images whose perceptual hashes differ in at most ``max_bits`` bits (not byte-identical)."""
    samples = [s for s in index.samples if s.path in hashes]
    if len(samples) < 2:
        return []
    bits = np.unpackbits(np.array([hashes[s.path] for s in samples], dtype=">u8").view(np.uint8).reshape(-1, 8), axis=1)
    pairs = []
    for i in range(len(samples) - 1):
        dist = (bits[i + 1:] != bits[i]).sum(1)  # vectorised Hamming distance to every later image
        for j in np.nonzero(dist <= max_bits)[0]:
            a, b = samples[i], samples[i + 1 + j]
            pairs.append({"a": a.path, "b": b.path, "bits": int(dist[j]), "splits": sorted({a.split, b.split}),
                          "cross_split": a.split != b.split})
    return pairs


def check_data(data: str | Path, **options) -> dict:
    """Run the audit (options as :class:`CheckOptions`); returns a JSON-able report with ``problems``
    (non-empty means exit 1)."""
    opts = CheckOptions.build("posetune.check_data", data=data, **options)
    data, near_duplicates, max_bits = opts.data, opts.near_duplicates, opts.max_bits
    index = discover(data, val_fraction=0.0, label_level=opts.label_level, strict=False)
    with ThreadPoolExecutor(8) as pool:
        infos = list(pool.map(_inspect, [s.path for s in index.samples]))
    by_path = {i["path"]: i for i in infos}
    unreadable = [{"path": i["path"], "reason": i["error"]} for i in infos if "error" in i]
    unreadable += [{"path": p, "reason": r} for p, r in index.skipped]
    mislabelled = [{"path": i["path"], "reason": i["mislabelled"]} for i in infos if "mislabelled" in i]

    table = []
    for split in ("train", "val", "test"):
        members = index.split(split)
        if not members:
            continue
        counts = Counter(s.label for s in members)
        for label, name in enumerate(index.classes):
            sizes = [by_path[s.path]["size"] for s in members if s.label == label and "size" in by_path[s.path]]
            table.append({"split": split, "class": name, "images": counts[label],
                          "min_size": "x".join(map(str, min(sizes, key=lambda wh: wh[0] * wh[1]))) if sizes else "",
                          "max_size": "x".join(map(str, max(sizes, key=lambda wh: wh[0] * wh[1]))) if sizes else ""})
    imbalance = {}
    for split in {r["split"] for r in table}:
        n = [r["images"] for r in table if r["split"] == split]
        imbalance[split] = round(max(n) / min(n), 2) if min(n) else None

    exact = exact_duplicates(index)
    exact_paths = {p for g in exact for p in g["paths"]}
    near = []
    if near_duplicates:
        hashes = {p: i["phash"] for p, i in by_path.items() if "phash" in i}
        near = [pr for pr in find_near_duplicates(index, hashes, max_bits)
                if not (pr["a"] in exact_paths and pr["b"] in exact_paths)]
    leaks = [g for g in exact if g["cross_split"]] + [p for p in near if p["cross_split"]]

    problems = []
    if unreadable:
        problems.append(f"{len(unreadable)} unreadable or unusable files")
    if mislabelled:
        problems.append(f"{len(mislabelled)} files whose extension does not match their content")
    if leaks:
        problems.append(f"{len(leaks)} duplicates across splits (train/test leak)")
    problems += index.problems
    return {
        "data": str(data), "layout": index.layout, "classes": index.classes, "counts": table,
        "imbalance_ratio": imbalance, "unreadable": unreadable, "mislabelled": mislabelled,
        "exact_duplicates": exact, "near_duplicates": near, "leaks": leaks,
        "class_mismatch": index.problems, "warnings": index.warnings, "problems": problems,
    }


def print_report(report: dict, reporter) -> None:
    """Tables for people; file paths shown relative to DATA so they fit."""
    root = str(Path(report["data"])) + "/"

    def rel(rows: list[dict]) -> list[dict]:
        return [{k: v.replace(root, "") if isinstance(v, str) else v for k, v in r.items()} for r in rows]

    reporter.table(f"{report['data']} ({report['layout']}): images per split and class", report["counts"])
    reporter.info("imbalance ratio (largest / smallest class): "
                  + ", ".join(f"{s} {r}" for s, r in sorted(report["imbalance_ratio"].items())))
    if report["unreadable"]:
        reporter.table("unreadable files", rel(report["unreadable"]))
    if report["mislabelled"]:
        reporter.table("mislabelled extensions", rel(report["mislabelled"]))
    if report["leaks"]:
        reporter.table("train/test leaks (the same image on both sides of a split)", rel([_pair_row(g) for g in report["leaks"]]))
    within = [g for g in report["exact_duplicates"] if not g["cross_split"]]
    within += [p for p in report["near_duplicates"] if not p["cross_split"]]
    if within:
        reporter.table("duplicates within a split", rel([_pair_row(g) for g in within]))
    for w in report["warnings"] + report["class_mismatch"]:
        reporter.warn(w)
    if report["problems"]:
        reporter.info("[red]problems:[/red] " + "; ".join(report["problems"]))
    else:
        reporter.info("[green]no problems found[/green]")


def _pair_row(group: dict) -> dict:
    """One table row for an exact-duplicate group or a near-duplicate pair."""
    first, second = (group["a"], group["b"]) if "bits" in group else (group["paths"][0], ", ".join(group["paths"][1:]))
    return {"first": first, "second": second, "splits": "/".join(group["splits"]),
            "kind": f"near ({group['bits']} bits)" if "bits" in group else "exact"}
