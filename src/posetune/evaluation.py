"""Metrics: accuracy, balanced accuracy, macro-F1, per-class P/R/F1, confusion matrix, most-confused pairs,
bootstrap intervals of the headline scores over a confusion matrix (every metrics dict, the leaderboard and the
model card); and `evaluate`, which adds how far the probabilities can be trusted (posetune.calibration):
ECE with a reliability diagram, selective prediction (coverage at --min-confidence, the risk-coverage curve)
and the most confidently wrong images; with --cam, class-activation maps (posetune.cam) of those and of a few
correct images per class, and on `data synth --masks` data the background reliance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from posetune.checks import BATCH_SIZE, DATA, LABEL_LEVELS, Bool, Choice, Int, Options, OutputPath, Text, option
from posetune.devices import DEVICE
from posetune.predict.prediction import MIN_CONFIDENCE

SPLITS = ("train", "val", "test")
BOOTSTRAP_SAMPLES = 2000
TOP_LOSSES = 16  # images on the contact sheet (a 4 x 4 grid) and in --json
CAM_CORRECT_PER_CLASS = 3  # correct images per class on cam_correct.png
CAM_BATCH = 16  # images per backward pass (gradients need more memory than predict)
SKELETONS_PER_CLASS = 3  # pose / fusion runs: overlays per true class on skeletons.png


@dataclass
class EvaluateOptions(Options):
    """Every option of `posetune evaluate` (same names as the flags)."""

    run: str = option("", Text("a run folder written by `posetune train`"), flag="RUN")
    data: str = option("", DATA, flag="DATA")
    split: str = option("test", Choice(*SPLITS))
    batch_size: int = option(64, Int(*BATCH_SIZE))
    device: str = option("auto", DEVICE)
    tta: bool = option(False, Bool())
    label_level: int = option(6, Choice(*LABEL_LEVELS))
    min_confidence: float | None = option(None, MIN_CONFIDENCE)  # coverage, and accuracy on the images >= it
    cam: bool = option(False, Bool())  # class-activation maps (cam_*.png; background_reliance on masked data)
    plot: bool = option(True, Bool(), flag="plot")  # the outputs below (Python API only)
    out: str | None = option(None, OutputPath(folder=True))  # default RUN/eval/<data>-<hash>-<split>/


def compute_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: list[str]) -> dict:
    """The metrics dict that `evaluate --json` prints and model.json stores."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = list(range(len(classes)))
    if len(y_true) == 0:
        return {"accuracy": None, "balanced_accuracy": None, "macro_f1": None, "per_class": {},
                "confusion_matrix": [], "classes": classes, "n": 0, "most_confused": [], "intervals": {}}
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    present = [i for i in labels if support[i] > 0]
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if present else None,
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                          "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion_matrix": cm.tolist(),
        "classes": classes,
        "n": int(len(y_true)),
        "most_confused": most_confused(cm, classes),
        "intervals": {k: list(v) for k, v in bootstrap_interval(cm).items()},  # 95%, resampling the images
    }


def most_confused(cm: np.ndarray, classes: list[str], k: int = 5) -> list[dict]:
    """The k largest off-diagonal cells: (true, predicted, count)."""
    pairs = [(int(cm[i, j]), classes[i], classes[j]) for i in range(len(classes))
             for j in range(len(classes)) if i != j and cm[i, j] > 0]
    pairs.sort(reverse=True)
    return [{"true": t, "predicted": pr, "count": n} for n, t, pr in pairs[:k]]


def bootstrap_interval(confusion: Sequence[Sequence[int]], samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = 0) -> dict[str, tuple[float, float]]:
    """95% percentile intervals of accuracy and macro-F1 over test images, resampled with replacement.

    Both metrics depend only on the (true, predicted) counts, so a resample is a multinomial draw of
    the confusion matrix.
    """
    cm = np.asarray(confusion, dtype=np.int64)
    n, c = int(cm.sum()), cm.shape[0]
    draws = np.random.default_rng(seed).multinomial(n, cm.ravel() / n, size=samples).reshape(samples, c, c)
    tp = np.diagonal(draws, axis1=1, axis2=2).astype(float)
    support, predicted = draws.sum(2), draws.sum(1)
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=(support + predicted) > 0)
    present = support > 0  # as compute_metrics: macro over the classes present in y_true
    macro = (f1 * present).sum(1) / np.maximum(present.sum(1), 1)
    acc = tp.sum(1) / n
    q = lambda v: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))  # noqa: E731
    return {"accuracy": q(acc), "macro_f1": q(macro)}


