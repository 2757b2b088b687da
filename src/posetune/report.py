"""Plots (PNG) and the markdown report of a run: training curves, confusion matrix, reliability diagram,
risk-coverage curve, the contact sheet of the most confidently wrong images, and the leaderboard's plots."""

from __future__ import annotations

from pathlib import Path

from posetune.io import atomic_write_text


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: str | Path) -> Path:
    """Lay out, write the PNG and free the figure (pyplot keeps every open figure alive)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_confusion(metrics: dict, out: str | Path) -> Path:
    """Confusion matrix with counts, rows = true class, normalised colours."""
    return save_figure(confusion_figure(metrics), out)


def confusion_figure(metrics: dict):
    """The figure :func:`plot_confusion` writes (experiment trackers log it as an image)."""
    import numpy as np

    plt = pyplot()
    cm = np.asarray(metrics["confusion_matrix"], dtype=float)
    classes = metrics["classes"]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    size = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center",
                        color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = metrics.get("accuracy")
    ax.set_title(f"{metrics.get('split', '')} accuracy {acc:.3f}" if acc is not None else "confusion matrix")
    fig.tight_layout()
    return fig


def plot_history(history: list[dict], out: str | Path) -> Path:
    """Loss and accuracy per epoch, train and val, with the best epoch marked."""
    plt = pyplot()
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for key, style in (("train_loss", "-"), ("val_loss", "--")):
        ax1.plot(epochs, [r.get(key) for r in history], style, marker="o", ms=3, label=key)
    for key, style in (("train_accuracy", "-"), ("val_accuracy", "--")):
        ax2.plot(epochs, [r.get(key) for r in history], style, marker="o", ms=3, label=key)
    best = [r["epoch"] for r in history if r.get("best")]
    for ax in (ax1, ax2):
        if best:
            ax.axvline(best[-1], color="grey", lw=0.8, ls=":")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax1.set_title("loss")
    ax2.set_title("accuracy")
    return save_figure(fig, out)


def plot_reliability(bins: list[dict], ece: float | None, out: str | Path, title: str = "reliability") -> Path:
    """Reliability diagram: accuracy per equal-width confidence bin against the diagonal (the gap in red),
    and below it how many images fall in each bin."""
    plt = pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(4.8, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = bins[0]["upper"] - bins[0]["lower"] if bins else 1.0
    full = [b for b in bins if b["count"]]
    lows = [b["lower"] for b in full]
    ax.bar(lows, [b["accuracy"] for b in full], width, align="edge", color="tab:blue", edgecolor="white",
           label="accuracy")
    ax.bar(lows, [b["confidence"] - b["accuracy"] for b in full], width, bottom=[b["accuracy"] for b in full],
           align="edge", fill=False, hatch="///", edgecolor="tab:red", lw=0.8, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfectly calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}: ECE {ece:.3f}" if ece is not None else title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    hist.bar([b["lower"] for b in bins], [b["count"] for b in bins], width, align="edge", color="grey",
             edgecolor="white")
    hist.set_xlabel("confidence (top probability)")
    hist.set_ylabel("images")
    return save_figure(fig, out)


def plot_risk_coverage(curve: dict, out: str | Path, point: dict | None = None, title: str = "risk vs coverage") -> Path:
    """Selective risk (error rate of the images kept) against coverage (the share kept) as the confidence
    threshold falls; ``point``: the threshold asked for (``calibration.selective``), marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    ax.plot(curve["coverage"], curve["risk"], color="tab:blue", lw=1.5, marker="o", ms=2.5, label="risk at coverage")
    if curve["risk"]:
        ax.axhline(curve["risk"][-1], color="grey", lw=0.8, ls=":", label="error rate answering every image")
    if point and point.get("n_covered"):
        ax.scatter([point["coverage"]], [1 - point["accuracy"]], s=60, color="crimson", zorder=3,
                   label=f"min confidence {point['min_confidence']:g}: coverage {point['coverage']:.2f}, "
                         f"risk {1 - point['accuracy']:.3f}")
    elif point:
        ax.axvline(0, color="crimson", lw=1.5, label=f"min confidence {point['min_confidence']:g}: no image covered")
    ax.legend(fontsize=7, loc="best")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, max([0.05, *curve["risk"]]) * 1.1)
    ax.set_xlabel("coverage (share of images answered)")
    ax.set_ylabel("selective risk (error rate)")
    aurc = curve.get("aurc")
    ax.set_title(f"{title} (AURC {aurc:.3f})" if aurc is not None else title, fontsize=10)
    ax.grid(alpha=0.3)
    return save_figure(fig, out)


