"""Features of a frozen base: pooled features extracted once, and the probes fitted on them.

The linear strategy and LP-FT's probe phase train a head on these cached features
(``training.heads``); `compare`'s stage 1 ranks backbones with the L-BFGS logistic probe and the
k-NN here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from posetune.data.pipeline import Preprocess
from posetune.predict.torch_engine import run_batches

PROBE_C_GRID = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strength; strongest first so warm starts converge fast
KNN_K_GRID = (1, 5, 10, 20)


def extract_features(model: torch.nn.Module | None, loader, device: torch.device, preprocess: Preprocess,
                     on_step: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled pre-logits features (the classifier's input) for every image of ``loader``.

    Where the loader pairs images with landmark features (`NAME+pose`), those follow the pooled features in
    each row; with ``model`` None (`pose`: no image network) the rows are the landmark features alone."""
    if model is not None:
        model.eval()

    def pooled(x: torch.Tensor, *pose: torch.Tensor) -> torch.Tensor:
        if model is None:
            return pose[0]
        f = model.forward_head(model.forward_features(x), pre_logits=True)
        return torch.cat([f, *pose], dim=1) if pose else f

    return run_batches(pooled, loader, device, preprocess, model.num_features if model is not None else 0, on_step)


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
