"""`posetune data check`: the audit to run before training.

Counts and resolutions per split and class, unreadable / truncated / zero-byte / mislabelled files,
exact duplicates (content hash) and near-duplicates (perceptual hash) within and across splits —
a train/test leak is the most common hidden error in yoga datasets — and class folders that
differ between splits. Problems make the exit code 1.

``--label-issues`` (likely mislabelled and out-of-place images, judged from a pretrained backbone's
features) needs the backbone layer, which this data layer may not import: its options are declared here
with the others, and :func:`posetune.label_issues.check_data` runs the audit below and then that job.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from posetune.checks import (
    BATCH_SIZE,
    DATA,
    IMAGE_SIZE,
    LABEL_LEVELS,
    SEED,
    Bool,
    Choice,
    Int,
    InvalidOption,
    Options,
    OutputPath,
    Text,
    option,
)
from posetune.data.images import ImageError, extension_mismatch, load_image
from posetune.data.layouts import EXCLUDED, DataIndex, discover
from posetune.devices import DEVICE
from posetune.errors import UsageError
from posetune.io import file_digest

NEAR_DUPLICATE_BITS = 6  # max Hamming distance between 64-bit pHashes to call two images near-duplicates


LABEL_ISSUE_OUTPUTS = ("fix_manifest", "contact_sheet")


@dataclass
class CheckOptions(Options):
    """Every option of `posetune data check` (same names as the flags; ``max_bits`` is Python API only).

    The label-issue options (``label_issues`` and those after it) apply with ``label_issues=True`` only; the
    backbone spec is resolved by :mod:`posetune.label_issues` before any image is read."""

    data: str = option("", DATA, flag="DATA")
    near_duplicates: bool = option(True, Bool())
    label_level: int = option(6, Choice(*LABEL_LEVELS))
    max_bits: int = option(NEAR_DUPLICATE_BITS, Int(0, 64), flag="max_bits")  # of a 64-bit perceptual hash
    # BlazePose over every image (posetune.pose.audit): "auto" = when posetune[pose] is installed
    no_person: str = option("auto", Choice("auto", "yes", "no"))
    label_issues: bool = option(False, Bool())
    backbone: str = option("efficientnet_lite0", Text("a timm model name, NAME@random or NAME@PATH"))
    image_size: int | None = option(None, Int(*IMAGE_SIZE), hint="omit it for the backbone's pretrained size")
    folds: int = option(5, Int(2, 20))  # of the stratified k-fold that gives every image an out-of-fold prediction
    batch_size: int = option(32, Int(*BATCH_SIZE))
    device: str = option("auto", DEVICE)
    seed: int = option(0, Int(*SEED))  # the folds' shuffle
    fix_manifest: str | None = option(None, OutputPath(folder=False))
    contact_sheet: str | None = option(None, OutputPath(folder=False))

    def check_together(self, label) -> None:
        """The output files need --label-issues, have the right suffix, and lie outside DATA (never touched)."""
        for name, suffix in zip(LABEL_ISSUE_OUTPUTS, (".csv", ".png")):
            value = getattr(self, name)
            if value is None:
                continue
            if not self.label_issues:
                raise InvalidOption(f"{label(name)} needs --label-issues (it is one of that job's outputs)")
            if Path(value).suffix.lower() != suffix:
                raise InvalidOption(f"{label(name)} must be a {suffix} file, not {value!r}")
            inside_data(value, self.data, label(name))


def inside_data(path: str | Path, data: str | Path, label: str) -> None:
    """Refuse an output path inside the DATA folder, or the DATA manifest itself: posetune never writes there."""
    target, root = Path(path).resolve(), Path(data).resolve()
    if target == root or (root.is_dir() and root in target.parents):
        raise UsageError(f"{label} {path} is inside DATA ({data}); give a path outside it "
                         "(posetune never writes into the data it checks)")


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
    (non-empty means exit 1). ``label_issues=True`` is :func:`posetune.check_data`'s (the backbone layer's)."""
    opts = CheckOptions.build("posetune.check_data", data=data, **options)
    if opts.label_issues:
        raise UsageError("label_issues=True needs the backbone layer: call posetune.check_data(DATA, label_issues=True)")
    return audit(opts)[0]