def trust_metrics(probabilities: np.ndarray, y_true: Sequence[int], confidence: Sequence[float], paths: Sequence[str],
                  classes: list[str], min_confidence: float | None) -> tuple[dict, dict]:
    """What `evaluate` adds to the scores: (its JSON keys, the risk-coverage curve to plot).

    ``probabilities`` are after the run's temperature; ``confidence`` is each image's top probability as
    `predict` shows it, so coverage at P counts exactly the images `predict --min-confidence P` answers."""
    from posetune.calibration import expected_calibration_error, nll, reliability_bins, risk_coverage, selective, top_losses

    labels = np.asarray(y_true, dtype=np.int64)
    correct = probabilities.argmax(1) == labels
    curve = risk_coverage(confidence, correct)
    out = {"ece": expected_calibration_error(probabilities, labels), "nll": nll(probabilities, labels),
           "reliability": reliability_bins(probabilities, labels), "aurc": curve["aurc"]}
    if min_confidence is not None:
        out["coverage"] = selective(confidence, correct, min_confidence)
    out["top_losses"] = [{"path": paths[t["index"]], "true": classes[t["true"]], "predicted": classes[t["predicted"]],
                          "probability": round(t["probability"], 6), "loss": round(t["loss"], 6)}
                         for t in top_losses(probabilities, labels, TOP_LOSSES)]
    return out, curve


def cam_report(run: str, data: str, paths: Sequence[str], y_true: Sequence[int], y_pred: Sequence[int],
               classes: list[str], top: list[dict], device: str, batch_size: int = CAM_BATCH, progress=None
               ) -> tuple[dict, tuple[list[dict], list[dict]]]:
    """What `evaluate --cam` adds: (its JSON keys, the items of cam_top_losses.png and cam_correct.png).

    Maps are of the predicted class (what the model answered), on the model exactly as trained. Where DATA is
    a `data synth --masks` render, every image's map is weighed against its figure mask: ``background_reliance``
    is the mean share of the map's mass outside the figure (0: only the figure), beside ``background_area``, the
    mean share of the image outside it: what a map with no preference for the figure would score."""
    from posetune.cam import METHOD, cam_target, class_activation_maps, figure_reliance
    from posetune.predict.torch_engine import Classifier
    from posetune.run import RunDir

    clf = Classifier(RunDir(run), device=device, optimize=False)  # gradients through the training graph
    out: dict = {"cam": {"method": METHOD, "layer": cam_target(clf.model, clf.preprocess.size).layer_name,
                         "class": "predicted"}}
    out.update(figure_reliance(clf, data, paths, y_pred, batch_size, progress) or {})
    where = {p: i for i, p in enumerate(paths)}
    wrong = [where[t["path"]] for t in top]
    right: list[int] = []
    for c in range(len(classes)):
        right += [i for i in range(len(paths)) if y_true[i] == c == y_pred[i]][:CAM_CORRECT_PER_CLASS]
    chosen = wrong + right
    crops, maps, _ = class_activation_maps(clf, [paths[i] for i in chosen], [y_pred[i] for i in chosen], batch_size)
    items = [{"image": crop, "cam": cam, "index": i} for crop, cam, i in zip(crops, maps, chosen)]
    for item, t in zip(items, top):
        item["caption"] = (f"{Path(t['path']).name}\ntrue {t['true']}, predicted {t['predicted']}\n"
                           f"p {t['probability']:.2f}")
    for item in items[len(wrong):]:
        item["caption"] = f"{Path(paths[item['index']]).name}\n{classes[y_true[item['index']]]}"
    return out, (items[:len(wrong)], items[len(wrong):])


def no_person_report(preds: Sequence, y_true: Sequence[int], y_pred: Sequence[int], classes: list[str],
                     kind: str) -> dict:
    """Pose / fusion runs: where BlazePose found nobody, per class, and the accuracy with and without a person.
    The scores above are the model's own answers (as training reports them); for a `pose` run, predict answers
    'no person detected' there instead, so ``answered_accuracy`` counts those images as wrong."""
    found = np.array([bool(p.pose_detected) for p in preds], bool)
    right = np.asarray(y_true) == np.asarray(y_pred)
    acc = lambda mask: round(float(right[mask].mean()), 4) if mask.any() else None  # noqa: E731
    per_class = {c: int(((np.asarray(y_true) == i) & ~found).sum()) for i, c in enumerate(classes)}
    out = {"images": len(preds), "no_person": int((~found).sum()), "per_class": per_class,
           "accuracy_person_found": acc(found), "accuracy_no_person": acc(~found)}
    if kind == "pose":
        out["answered_accuracy"] = round(float((right & found).sum() / len(preds)), 4) if len(preds) else None
    return out


def skeleton_items(preds: Sequence, y_true: Sequence[int], y_pred: Sequence[int], classes: list[str],
                   per_class: int = SKELETONS_PER_CLASS) -> list[dict]:
    """skeletons.png's items: per true class a few images with their skeleton drawn, one wrong answer among them
    when there is one; each {image, caption, correct}."""
    from posetune.data.images import ImageError, load_image
    from posetune.pose.drawing import draw_skeleton

    items = []
    for c, name in enumerate(classes):
        mine = [i for i in range(len(preds)) if y_true[i] == c]
        wrong, right = [i for i in mine if y_pred[i] != c], [i for i in mine if y_pred[i] == c]
        chosen = (wrong[:1] + right + wrong[1:])[:per_class]
        for i in chosen:
            try:
                image = load_image(preds[i].path, min_side=256)
            except ImageError:
                continue
            image.thumbnail((256, 256))
            found = preds[i].landmarks if preds[i].pose_detected else None
            mark = "right" if y_pred[i] == c else f"WRONG: {classes[y_pred[i]]}"
            items.append({"image": draw_skeleton(image, found), "correct": y_pred[i] == c,
                          "caption": f"{Path(preds[i].path).name}\n{name} - {mark}"
                                     + ("" if found is not None else "\nno person found")})
    return items


