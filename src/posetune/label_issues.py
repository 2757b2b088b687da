"""`posetune data check DATA --label-issues`: likely mislabelled and out-of-place images.

How an image is judged (seconds, not a fine-tune):

1. every image is decoded once, at the backbone's input size, and turned into pooled features by the
   backbone's inference-optimised copy (:func:`posetune.features.extract_features`, as `compare`'s stage 1);
   `NAME+pose` appends each image's landmark features (BlazePose, the landmark cache), `pose` uses them alone;
2. every image gets out-of-fold class probabilities: stratified k-fold (``--folds``, 5) logistic regression
   on the standardised features, repeated over 3 shuffles and averaged, so no image is judged by a model
   that saw its label; the inverse L2 strength C is the one of a small grid with the lowest out-of-fold
   log-loss of the given labels;
3. cleanlab's ``find_label_issues`` (confident learning, ``filter_by="both"``: examples flagged both by the
   estimated noise rates and as their class's least confident) names the likely mislabelled images; the
   suggestion is the most probable other class, the score ``1 - p(given label)``;
4. cleanlab's ``OutOfDistribution`` scores each image by its mean cosine distance to its 10 nearest
   neighbours in feature space (itself excluded); an image beyond Tukey's far fence of those distances
   (Q3 + 3 IQR) is out of place (kind ``outlier``: remove it, or it belongs to no class here), scored
   ``1 - cleanlab's score``. An image both far out and mislabelled is reported as an outlier.

Outputs: the ranked rows in the report's ``label_issues`` (the table, ``--json``), a contact sheet PNG of
the flagged images, and with ``--fix-manifest OUT.csv`` a CSV manifest posetune trains from (suggested
labels applied, outliers excluded, the given labels kept beside them). Nothing under DATA is written, and
a file posetune did not write is never overwritten.

Where it sits: the audit (``posetune.data.check``) belongs to the data layer, which may not import the
backbones, the inference rewrite or the feature extraction this job needs. So this module sits in the layer
contract just above ``features`` (and below ``options`` and the CLI): it runs the data layer's audit, then
its own job, and returns one report; ``posetune.check_data`` and `posetune data check` call it.

>>> report = check_data("DATASET", label_issues=True, fix_manifest="fixed.csv")   # doctest: +SKIP
>>> [(r["path"], r["given"], r["suggested"], r["kind"]) for r in report["label_issues"]["issues"]][:1]  # doctest: +SKIP
[('DATASET/TRAIN/tree/tree_017.jpg', 'tree', 'plank', 'mislabel')]
"""

from __future__ import annotations

import io
import json
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from posetune.console import Reporter
from posetune.data.check import CheckOptions, audit, inside_data
from posetune.errors import UsageError
from posetune.io import atomic_write_bytes, file_sha256, write_csv, write_json
from posetune.pose import pose_dim_of, require_mediapipe
from posetune.pose.audit import add_no_person
from posetune.runtime import warm_imports
from posetune.version import __version__

if TYPE_CHECKING:  # torch-heavy; imported inside the functions that run
    from posetune.data.layouts import DataIndex

C_GRID = (0.001, 0.01, 0.1)  # inverse L2 strength on standardised features; the lowest out-of-fold log-loss wins
REPEATS = 3  # k-fold shuffles averaged: steadier probabilities for a few more seconds of fitting
FILTER_BY = "both"  # cleanlab's most conservative noise-rate rule: fewer false alarms than its default
OUTLIER_K = 10  # neighbours of cleanlab's OutOfDistribution
OUTLIER_FENCE = 3.0  # Tukey's far fence, Q3 + 3 IQR of the neighbour distances
MIN_FOR_OUTLIERS = 2 * OUTLIER_K  # fewer images give no stable distance distribution
SHEET_MAX = 60  # images on the contact sheet, most suspect first
MARKER = "posetune data check --label-issues"  # the sheet's PNG Software entry, the manifest sidecar's written_by
FIX_COLUMNS = ("path", "label", "split", "exclude", "given_label", "suggested_label", "issue", "score")