def plot_top_losses(items: list[dict], out: str | Path, title: str = "the most confidently wrong images",
                    columns: int = 4) -> Path:
    """A contact sheet like fastai's plot_top_losses: each image with its true and predicted label, the
    predicted probability and the loss (items: path, true, predicted, probability, loss)."""
    from posetune.data.images import ImageError, load_image

    fig, axes = _sheet(len(items), columns, 2.9, "no misclassified images")
    for ax, item in zip(axes, items):
        try:
            img = load_image(item["path"], min_side=192)
            img.thumbnail((192, 192))
            ax.imshow(img)
        except (ImageError, OSError):
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center")
        ax.set_title(f"{Path(item['path']).name}\ntrue {item['true']}, predicted {item['predicted']}\n"
                     f"p {item['probability']:.2f}, loss {item['loss']:.2f}", fontsize=7)
    if items:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, out)


def plot_cams(items: list[dict], out: str | Path, title: str, columns: int = 4, empty: str = "no images") -> Path:
    """A contact sheet of class-activation maps: each eval crop with its map overlaid (items: image, an
    S x S x 3 uint8 array; cam, S x S in [0, 1]; caption)."""
    fig, axes = _sheet(len(items), columns, 2.7, empty)
    for ax, item in zip(axes, items):
        ax.imshow(item["image"])
        ax.imshow(item["cam"], cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
        ax.set_title(item["caption"], fontsize=7)
    if items:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, out)


def plot_overlays(items: list[dict], out: str | Path, title: str, columns: int = 3) -> Path:
    """A contact sheet of images already drawn on (items: image, caption, correct): captions of wrong answers
    in red, of right ones in green; ``columns`` is images per row (3: one class per row, when each has 3)."""
    fig, axes = _sheet(len(items), columns, 2.9, "no images")
    for ax, item in zip(axes, items):
        ax.imshow(item["image"])
        ax.set_title(item["caption"], fontsize=7, color="tab:green" if item["correct"] else "tab:red")
    if items:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, out)


