"""What long work tells the user: messages, tables and progress bars with ETA (Rich), or nothing.

The API takes a ``Reporter``; the CLI passes a :class:`RichReporter` (to stderr when ``--json``
owns stdout), Python callers get :class:`Reporter` (silent) unless they ask for ``verbose=True``.
"""

from __future__ import annotations

from typing import Callable, Sequence


class Reporter:
    """Silent reporter: the interface every part of posetune talks to."""

    def info(self, msg: str) -> None: ...

    def warn(self, msg: str) -> None: ...

    def table(self, title: str, rows: Sequence[dict], columns: Sequence[str] | None = None) -> None: ...

    def start(self, description: str, total: int) -> Callable[[int], None]:
        """Begin a progress bar; returns ``advance(n)``."""
        return lambda n=1: None

    def set_extra(self, text: str) -> None:
        """Live figures beside the progress bar (e.g. running loss and accuracy)."""

    def stop(self) -> None: ...

    def epoch(self, row: dict) -> None: ...


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return "" if value is None else str(value)


class RichReporter(Reporter):
    def __init__(self, stderr: bool = False):
        from rich.console import Console

        self.console = Console(stderr=stderr, highlight=False)
        if not self.console.is_terminal:
            self.console.width = max(self.console.width, 200)  # logs and pipes: do not cut file paths
        self._progress = None
        self._task = None

    def info(self, msg: str) -> None:
        self.console.print(msg)

    def warn(self, msg: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {msg}")

    def table(self, title: str, rows: Sequence[dict], columns: Sequence[str] | None = None) -> None:
        from rich.table import Table

        if not rows:
            return
        columns = list(columns or rows[0].keys())
        table = Table(title=title, title_justify="left", show_lines=False)
        for col in columns:
            numeric = all(isinstance(r.get(col), (int, float)) and not isinstance(r.get(col), bool) for r in rows)
            table.add_column(col, justify="right" if numeric else "left")
        for r in rows:
            table.add_row(*(_fmt(r.get(c)) for c in columns))
        self.console.print(table)

    def start(self, description: str, total: int) -> Callable[[int], None]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.stop()
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[extra]}"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=self.console, transient=True, disable=not self.console.is_terminal,  # no bar noise in logs
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, extra="")
        progress, task = self._progress, self._task
        return lambda n=1: progress.advance(task, n)

    def set_extra(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, extra=text)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def epoch(self, row: dict) -> None:
        self.stop()
        star = " [green]*best[/green]" if row.get("best") else ""
        val = (f"  val loss {row['val_loss']:.4f}  val acc {row['val_accuracy']:.3f}" if "val_loss" in row else "")
        self.console.print(f"epoch {row['epoch']:>3}  train loss {row['train_loss']:.4f}  "
                           f"train acc {row['train_accuracy']:.3f}{val}  ({row.get('seconds', 0):.1f} s){star}")


def print_metrics(reporter: Reporter, metrics: dict, title: str) -> None:
    """Metrics (with their 95% intervals where known), per-class scores, confusion matrix and most-confused pairs
    as tables."""
    if not metrics.get("n"):
        return
    intervals = metrics.get("intervals") or {}
    rows = [{"metric": k, "value": metrics[k]} for k in ("accuracy", "balanced_accuracy", "macro_f1", "n")]
    if intervals:  # 95% bootstrap intervals over the images
        rows = [{**r, "95% interval": "{:.3f} - {:.3f}".format(*intervals[r["metric"]])
                 if r["metric"] in intervals else ""} for r in rows]
    reporter.table(title, rows)
    reporter.table("per class", [{"class": c, **v} for c, v in metrics["per_class"].items()])
    classes = metrics["classes"]
    reporter.table("confusion matrix (rows: true, columns: predicted)",
                   [{"true": c, **{p: row[j] for j, p in enumerate(classes)}} for c, row in
                    zip(classes, metrics["confusion_matrix"])])
    if metrics.get("most_confused"):
        reporter.table("most confused", metrics["most_confused"])