def check_data(data, reporter: Reporter | None = None, verbose: bool = False, **options) -> dict:
    """The data audit (options as :class:`~posetune.data.check.CheckOptions`), and with
    ``label_issues=True`` the label-issue job; returns the report of `posetune data check --json`.

    ``problems`` (non-empty means exit 1) names the label issues found, as it names the audit's problems."""
    from posetune.console import RichReporter

    opts = CheckOptions.build("posetune.check_data", data=data, **options)
    reporter = reporter or (RichReporter() if verbose else Reporter())
    if not opts.label_issues:
        report, index = audit(opts)
        return add_no_person(report, index, opts.no_person, reporter)
    from posetune.backbones import parse_spec

    spec = parse_spec(opts.backbone)  # an unknown backbone fails here, with close names, before any image is read
    sheet = opts.contact_sheet or default_sheet(opts.data)
    inside_data(sheet, opts.data, "--contact-sheet")
    check_sheet_owner(sheet)
    if opts.fix_manifest:
        check_manifest_owner(opts.fix_manifest)
    report, index = audit(opts)
    add_no_person(report, index, opts.no_person, reporter)
    result = find_label_issues(opts, spec, index, reporter, sheet)
    report["label_issues"] = result
    counts = result["counts"]
    if counts["mislabel"] or counts["outlier"]:
        report["problems"].append(f"{counts['mislabel'] + counts['outlier']} likely label issues "
                                  f"({counts['mislabel']} mislabelled, {counts['outlier']} out of place)")
    return report


def default_sheet(data: str) -> str:
    """``<DATA name>-label-issues.png`` in the current folder."""
    root = Path(data).resolve()
    return f"{(root.stem if root.is_file() else root.name) or 'data'}-label-issues.png"