def _sheet(n: int, columns: int, row_height: float, empty: str):
    """A contact sheet's figure and its n axes (axis lines off), or a small figure saying ``empty``."""
    plt = pyplot()
    if not n:
        fig, ax = plt.subplots(figsize=(4, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, empty, ha="center", va="center")
        return fig, []
    cols = min(columns, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, row_height * rows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    return fig, list(axes.ravel())


def _interval(metrics: dict, key: str) -> str:
    ci = (metrics.get("intervals") or {}).get(key)
    return f" (95% interval {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""


def _calibration_lines(cal: dict) -> list[str]:
    if not cal:
        return []
    lines = ["", "## Calibration", "", f"Temperature **{cal.get('temperature', 1.0):.4g}**: {cal.get('note', '')}. "
             "Predictions divide the logits by it before the softmax; ECE over "
             f"{cal.get('bins', 15)} equal-width confidence bins.", "",
             "| split | n | ECE before | ECE after | NLL before | NLL after |", "|---|---:|---:|---:|---:|---:|"]
    f = lambda v: f"{v:.4f}" if v is not None else "-"  # noqa: E731
    for split in ("val", "test"):
        if cal.get(split):
            c = cal[split]
            lines.append(f"| {split} | {c['n']} | {f(c['ece_before'])} | {f(c['ece_after'])} | {f(c['nll_before'])} | "
                         f"{f(c['nll_after'])} |")
    return lines


def _error_lines(errors: dict | None, shown: int = 5) -> list[str]:
    if errors is None:
        return []
    items = errors["top_losses"]
    lines = ["", "## Error analysis", ""]
    if not items:
        return lines + [f"No {errors['split']} image is misclassified."]
    lines += [f"The most confidently wrong {errors['split']} images (all {len(items)} on "
              f"top_losses_{errors['split']}.png):", "", "| image | true | predicted | probability | loss |",
              "|---|---|---|---:|---:|"]
    return lines + [f"| `{Path(t['path']).name}` | {t['true']} | {t['predicted']} | {t['probability']:.3f} | "
                    f"{t['loss']:.3f} |" for t in items[:shown]]


def write_run_report(run_path: str | Path, meta: dict, plan_rows: list[dict], history: list[dict],
                     test: dict | None, skipped: list[tuple[str, str]], plots: list[Path],
                     errors: dict | None = None) -> Path:
    """report.md: what was trained, how, the per-epoch table, test metrics, calibration, the most confidently
    wrong images and what was skipped."""
    run_path = Path(run_path)
    lines = [f"# posetune run: {meta['backbone']} / {meta['strategy']}", "",
             f"- data: `{meta.get('data')}` ({meta.get('layout')}), classes: {', '.join(meta['classes'])}",
             f"- weights: {meta.get('weight_source')}; image size {meta['preprocessing']['input_size'][-1]} px",
             f"- best epoch {meta.get('best_epoch')} of {len(history)}; train time {meta.get('train_seconds', 0):.1f} s"
             + (f" on {meta['device']}, {meta['precision']}" if meta.get("device") and meta.get("precision") else ""),
             *_refit_lines(meta.get("refit")),
             "", "## Stages", "", "| stage | params | trainable | lr | bn |", "|---|---:|---|---:|---|"]
    lines += [f"| {r['stage']} | {r['params']:,} | {'yes' if r['trainable'] else 'frozen'} | {r['lr']:.2e} | {r['bn']} |"
              for r in plan_rows]
    lines += ["", "## Epochs", "", "| epoch | train loss | train acc | val loss | val acc | s |", "|---:|---:|---:|---:|---:|---:|"]
    for r in history:
        lines.append(f"| {r['epoch']}{' *' if r.get('best') else ''} | {r.get('train_loss', 0):.4f} | "
                     f"{r.get('train_accuracy', 0):.3f} | {r.get('val_loss', float('nan')):.4f} | "
                     f"{r.get('val_accuracy', float('nan')):.3f} | {r.get('seconds', 0):.1f} |")
    if test and test.get("n"):
        lines += ["", "## Test", "", f"accuracy {test['accuracy']:.4f}{_interval(test, 'accuracy')}, balanced accuracy "
                  f"{test['balanced_accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f}{_interval(test, 'macro_f1')} "
                  f"on {test['n']} images", "",
                  "| class | precision | recall | F1 | n |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
                  for c, v in test["per_class"].items()]
        if test.get("most_confused"):
            lines += ["", "Most confused: " + "; ".join(f"{p['true']} -> {p['predicted']} ({p['count']})"
                                                        for p in test["most_confused"])]
    lines += _calibration_lines(meta.get("calibration") or {}) + _error_lines(errors)
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    if skipped:
        lines += ["", f"## Skipped files ({len(skipped)})", "", "| file | reason |", "|---|---|"]
        lines += [f"| `{p}` | {r} |" for p, r in skipped[:200]]
    out = run_path / "report.md"
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out


def _refit_lines(refit: dict | None) -> list[str]:
    """`train --refit`: where the epoch count and the temperature came from."""
    if not refit:
        return []
    val = refit.get("selection_val") or {}
    score = f" (val accuracy {val['accuracy']:.4f} on {val['n']} images)" if val.get("accuracy") is not None else ""
    return [f"- refit: trained on train + val for {refit['epochs']} epochs, as long as the selection run "
            f"[{refit['selection_run']}/]({refit['selection_run']}/report.md){score}, whose temperature "
            f"{refit['temperature']:.3g} it keeps; this model has no val score of its own"]


def plot_accuracy_vs_latency(rows: list[dict], out: str | Path) -> Path:
    """Leaderboard rows: test accuracy against batch-1 latency, one marker per strategy, error bars
    where known, and the Pareto front (rows with ``pareto`` set) joined by a step line."""
    plt = pyplot()
    pts = [r for r in rows if r.get("test_accuracy") is not None and r.get("latency_ms") is not None]
    strategies = sorted({r["strategy"] for r in pts})
    markers = dict(zip(strategies, "os^Dvp<>"))
    fig, ax = plt.subplots(figsize=(7, 4.6))
    for strategy in strategies:
        sel = [r for r in pts if r["strategy"] == strategy]
        ax.errorbar([r["latency_ms"] for r in sel], [r["test_accuracy"] for r in sel],
                    yerr=[r.get("test_accuracy_err") or 0 for r in sel], fmt=markers.get(strategy, "o"), ms=7,
                    capsize=3, label=strategy, alpha=0.85)
    front = sorted((r for r in pts if r.get("pareto")), key=lambda r: r["latency_ms"])
    # Strategies of one backbone share its latency: name each backbone once, and each Pareto point in full.
    tops = {}
    for r in pts:
        if r["backbone"] not in tops or r["test_accuracy"] > tops[r["backbone"]]["test_accuracy"]:
            tops[r["backbone"]] = r
    labelled = [r for r in sorted(pts, key=lambda r: r["latency_ms"]) if r.get("pareto") or tops[r["backbone"]] is r]
    for i, r in enumerate(labelled):  # alternate below / above so neighbours do not overprint
        label = f"{r['backbone']} / {r['strategy']}" if r.get("pareto") else r["backbone"]
        ax.annotate(label, (r["latency_ms"], r["test_accuracy"]), textcoords="offset points",
                    xytext=(6, -12 if i % 2 == 0 else 8), fontsize=7)
    if front:
        ax.step([r["latency_ms"] for r in front], [r["test_accuracy"] for r in front], where="post", color="crimson",
                lw=1.2, ls="--", label="Pareto front")
        ax.scatter([r["latency_ms"] for r in front], [r["test_accuracy"] for r in front], s=160,
                   facecolors="none", edgecolors="crimson", zorder=3)
    ax.margins(x=0.2)  # room for the labels right of the last points
    ax.set_xlabel("latency per image, batch 1 (ms)")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy vs latency (up and left is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, out)


def plot_strategy_bars(rows: list[dict], out: str | Path) -> Path:
    """Grouped bars: test accuracy per backbone (groups) and strategy (bars), with error bars."""
    import numpy as np

    plt = pyplot()
    pts = [r for r in rows if r.get("test_accuracy") is not None]
    backbones = list(dict.fromkeys(r["backbone"] for r in pts))
    strategies = list(dict.fromkeys(r["strategy"] for r in pts))
    width = 0.8 / max(1, len(strategies))
    x = np.arange(len(backbones))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(backbones) + 2), 4.2))
    for i, strategy in enumerate(strategies):
        by = {r["backbone"]: r for r in pts if r["strategy"] == strategy}
        acc = [by[b]["test_accuracy"] if b in by else np.nan for b in backbones]
        err = [(by[b].get("test_accuracy_err") or 0) if b in by else 0 for b in backbones]
        bars = ax.bar(x + (i - (len(strategies) - 1) / 2) * width, acc, width, yerr=err, capsize=3, label=strategy)
        ax.bar_label(bars, labels=[f"{a:.2f}" if a == a else "" for a in acc], fontsize=7, padding=2)
    ax.set_xticks(x, backbones, rotation=20, ha="right")
    ax.set_ylim(0, 1.2)
    ax.set_ylabel("test accuracy")
    ax.set_title("test accuracy per backbone and strategy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", ncol=max(1, len(strategies)), frameon=False)
    return save_figure(fig, out)
