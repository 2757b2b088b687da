"""Plots (PNG) and the markdown report of a run."""

from __future__ import annotations

from pathlib import Path

from posetune.run import atomic_write_text


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(metrics: dict, out: str | Path) -> Path:
    """Confusion matrix with counts, rows = true class, normalised colours."""
    import numpy as np

    plt = _pyplot()
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
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_history(history: list[dict], out: str | Path) -> Path:
    """Loss and accuracy per epoch, train and val, with the best epoch marked."""
    plt = _pyplot()
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
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


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