def find_label_issues(opts: CheckOptions, spec, index: DataIndex, reporter: Reporter, sheet: str) -> dict:
    """Features -> out-of-fold probabilities -> cleanlab's label issues and outliers -> rows and files."""
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    notes: list[str] = []
    # scikit-learn and cleanlab (which brings pandas): ~2.5 s of imports on a 2-core CPU, done while the backbone
    # is built and the images decode, and joined before this thread imports them itself (runtime.warm_imports)
    warm = warm_imports(["cleanlab.filter", "cleanlab.outlier", "sklearn.linear_model", "sklearn.model_selection"])
    feats, images, info = extract(opts, spec, index, reporter, seconds, notes)
    warm.join()
    samples = [s for s in index.samples if s.path in images]
    counts = np.bincount([s.label for s in samples], minlength=len(index.classes))
    judged_classes = [c for c in range(len(index.classes)) if counts[c] >= 2]
    left_out = [f"{index.classes[c]} ({counts[c]})" for c in range(len(index.classes)) if 0 < counts[c] < 2]
    if left_out:
        notes.append(f"classes with fewer than 2 images are not judged: {', '.join(left_out)}")
    keep = [i for i, s in enumerate(samples) if s.label in judged_classes]
    samples = [samples[i] for i in keep]
    x = feats[keep].astype(np.float64)
    remap = {c: j for j, c in enumerate(judged_classes)}
    y = np.array([remap[s.label] for s in samples], dtype=np.int64)
    names = [index.classes[c] for c in judged_classes]

    result = {"backbone": opts.backbone, **info, "images": len(samples), "classes": names, "folds": 0,
              "repeats": REPEATS, "C": None, "oof_accuracy": None, "method": METHOD, "issues": [],
              "counts": {"mislabel": 0, "outlier": 0}, "contact_sheet": None, "fix_manifest": None,
              "warnings": notes, "seconds": seconds}
    if len(names) < 2:
        notes.append("label issues need at least 2 classes with 2 or more readable images each; none judged")
        result["images"] = 0
        _finish(opts, index, result, [], images, sheet, t0)
        return result

    folds = min(opts.folds, int(np.bincount(y).min()))
    if folds < opts.folds:
        notes.append(f"--folds {opts.folds} lowered to {folds}: the smallest class has {folds} images")
    t = time.perf_counter()
    outlier, outlier_score = outliers(x, notes)
    seconds["outliers"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    with threadpool_limits(limits=1):  # small matrices: one BLAS thread is faster, and kind to a busy machine
        probs, c = out_of_fold_probabilities(x, y, folds, opts.seed, exclude=outlier)
        mislabelled = _cleanlab_issues(y, probs, notes)
    seconds["fit"] = round(time.perf_counter() - t, 2)

    p_given = probs[np.arange(len(y)), y]
    others = probs.copy()
    others[np.arange(len(y)), y] = -1.0
    suggested = others.argmax(1)
    rows = []
    for i in np.flatnonzero(mislabelled | outlier):
        kind = "outlier" if outlier[i] else "mislabel"
        rows.append({"path": samples[i].path, "split": samples[i].split, "given": names[y[i]],
                     "suggested": names[suggested[i]] if kind == "mislabel" else None,
                     "score": round(float(outlier_score[i] if kind == "outlier" else 1.0 - p_given[i]), 4),
                     "kind": kind, "p_given": round(float(p_given[i]), 4),
                     "p_suggested": round(float(probs[i, suggested[i]]), 4)})
    rows.sort(key=lambda r: r["score"], reverse=True)
    result.update(folds=folds, C=c, oof_accuracy=round(float((probs.argmax(1) == y).mean()), 4), issues=rows,
                  counts={"mislabel": sum(r["kind"] == "mislabel" for r in rows),
                          "outlier": sum(r["kind"] == "outlier" for r in rows)})
    _finish(opts, index, result, rows, images, sheet, t0)
    return result


METHOD = (f"pooled backbone features; stratified k-fold x {REPEATS} logistic regression (out-of-fold probabilities); "
          f"cleanlab.filter.find_label_issues(filter_by='{FILTER_BY}'); outliers: cleanlab OutOfDistribution "
          f"(k={OUTLIER_K} cosine neighbours) beyond Q3 + {OUTLIER_FENCE:g} IQR")


def _finish(opts: CheckOptions, index: DataIndex, result: dict, rows: list[dict], images: dict, sheet: str,
            t0: float) -> None:
    """Write the contact sheet (when anything is flagged) and the fix manifest (when asked); total seconds."""
    t = time.perf_counter()
    if rows:
        write_contact_sheet(rows, images, sheet)
        result["contact_sheet"] = sheet
    if opts.fix_manifest:
        write_fix_manifest(opts, index, rows, set(images))
        result["fix_manifest"] = opts.fix_manifest
    result["seconds"]["write"] = round(time.perf_counter() - t, 2)
    result["seconds"]["total"] = round(time.perf_counter() - t0, 2)


def extract(opts: CheckOptions, spec, index: DataIndex, reporter: Reporter, seconds: dict,
            notes: list[str]) -> tuple[np.ndarray, dict, dict]:
    """(features of the decoded images in index order, path -> decoded image, what was used): one decode per
    image at the backbone's size, features from its inference-optimised copy (same outputs, faster)."""
    from posetune.backbones import create_backbone, data_config
    from posetune.data.pipeline import DecodedDataset, Preprocess, decode_all, make_loader
    from posetune.devices import place, resolve_device
    from posetune.features import extract_features
    from posetune.inference import optimize_for_inference

    device = resolve_device(opts.device)
    t = time.perf_counter()
    pose_dim = pose_dim_of(spec)
    if pose_dim:
        require_mediapipe()  # the one-line posetune[pose] hint before any image is read
    model, built = create_backbone(spec, num_classes=max(2, len(index.classes)), pose_dim=pose_dim)
    place(model, device).eval()
    preprocess = Preprocess.from_config(data_config(model, opts.image_size))
    net = None if spec.kind == "pose" else optimize_for_inference(
        model.cnn if spec.kind == "fusion" else model, (3, preprocess.size, preprocess.size))[0]
    seconds["build"] = round(time.perf_counter() - t, 2)
    paths = [s.path for s in index.samples]
    t = time.perf_counter()
    decoded, failed = decode_all(paths, preprocess, progress=reporter.start("decode images", len(paths)))
    reporter.stop()
    seconds["decode"] = round(time.perf_counter() - t, 2)
    for path, reason in failed.items():
        notes.append(f"not judged, unreadable at {preprocess.short_side} px: {path} ({reason})")
    images = {p: img for p, img in zip(paths, decoded) if img is not None}
    kept = [s for s in index.samples if s.path in images]
    t = time.perf_counter()
    ds = DecodedDataset([images[s.path] for s in kept], [s.label for s in kept], preprocess)
    advance = reporter.start(f"features {opts.backbone}", len(kept))
    feats = extract_features(net, make_loader(ds, opts.batch_size, False, device), device, preprocess,
                             advance)[0].numpy() if net is not None else np.zeros((len(kept), 0), np.float32)
    reporter.stop()
    if pose_dim:  # the landmark cache: BlazePose once per file, shared with training
        from posetune.pose import cache, matrix

        feats = np.concatenate([feats, matrix.feature_matrix([s.path for s in kept], cache.LandmarkCache(), reporter)], 1)
    seconds["features"] = round(time.perf_counter() - t, 2)
    info = {"weights": built["weight_source"], "image_size": preprocess.size, "device": str(device)}
    return feats, images, info



def out_of_fold_probabilities(x: np.ndarray, y: np.ndarray, folds: int, seed: int = 0, repeats: int = REPEATS,
                              grid=C_GRID, exclude: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """(n, k) probabilities, each row from models that never saw that row, averaged over ``repeats``
    stratified k-fold shuffles; C is the grid's lowest out-of-fold log-loss on the first shuffle. Rows in
    ``exclude`` (the outliers: they belong to no class) get probabilities but train no model.

    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 20); x = rng.normal(size=(40, 3)) + 3 * y[:, None]
    >>> p, c = out_of_fold_probabilities(x, y, folds=5)
    >>> p.shape, bool((p.argmax(1) == y).mean() > 0.9)
    ((40, 2), True)
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    k = int(y.max()) + 1
    splits = [list(StratifiedKFold(folds, shuffle=True, random_state=(seed + r) % 2**32).split(x, y))
              for r in range(repeats)]

    usable = np.ones(len(y), bool) if exclude is None else ~exclude

    def one_shuffle(split, c: float) -> np.ndarray:
        p = np.zeros((len(y), k))
        for train, held in split:
            train = train[usable[train]]
            mean, scale = x[train].mean(0), x[train].std(0) + 1e-6
            clf = LogisticRegression(C=c, max_iter=300, tol=1e-3)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # a capped L-BFGS run still ranks well
                clf.fit((x[train] - mean) / scale, y[train])
            p[np.ix_(held, clf.classes_)] = clf.predict_proba((x[held] - mean) / scale)
        return p

    def log_loss(p: np.ndarray) -> float:
        return float(-np.log(np.clip(p[usable, y[usable]], 1e-12, None)).mean())

    first = {c: one_shuffle(splits[0], c) for c in grid}
    best = min(grid, key=lambda c: log_loss(first[c]))
    probs = sum((one_shuffle(s, best) for s in splits[1:]), first[best]) / repeats
    return probs, best


def _cleanlab_issues(y: np.ndarray, probs: np.ndarray, notes: list[str]) -> np.ndarray:
    """cleanlab's confident-learning verdict: a boolean mask of the likely mislabelled rows."""
    from cleanlab.filter import find_label_issues as cleanlab_find

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mask = cleanlab_find(labels=y, pred_probs=probs, filter_by=FILTER_BY, n_jobs=1)
    notes.extend(dict.fromkeys(f"cleanlab: {w.message}" for w in caught))
    return np.asarray(mask, dtype=bool)


def outliers(x: np.ndarray, notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(out-of-place mask, score in [0, 1], higher = further from its neighbours): cleanlab's
    OutOfDistribution on the features, flagged beyond Tukey's far fence of the neighbour distances."""
    if len(x) < MIN_FOR_OUTLIERS:
        notes.append(f"outliers need at least {MIN_FOR_OUTLIERS} images; not looked for")
        return np.zeros(len(x), bool), np.zeros(len(x))
    from cleanlab.outlier import OutOfDistribution

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        typical = OutOfDistribution(params={"k": OUTLIER_K}).fit_score(features=x.astype(np.float32), verbose=False)
    distance = -np.log(np.clip(typical, 1e-300, 1.0))  # cleanlab's score is exp(-distance / median distance)
    q1, q3 = np.quantile(distance, [0.25, 0.75])
    return distance > q3 + OUTLIER_FENCE * (q3 - q1), 1.0 - typical


# ---------------------------------------------------------------- the files it writes


def check_sheet_owner(path: str | Path) -> None:
    """Refuse to replace a PNG posetune did not write (its Software entry says who did)."""
    from PIL import Image

    path = Path(path)
    if not path.exists():
        return
    try:
        with Image.open(path) as im:
            ours = getattr(im, "text", {}).get("Software") == MARKER
    except OSError:
        ours = False
    if not ours:
        raise UsageError(f"--contact-sheet {path} exists and posetune did not write it; move it away or give "
                         "another --contact-sheet (posetune never overwrites what it did not write)")


def write_contact_sheet(rows: list[dict], images: dict, path: str | Path, thumb: int = 144, cols: int = 6) -> Path:
    """A grid of the flagged images, most suspect first, each captioned with its file name and
    ``given -> suggested`` (or ``given: outlier``)."""
    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo

    shown = rows[:SHEET_MAX]
    cols = min(cols, len(shown))
    font = _font(12)
    caption, gap, head = 34, 6, 26
    n_rows = -(-len(shown) // cols)
    sheet = Image.new("RGB", (gap + cols * (thumb + gap), head + n_rows * (thumb + caption + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    more = f", the {len(shown)} most suspect shown" if len(rows) > len(shown) else ""
    draw.text((gap, 6), f"{len(rows)} flagged by posetune data check --label-issues{more}", fill=(0, 0, 0), font=font)
    for i, r in enumerate(shown):
        x0 = gap + (i % cols) * (thumb + gap)
        y0 = head + (i // cols) * (thumb + caption + gap)
        pixels = images[r["path"]].permute(1, 2, 0).numpy()
        im = Image.fromarray(pixels)
        side = min(im.size)
        left, top = (im.width - side) // 2, (im.height - side) // 2
        sheet.paste(im.crop((left, top, left + side, top + side)).resize((thumb, thumb), Image.BILINEAR), (x0, y0))
        colour = (200, 0, 0) if r["kind"] == "mislabel" else (220, 120, 0)
        draw.rectangle([x0 - 2, y0 - 2, x0 + thumb + 1, y0 + thumb + 1], outline=colour, width=2)
        verdict = f"{r['given']} -> {r['suggested']}" if r["kind"] == "mislabel" else f"{r['given']}: outlier"
        draw.text((x0, y0 + thumb + 3), _fit(draw, Path(r["path"]).name, font, thumb), fill=(60, 60, 60), font=font)
        draw.text((x0, y0 + thumb + 18), _fit(draw, verdict, font, thumb), fill=colour, font=font)
    meta = PngInfo()
    meta.add_text("Software", MARKER)
    buf = io.BytesIO()
    sheet.save(buf, "PNG", pnginfo=meta)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _font(px: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=px)
    except (TypeError, ValueError, OSError, ImportError):  # old Pillow / no FreeType
        return ImageFont.load_default()


def _fit(draw, text: str, font, width: int) -> str:
    """``text`` cut (with ...) to ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _sidecar(path: str | Path) -> Path:
    return Path(f"{path}.json")


def check_manifest_owner(path: str | Path) -> None:
    """Refuse to replace a CSV that posetune did not write, or one edited since (its sidecar records the hash)."""
    path, sidecar = Path(path), _sidecar(path)
    if not path.exists() and not sidecar.exists():
        return
    try:
        record = json.loads(sidecar.read_text())
        ours = isinstance(record, dict) and record.get("written_by") == MARKER
        unchanged = ours and (not path.exists() or record.get("sha256") == file_sha256(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        ours = unchanged = False
    if not ours:
        what = path if path.exists() else sidecar
        raise UsageError(f"--fix-manifest {path}: {what} exists and posetune did not write it; move it away or give "
                         "another --fix-manifest (posetune never overwrites what it did not write)")
    if not unchanged:
        raise UsageError(f"--fix-manifest {path} was edited after posetune wrote it; move it away or give another "
                         "--fix-manifest (posetune never overwrites what it did not write)")


def write_fix_manifest(opts: CheckOptions, index: DataIndex, rows: list[dict], readable: set[str]) -> Path:
    """path,label,split + exclude, given_label, suggested_label, issue, score: every readable image, suggested
    labels applied, outliers excluded; ``posetune train OUT.csv`` trains from it. Paths are absolute.
    A sidecar OUT.csv.json records what wrote it and the file's hash (so a later run may replace it)."""
    by_path = {r["path"]: r for r in rows}
    out = []
    for s in index.samples:
        if s.path not in readable:
            continue
        r = by_path.get(s.path)
        given = index.classes[s.label]
        relabel = r is not None and r["kind"] == "mislabel"
        out.append({"path": os.path.abspath(s.path), "label": r["suggested"] if relabel else given, "split": s.split,
                    "exclude": int(r is not None and r["kind"] == "outlier"), "given_label": given,
                    "suggested_label": (r or {}).get("suggested") or "", "issue": (r or {}).get("kind", ""),
                    "score": "" if r is None else r["score"]})
    path = Path(opts.fix_manifest)
    write_csv(path, out, FIX_COLUMNS)
    write_json(_sidecar(path), {
        "written_by": MARKER, "posetune": __version__, "sha256": file_sha256(path), "data": str(opts.data),
        "backbone": opts.backbone, "rows": len(out), "relabelled": sum(o["issue"] == "mislabel" for o in out),
        "excluded": sum(o["exclude"] for o in out),
        "note": "review before training: set label back to given_label, or exclude to 0, to keep a row as it was"})
    return path
