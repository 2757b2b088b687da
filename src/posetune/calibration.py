"""How far a model's probabilities can be trusted: expected calibration error and its reliability bins,
the risk-coverage curve of selective prediction, the most confidently wrong images, and the temperature
that calibrates the logits (fitted on the val split after training).

Everything here is numpy on arrays of probabilities, except :func:`fit_temperature`, which imports torch
when called: the ONNX engine uses :func:`softmax` from here and never imports torch.

>>> probs = np.array([[0.9, 0.1], [0.6, 0.4]]); labels = np.array([0, 1])
>>> round(expected_calibration_error(probs, labels), 3)   # |1 - 0.9| / 2 + |0 - 0.6| / 2
0.35
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

ECE_BINS = 15  # equal-width confidence bins, as Guo et al. 2017
MIN_VAL_IMAGES = 20  # fewer: one scalar fitted on a handful of images would follow their noise
TEMPERATURE_RANGE = (0.05, 20.0)  # a fit beyond these is a sign of degenerate logits, not calibration
EPS = 1e-12


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float32 stays float32)."""
    z = logits / np.asarray(temperature, dtype=logits.dtype) if temperature != 1.0 else logits
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean negative log-likelihood of the true classes (None for no images)."""
    if len(labels) == 0:
        return None
    return float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], EPS)).mean())


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per confidence bin ((m-1)/M, m/M]: its edges, how many images, their mean confidence and accuracy."""
    conf = probs.max(1) if len(labels) else np.zeros(0)
    correct = probs.argmax(1) == labels if len(labels) else np.zeros(0, bool)
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    rows = []
    for m in range(bins):
        sel = which == m
        n = int(sel.sum())
        rows.append({"lower": m / bins, "upper": (m + 1) / bins, "count": n,
                     "confidence": float(conf[sel].mean()) if n else None,
                     "accuracy": float(correct[sel].mean()) if n else None})
    return rows


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float | None:
    """ECE: the count-weighted mean gap between accuracy and confidence over equal-width bins (None: no images).

    0 when every bin's accuracy equals its confidence; an overconfident model scores high."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return None
    rows = reliability_bins(np.asarray(probs), labels, bins)
    return float(sum(r["count"] * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"]) / len(labels))


def risk_coverage(confidence: Sequence[float], correct: Sequence[bool]) -> dict:
    """The risk-coverage curve: for every threshold t (each distinct confidence), the share of images with
    confidence >= t (coverage) and the error rate among them (selective risk); ``aurc`` is the area under it."""
    conf, ok = np.asarray(confidence, float), np.asarray(correct, bool)
    if len(conf) == 0:
        return {"threshold": [], "coverage": [], "risk": [], "aurc": None}
    order = np.argsort(-conf, kind="stable")
    conf, errors = conf[order], np.cumsum(~ok[order])
    k = np.arange(1, len(conf) + 1)
    last = np.r_[conf[1:] != conf[:-1], True]  # the last image of each group of equal confidence
    coverage, risk = k[last] / len(conf), errors[last] / k[last]
    aurc = float(np.sum(risk * np.diff(np.r_[0.0, coverage])))
    return {"threshold": conf[last].tolist(), "coverage": coverage.tolist(), "risk": risk.tolist(), "aurc": aurc}


def selective(confidence: Sequence[float], correct: Sequence[bool], min_confidence: float) -> dict:
    """Coverage and accuracy of answering only when the top probability is >= ``min_confidence``."""
    conf, ok = np.asarray(confidence, float), np.asarray(correct, bool)
    covered = conf >= min_confidence
    n = int(covered.sum())
    return {"min_confidence": min_confidence, "coverage": n / len(conf) if len(conf) else None, "n_covered": n,
            "n": int(len(conf)), "accuracy": float(ok[covered].mean()) if n else None}


def top_losses(probs: np.ndarray, labels: np.ndarray, k: int = 16) -> list[dict]:
    """The ``k`` misclassified images with the largest loss (-log p of the true class), most confident first:
    index, true and predicted class index, the predicted class's probability, the loss."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return []
    predicted = probs.argmax(1)
    loss = -np.log(np.maximum(probs[np.arange(len(labels)), labels], EPS))
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-loss[wrong], kind="stable")][:k]
    return [{"index": int(i), "true": int(labels[i]), "predicted": int(predicted[i]),
             "probability": float(probs[i, predicted[i]]), "loss": float(loss[i])} for i in wrong]


def fit_temperature(logits, labels) -> tuple[float, str]:
    """The T > 0 that minimises the NLL of ``softmax(logits / T)`` on (val) logits: (T, how it was chosen).

    L-BFGS on log T. T = 1 (and the reason) with fewer than MIN_VAL_IMAGES images, or when every image is
    already right (the NLL then keeps falling as T shrinks: there is no optimum to find).
    """
    import torch

    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(labels) < MIN_VAL_IMAGES:
        return 1.0, (f"not fitted: the val split has {len(labels)} images, fewer than {MIN_VAL_IMAGES} (a larger "
                     "--val-fraction, or DATA with a val split, gives more); temperature 1.0")
    if bool((logits.argmax(1) == labels).all()):
        return 1.0, (f"not fitted: every one of the {len(labels)} val images is right, so the NLL falls without "
                     "bound as T shrinks; temperature 1.0")
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    low, high = TEMPERATURE_RANGE
    t = float(min(max(math.exp(float(log_t.detach())), low), high))
    with torch.no_grad():
        before = float(torch.nn.functional.cross_entropy(logits, labels))
        after = float(torch.nn.functional.cross_entropy(logits / t, labels))
    if not after < before:
        return 1.0, f"fitted on {len(labels)} val images: no temperature lowers the NLL ({before:.4f}); 1.0"
    bound = " (at the bound of the search range: the logits are nearly flat or extreme)" if t in (low, high) else ""
    return t, f"fitted on {len(labels)} val images: NLL {before:.4f} -> {after:.4f}{bound}"


def calibration_summary(temperature: float, note: str, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """What model.json and report.md record: the temperature, how it was chosen, and per split (logits, labels)
    the ECE and NLL before (T = 1) and after the temperature."""
    summary: dict = {"temperature": temperature, "method": "temperature scaling (NLL on val)", "note": note,
                     "bins": ECE_BINS}
    for split, (logits, labels) in splits.items():
        logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
        if not len(labels):
            continue
        before, after = softmax(logits), softmax(logits, temperature)
        summary[split] = {"n": int(len(labels)),
                          "ece_before": expected_calibration_error(before, labels),
                          "ece_after": expected_calibration_error(after, labels),
                          "nll_before": nll(before, labels), "nll_after": nll(after, labels)}
    return summary
