"""Plots (PNG) and the markdown report of a run."""

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


def write_run_report(run_path: str | Path, meta: dict, plan_rows: list[dict], history: list[dict],
                     test: dict | None, skipped: list[tuple[str, str]], plots: list[Path]) -> Path:
    """report.md: what was trained, how, the per-epoch table, test metrics and what was skipped."""
    run_path = Path(run_path)
    lines = [f"# posetune run: {meta['backbone']} / {meta['strategy']}", "",
             f"- data: `{meta.get('data')}` ({meta.get('layout')}), classes: {', '.join(meta['classes'])}",
             f"- weights: {meta.get('weight_source')}; image size {meta['preprocessing']['input_size'][-1]} px",
             f"- best epoch {meta.get('best_epoch')} of {len(history)}; train time {meta.get('train_seconds', 0):.1f} s",
             "", "## Stages", "", "| stage | params | trainable | lr | bn |", "|---|---:|---|---:|---|"]
    lines += [f"| {r['stage']} | {r['params']:,} | {'yes' if r['trainable'] else 'frozen'} | {r['lr']:.2e} | {r['bn']} |"
              for r in plan_rows]
    lines += ["", "## Epochs", "", "| epoch | train loss | train acc | val loss | val acc | s |", "|---:|---:|---:|---:|---:|---:|"]
    for r in history:
        lines.append(f"| {r['epoch']}{' *' if r.get('best') else ''} | {r.get('train_loss', 0):.4f} | "
                     f"{r.get('train_accuracy', 0):.3f} | {r.get('val_loss', float('nan')):.4f} | "
                     f"{r.get('val_accuracy', float('nan')):.3f} | {r.get('seconds', 0):.1f} |")
    if test and test.get("n"):
        lines += ["", "## Test", "", f"accuracy {test['accuracy']:.4f}, balanced accuracy "
                  f"{test['balanced_accuracy']:.4f}, macro-F1 {test['macro_f1']:.4f} on {test['n']} images", "",
                  "| class | precision | recall | F1 | n |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
                  for c, v in test["per_class"].items()]
        if test.get("most_confused"):
            lines += ["", "Most confused: " + "; ".join(f"{p['true']} -> {p['predicted']} ({p['count']})"
                                                        for p in test["most_confused"])]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    if skipped:
        lines += ["", f"## Skipped files ({len(skipped)})", "", "| file | reason |", "|---|---|"]
        lines += [f"| `{p}` | {r} |" for p, r in skipped[:200]]
    out = run_path / "report.md"
    atomic_write_text(out, "\n".join(lines) + "\n")
    return out


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
