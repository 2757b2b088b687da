"""Features of a frozen base: extract pooled features once, then fit heads on them.

The linear strategy and LP-FT's probe phase train a head on cached features (AdamW through the
same epoch driver as fine-tuning); `compare`'s stage 1 ranks backbones with an L-BFGS logistic
probe and a k-NN on the same features.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as nnf

from posetune.data.pipeline import Preprocess
from posetune.engine import (
    FitResult,
    LoopState,
    Settings,
    _val_row,
    cosine_with_warmup,
    drive_epochs,
    run_batches,
)

PROBE_C_GRID = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strength; strongest first so warm starts converge fast
KNN_K_GRID = (1, 5, 10, 20)


def extract_features(model: torch.nn.Module, loader, device: torch.device, preprocess: Preprocess,
                     on_step: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled pre-logits features (the classifier's input) for every image of ``loader``."""
    model.eval()
    return run_batches(lambda x: model.forward_head(model.forward_features(x), pre_logits=True), loader, device,
                       preprocess, model.num_features, on_step)


def fit_head_on_features(head: torch.nn.Linear, train_feats: torch.Tensor, train_labels: torch.Tensor,
                         val_feats: torch.Tensor, val_labels: torch.Tensor, lr: float, settings: Settings,
                         on_epoch: Callable[[dict], None] | None = None,
                         class_weights: torch.Tensor | None = None) -> FitResult:
    """Train a linear head on cached pooled features: the linear strategy without re-running the base."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=settings.weight_decay)
    n = len(train_labels)
    steps_per_epoch = max(1, math.ceil(n / settings.batch_size))
    scheduler = cosine_with_warmup(optimizer, steps_per_epoch * settings.epochs, int(steps_per_epoch * settings.warmup_epochs))
    gen = torch.Generator().manual_seed(settings.seed)

    def train_epoch(epoch: int, state: LoopState) -> dict:
        head.train()
        order = torch.randperm(n, generator=gen)
        total, correct = 0.0, 0
        for start in range(0, n, settings.batch_size):
            idx = order[start:start + settings.batch_size]
            logits = head(train_feats[idx])
            loss = nnf.cross_entropy(logits, train_labels[idx], weight=class_weights,
                                     label_smoothing=settings.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
            correct += (logits.argmax(1) == train_labels[idx]).sum().item()
        return {"train_loss": total / n, "train_accuracy": correct / n, "lr": scheduler.get_last_lr()[-1],
                "images": n}

    @torch.inference_mode()
    def evaluate() -> dict:
        head.eval()
        return _val_row(head(val_feats), val_labels)

    def snapshot(row: dict) -> dict:
        return copy.deepcopy(head.state_dict())

    return drive_epochs(settings, train_epoch, evaluate, snapshot, on_epoch)


@dataclass
class Probe:
    """L-BFGS logistic regression on standardised features; C chosen on val."""

    model: object  # sklearn LogisticRegression
    mean: object  # np.ndarray, feature means on train
    scale: object  # np.ndarray, feature stds on train
    C: float
    grid: list[dict]

    def logits(self, feats) -> object:
        return self.model.decision_function((feats.numpy() - self.mean) / self.scale)

    def fold_into(self, head) -> None:
        """Write the probe into a Linear head: W' = W / s, b' = b - W' m, so the saved model needs no scaler."""
        import numpy as np
        import torch

        w, b = self.model.coef_ / self.scale, self.model.intercept_
        b = b - w @ self.mean
        if w.shape[0] == 1:  # binary: sklearn keeps one row; softmax([0, z]) == sigmoid(z)
            w, b = np.vstack([np.zeros_like(w), w]), np.concatenate([[0.0], b])
        with torch.no_grad():
            head.weight.copy_(torch.as_tensor(w, dtype=head.weight.dtype))
            head.bias.copy_(torch.as_tensor(b, dtype=head.bias.dtype))


def fit_probe(train_x, train_y, val_x, val_y, grid: Sequence[float] = PROBE_C_GRID) -> Probe:
    """Logistic regression for each C of the grid (warm-started, strong to weak); keep the best on val."""
    import warnings

    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    x, y = train_x.numpy().astype(np.float64), train_y.numpy()
    mean, scale = x.mean(0), x.std(0) + 1e-6
    xs = (x - mean) / scale
    vx = (val_x.numpy() - mean) / scale if len(val_y) else None
    vy = val_y.numpy()
    clf = LogisticRegression(max_iter=150, warm_start=True, tol=1e-3)  # a ranking probe, not a final fit
    best, rows = None, []
    for c in grid:
        clf.set_params(C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a capped L-BFGS run is still a fine probe
            clf.fit(xs, y)
        if vx is None:
            score = (0.0, 0.0)
        else:
            proba = clf.predict_proba(vx)
            score = (float((clf.classes_[proba.argmax(1)] == vy).mean()),
                     -float(log_loss(vy, proba, labels=clf.classes_)))
        rows.append({"C": c, "val_accuracy": score[0], "val_loss": -score[1]})
        if best is None or score > best[0]:
            best = (score, c, (clf.coef_.copy(), clf.intercept_.copy()))
    _, c, (coef, intercept) = best
    clf.set_params(C=c)
    clf.coef_, clf.intercept_ = coef, intercept
    return Probe(model=clf, mean=mean, scale=scale, C=c, grid=rows)


@dataclass
class Knn:
    model: object
    k: int
    val_accuracy: float | None


def fit_knn(train_x, train_y, val_x, val_y, grid: Sequence[int] = KNN_K_GRID) -> Knn:
    """Cosine k-NN (L2-normalised features), k chosen on val."""
    import torch.nn.functional as nnf
    from sklearn.neighbors import KNeighborsClassifier

    x, vx = nnf.normalize(train_x, dim=1).numpy(), nnf.normalize(val_x, dim=1).numpy()
    y, vy = train_y.numpy(), val_y.numpy()
    best = None
    for k in [k for k in grid if k <= len(y)] or [1]:
        knn = KNeighborsClassifier(n_neighbors=k).fit(x, y)
        acc = float((knn.predict(vx) == vy).mean()) if len(vy) else None
        if best is None or (acc or 0.0) > (best.val_accuracy or 0.0):
            best = Knn(knn, k, acc)
    return best
