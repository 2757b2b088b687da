"""posetune.calibration on constructed probabilities and logits: ECE, reliability bins, risk-coverage, top losses,
and the temperature fit with its guards."""

from __future__ import annotations

import numpy as np
import pytest

from posetune.calibration import (
    ECE_BINS,
    MIN_VAL_IMAGES,
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_bins,
    risk_coverage,
    selective,
    softmax,
    top_losses,
)


def _with_accuracy(confidences: list[float], per_level: int, accuracy) -> tuple[np.ndarray, np.ndarray]:
    """Three-class probabilities [c, (1-c)/2, (1-c)/2] (class 0 predicted); a share ``accuracy(c)`` labelled 0."""
    probs, labels = [], []
    for c in confidences:
        right = int(round(accuracy(c) * per_level))
        probs += [[c, (1 - c) / 2, (1 - c) / 2]] * per_level
        labels += [0] * right + [1] * (per_level - right)
    return np.asarray(probs), np.asarray(labels)


LEVELS = [0.45, 0.55, 0.65, 0.75, 0.85, 0.95]


def test_a_perfectly_calibrated_model_has_ece_near_zero():
    probs, labels = _with_accuracy(LEVELS, 100, lambda c: c)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-9)


def test_an_overconfident_model_has_a_large_ece():
    probs, labels = _with_accuracy(LEVELS, 100, lambda c: 0.5)  # says 45..95%, is right half the time
    ece = expected_calibration_error(probs, labels)
    assert ece == pytest.approx(np.mean([abs(c - 0.5) for c in LEVELS]), abs=1e-9) and ece > 0.2
    confident, _ = _with_accuracy([0.99], 100, lambda c: 0.6)
    assert expected_calibration_error(confident, np.r_[[0] * 60, [1] * 40]) == pytest.approx(0.39)


def test_reliability_bins_are_fifteen_equal_width_bins():
    probs, labels = _with_accuracy(LEVELS, 10, lambda c: c)
    bins = reliability_bins(probs, labels)
    assert len(bins) == ECE_BINS == 15 and bins[0]["lower"] == 0 and bins[-1]["upper"] == 1
    assert sum(b["count"] for b in bins) == len(labels)
    assert all((b["confidence"] is None) == (b["count"] == 0) for b in bins)
    one = next(b for b in bins if b["count"] and b["lower"] < 0.95 <= b["upper"])
    assert one["confidence"] == pytest.approx(0.95) and one["accuracy"] == pytest.approx(1.0)  # 9.5 -> 10 of 10
    assert expected_calibration_error(np.zeros((0, 3)), np.zeros(0, int)) is None


def test_risk_coverage_curve_and_selective_scores():
    conf = [0.9, 0.8, 0.8, 0.6, 0.4]
    correct = [True, True, False, True, False]
    curve = risk_coverage(conf, correct)
    assert curve["threshold"] == [0.9, 0.8, 0.6, 0.4]  # ties at 0.8 are one threshold
    assert curve["coverage"] == pytest.approx([0.2, 0.6, 0.8, 1.0])
    assert curve["risk"] == pytest.approx([0.0, 1 / 3, 1 / 4, 2 / 5])
    assert curve["aurc"] == pytest.approx(0.2 * 0 + 0.4 / 3 + 0.2 / 4 + 0.2 * 2 / 5)
    at = selective(conf, correct, 0.8)
    assert at == {"min_confidence": 0.8, "coverage": 0.6, "n_covered": 3, "n": 5, "accuracy": pytest.approx(2 / 3)}
    assert selective(conf, correct, 0.95)["accuracy"] is None and selective(conf, correct, 0.0)["coverage"] == 1.0
    perfect = risk_coverage([0.9, 0.7, 0.5], [True, True, False])
    assert perfect["risk"][:2] == [0.0, 0.0] and risk_coverage([], [])["aurc"] is None


def test_top_losses_lists_only_wrong_images_the_largest_loss_first():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.85, 0.05], [0.2, 0.3, 0.5], [0.9, 0.05, 0.05]])
    labels = np.array([0, 0, 0, 1])
    got = top_losses(probs, labels, k=5)
    assert [t["index"] for t in got] == [3, 1, 2]  # -log 0.05, -log 0.1, -log 0.2
    assert got[0] == {"index": 3, "true": 1, "predicted": 0, "probability": 0.9, "loss": pytest.approx(-np.log(0.05))}
    assert len(top_losses(probs, labels, k=1)) == 1 and top_losses(np.zeros((0, 3)), np.zeros(0, int)) == []


def _noisy_logits(n: int, scale: float, flip: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits that point at the label with strength ``scale``; a share ``flip`` of labels are wrong."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    logits = rng.normal(0, 1, (n, 4))
    logits[np.arange(n), labels] += 2.0
    logits *= scale
    flipped = rng.random(n) < flip
    labels[flipped] = (labels[flipped] + 1) % 4
    return logits, labels


@pytest.mark.parametrize("scale, higher", [(6.0, True), (0.3, False)])
def test_the_fitted_temperature_lowers_val_nll(scale, higher):
    logits, labels = _noisy_logits(400, scale, flip=0.15)
    t, note = fit_temperature(logits, labels)
    assert (t > 1) == higher and "fitted on 400 val images" in note
    assert nll(softmax(logits, t), labels) < nll(softmax(logits), labels)
    for other in (t * 0.8, t * 1.25):  # a minimum, not just lower
        assert nll(softmax(logits, t), labels) <= nll(softmax(logits, other), labels) + 1e-9
    summary = calibration_summary(t, note, {"val": (logits, labels)})
    assert summary["temperature"] == t and summary["val"]["nll_after"] < summary["val"]["nll_before"]
    assert summary["val"]["ece_after"] < summary["val"]["ece_before"]


def test_temperature_is_one_on_a_tiny_or_empty_or_flawless_val_split():
    logits, labels = _noisy_logits(MIN_VAL_IMAGES - 1, 3.0, flip=0.3)
    t, note = fit_temperature(logits, labels)
    assert t == 1.0 and "fewer than" in note
    assert fit_temperature(np.zeros((0, 4)), np.zeros(0, int))[0] == 1.0
    logits, labels = _noisy_logits(100, 3.0, flip=0.0)
    labels = logits.argmax(1)  # every val image right: the NLL falls without bound as T shrinks
    t, note = fit_temperature(logits, labels)
    assert t == 1.0 and "every one" in note


def test_softmax_with_temperature_matches_torch():
    import torch

    logits = np.random.default_rng(1).normal(0, 3, (6, 5)).astype(np.float32)
    expected = (torch.from_numpy(logits) / 0.7).softmax(1).numpy()
    np.testing.assert_allclose(softmax(logits, 0.7), expected, atol=1e-6)
    assert softmax(logits, 0.7).dtype == np.float32
