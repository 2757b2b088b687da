"""`posetune lr-find`: the LR range test (Smith 2017; fastai's lr_find).

The LR grows exponentially step by step while the model trains on real batches; the smoothed
loss against the LR shows where learning is fastest. The suggestion is the LR of the steepest
descent of the smoothed loss. Every parameter group keeps its ratio to the head LR, so the
suggested value is what to pass as ``--lr`` with the same strategy.
"""

from __future__ import annotations

import math
from pathlib import Path

from posetune.console import Reporter


def lr_find(data: str | Path, reporter: Reporter | None = None, **options) -> dict:
    """Run the range test; options as :class:`posetune.options.LrFindOptions` (those of `posetune train` plus
    ``start_lr``, ``end_lr``, ``steps``). Returns lrs, losses, the suggestion and the plot's path."""
    import torch.nn.functional as nnf

    from posetune.devices import Normalizer, autocast
    from posetune.options import LrFindOptions
    from posetune.strategies import apply_freeze, param_groups, set_train_mode
    from posetune.training.loop import make_optimizer
    from posetune.training.prepare import prepare

    reporter = reporter or Reporter()
    options.setdefault("out", str(Path("runs") / f"lr-find-{Path(str(data)).stem}"))
    opts = LrFindOptions.from_sources(None, data=str(data), **options)
    start_lr, end_lr, steps = opts.start_lr, opts.end_lr, opts.steps
    p = prepare(opts, reporter, create=False)  # it writes lr_find.png only
    model, device = p.model, p.device
    groups = param_groups(model, p.stages, p.plan, p.settings.weight_decay)
    head_lr = p.plan.lrs["head"]
    optimizer = make_optimizer(groups, device)
    ratios = [g["lr"] / head_lr for g in optimizer.param_groups]
    prepare_batch = Normalizer(p.preprocess, device)
    frozen = p.plan.frozen_at(1 + max(p.plan.unfreeze.values(), default=0))  # every stage that will ever train
    apply_freeze(model, p.stages, frozen)
    set_train_mode(model, p.stages, frozen, p.plan.bn)
    factor = (end_lr / start_lr) ** (1 / (steps - 1))
    lrs, losses, smoothed = [], [], []
    avg, best = 0.0, math.inf
    loader = p.loader(p.train_ds, shuffle=True)
    advance = reporter.start("LR range test", steps)
    step, diverged = 0, False
    while step < steps and not diverged:
        for x, y in loader:
            lr = start_lr * factor ** step
            for g, r in zip(optimizer.param_groups, ratios):
                g["lr"] = lr * r
            x, y = prepare_batch(x), y.to(device)
            with autocast(device, p.settings.precision):
                loss = nnf.cross_entropy(model(x).float(), y, label_smoothing=p.settings.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            avg = 0.98 * avg + 0.02 * value  # the bias-corrected EMA fastai uses
            smooth = avg / (1 - 0.98 ** (step + 1))
            lrs.append(lr)
            losses.append(value)
            smoothed.append(smooth)
            best = min(best, smooth)
            step += 1
            advance(1)
            diverged = not math.isfinite(smooth) or smooth > 4 * best  # past the useful range
            if step >= steps or diverged:
                break
    reporter.stop()
    suggestion = suggest_lr(lrs, smoothed)
    p.out.path.mkdir(parents=True, exist_ok=True)
    plot = plot_lr_find(lrs, smoothed, suggestion, p.out.path / "lr_find.png")
    result = {"lrs": lrs, "losses": losses, "smoothed": smoothed, "suggested_lr": suggestion,
              "min_loss_lr": lrs[int(min(range(len(smoothed)), key=smoothed.__getitem__))] if lrs else None,
              "plot": str(plot), "strategy": opts.strategy, "backbone": opts.backbone}
    return result


def suggest_lr(lrs: list[float], smoothed: list[float]) -> float | None:
    """LR at the steepest descent of the smoothed loss (in log-LR), ignoring the noisy first and
    exploding last points."""
    import numpy as np

    if len(lrs) < 5:
        return None
    x, y = np.log10(np.asarray(lrs)), np.asarray(smoothed)
    cut = int(np.argmin(y)) + 1  # nothing after the minimum counts
    lo = max(1, len(x) // 10)
    if cut - lo < 3:
        return float(lrs[max(0, cut - 1)] / 10)
    grad = np.gradient(y[lo:cut], x[lo:cut])
    return float(lrs[lo + int(np.argmin(grad))])


def plot_lr_find(lrs: list[float], smoothed: list[float], suggestion: float | None, out: Path) -> Path:
    from posetune.report import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(lrs, smoothed)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (head; other groups keep their ratio)")
    ax.set_ylabel("smoothed training loss")
    if suggestion:
        ax.axvline(suggestion, color="red", ls="--", lw=1)
        ax.annotate(f"suggested {suggestion:.1e}", (suggestion, max(smoothed) if smoothed else 0),
                    color="red", fontsize=8, ha="left", va="top")
    finite = [v for v in smoothed if math.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) * 0.95, min(max(finite), 3 * min(finite)) * 1.05)
    ax.grid(alpha=0.3)
    return save_figure(fig, out)