def audit(opts: CheckOptions) -> tuple[dict, DataIndex]:
    """The audit of validated options: (the report, the index of DATA without the unreadable files)."""
    data, near_duplicates, max_bits = opts.data, opts.near_duplicates, opts.max_bits
    index = discover(data, val_fraction=0.0, label_level=opts.label_level, strict=False)
    # imported here, once, rather than first by 8 threads at once (imagehash.phash imports scipy.fftpack on its
    # first call): concurrent first imports of one package can collide (runtime.warm_imports says how)
    import imagehash  # noqa: F401
    import scipy.fftpack  # noqa: F401

    with ThreadPoolExecutor(8) as pool:
        infos = list(pool.map(_inspect, [s.path for s in index.samples]))
    by_path = {i["path"]: i for i in infos}
    unreadable = [{"path": i["path"], "reason": i["error"]} for i in infos if "error" in i]
    unreadable += [{"path": p, "reason": r} for p, r in index.skipped if r != EXCLUDED]
    excluded = [p for p, r in index.skipped if r == EXCLUDED]
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
    index.drop({i["path"]: i["error"] for i in infos if "error" in i})
    return {
        "data": str(data), "layout": index.layout, "classes": index.classes, "counts": table,
        "imbalance_ratio": imbalance, "unreadable": unreadable, "mislabelled": mislabelled,
        "exact_duplicates": exact, "near_duplicates": near, "leaks": leaks,
        "class_mismatch": index.problems, "warnings": index.warnings, "problems": problems, "excluded": excluded,
    }, index


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
    if report["excluded"]:
        reporter.info(f"{len(report['excluded'])} rows of the manifest are excluded (its exclude column) and not checked")
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
    if report.get("label_issues"):
        _print_label_issues(report["label_issues"], reporter, root)
    if report["problems"]:
        reporter.info("[red]problems:[/red] " + "; ".join(report["problems"]))
    else:
        reporter.info("[green]no problems found[/green]")


def _pair_row(group: dict) -> dict:
    """One table row for an exact-duplicate group or a near-duplicate pair."""
    first, second = (group["a"], group["b"]) if "bits" in group else (group["paths"][0], ", ".join(group["paths"][1:]))
    return {"first": first, "second": second, "splits": "/".join(group["splits"]),
            "kind": f"near ({group['bits']} bits)" if "bits" in group else "exact"}


SHOWN_ISSUES = 30  # rows of the label-issue table printed; --json has them all


def _print_label_issues(result: dict, reporter, root: str) -> None:
    """The ranked label-issue table (most suspect first), how it was judged, and the files written."""
    for w in result["warnings"]:
        reporter.warn(w)
    issues = result["issues"]
    rows = [{"#": i + 1, "path": r["path"].replace(root, ""), "split": r["split"], "given": r["given"],
             "suggested": r["suggested"] or "(remove?)", "score": r["score"], "kind": r["kind"]}
            for i, r in enumerate(issues[:SHOWN_ISSUES])]
    more = f", {len(issues) - SHOWN_ISSUES} more in --json" if len(issues) > SHOWN_ISSUES else ""
    reporter.table(f"label issues, most suspect first ({result['counts']['mislabel']} likely mislabelled, "
                   f"{result['counts']['outlier']} out of place{more})", rows)
    reporter.info(f"label issues: {result['images']} images judged by {result['backbone']} features at "
                  f"{result['image_size']} px; out-of-fold accuracy of the given labels "
                  f"{result['oof_accuracy']:.3f} ({result['folds']}-fold x {result['repeats']} logistic regression, "
                  f"C {result['C']}); {result['seconds']['total']:.1f} s")
    if result.get("contact_sheet"):
        reporter.info(f"contact sheet of the flagged images: {result['contact_sheet']}")
    if result.get("fix_manifest"):
        reporter.info(f"fix manifest: {result['fix_manifest']} (suggested labels applied, outliers excluded; review it, "
                      f"then posetune train {result['fix_manifest']})")