def _split_samples(index, data, split: str, classes: list[str]) -> list:
    from posetune.errors import UsageError

    samples = index.split(split)
    if not samples:
        present = [s for s in SPLITS if index.split(s)]
        raise UsageError(f"{data} has no '{split}' images (it has {', '.join(present) or 'none'}); pass --split "
                         f"{' or '.join(present) or 'train'}, or DATA with a {split} split")
    unknown = sorted({index.classes[s.label] for s in samples} - set(classes))
    if unknown:
        raise UsageError(f"classes in {data} that the model does not know: {', '.join(unknown)}")
    return samples


def evaluate(run: str | Path, data: str | Path, progress=None, **options) -> dict:
    """Evaluate a run folder on one split of DATA; writes evaluation.json, confusion.png, reliability.png,
    risk_coverage.png and top_losses.png (with ``cam``, also cam_top_losses.png and cam_correct.png; pose and
    fusion runs also skeletons.png and ``no_person``, :func:`no_person_report`) to ``out`` (default RUN/eval/<data>-<hash>-<split>/: named by the data
    and split, so nothing of the run's own training outputs, or of another evaluation, is overwritten).

    Options as :class:`EvaluateOptions` (`posetune evaluate`). Classes are matched by name, so DATA may
    hold its classes in any order. Scores carry 95% bootstrap ``intervals``; probabilities are after the run's
    ``temperature`` (``ece``, ``nll``, ``reliability``, ``aurc``, ``top_losses``; with ``min_confidence``,
    ``coverage``). With ``tta`` the test-time-augmented scores are reported beside the plain ones under
    ``metrics["tta"]``. With ``cam``, class-activation maps (:func:`cam_report`: ``cam``, and on data rendered
    by `data synth --masks`, ``background_reliance``).
    """
    from posetune.data.layouts import discover
    from posetune.predict import load

    opts = EvaluateOptions.build("posetune.evaluate", run=run, data=data, **options)
    run, data, split, batch_size = opts.run, opts.data, opts.split, opts.batch_size
    clf = load(run, device=opts.device)
    index = discover(data, val_fraction=0.0, label_level=opts.label_level)
    samples = _split_samples(index, data, split, clf.classes)
    paths = [s.path for s in samples]
    on_step = progress.start("evaluate", len(paths)) if progress else None
    preds = clf.predict(paths, top_k=1, batch_size=batch_size, on_step=on_step)
    ok = [(s, p) for s, p in zip(samples, preds) if p.error is None]
    y_true = [clf.classes.index(index.classes[s.label]) for s, _ in ok]
    y_pred = [int(p.probabilities.argmax()) for _, p in ok]  # the model's answer, also under 'no person detected'
    metrics = compute_metrics(y_true, y_pred, clf.classes)
    metrics["split"] = split
    metrics["temperature"] = clf.temperature
    probabilities = np.stack([p.probabilities for _, p in ok]) if ok else np.zeros((0, len(clf.classes)))
    trust, curve = trust_metrics(probabilities, y_true, [p.probability for _, p in ok], [p.path for _, p in ok],
                                 clf.classes, opts.min_confidence)
    metrics.update(trust)
    if opts.tta:
        on_step = progress.start("evaluate with TTA", len(paths)) if progress else None
        tta_preds = [p for p in clf.predict(paths, top_k=1, batch_size=max(1, batch_size // 10),
                                                on_step=on_step, tta=True) if p.error is None]
        tta_metrics = compute_metrics(y_true, [clf.classes.index(p.label) for p in tta_preds], clf.classes)
        metrics["tta"] = {k: tta_metrics[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "n")}
    metrics["skipped"] = [{"path": p.path, "reason": p.error} for p in preds if p.error]
    if clf.kind != "image":
        metrics["no_person"] = no_person_report([p for _, p in ok], y_true, y_pred, clf.classes, clf.kind)
    sheets = None
    if opts.cam and metrics["n"]:
        cam_info, sheets = cam_report(run, data, [p.path for _, p in ok], y_true, y_pred, clf.classes,
                                      metrics["top_losses"], opts.device, progress=progress)
        metrics.update(cam_info)
    if opts.plot and metrics["n"]:
        from posetune.run import RunDir

        folder = RunDir(run).evaluation_dir(data, split, opts.out)
        metrics["confusion_png"] = str(folder.write_confusion(metrics))
        metrics.update(folder.write_trust_plots(metrics, curve))
        if sheets is not None:
            metrics.update(folder.write_cam_plots(*sheets, split))
        if clf.kind != "image":
            items = skeleton_items([p for _, p in ok], y_true, y_pred, clf.classes)
            metrics["skeletons_png"] = str(folder.write_skeletons(items, split))
        folder.write_metrics(metrics)
    return metrics
