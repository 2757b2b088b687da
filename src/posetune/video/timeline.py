"""The timeline PNG of one video: the smoothed top probability per frame over coloured segment bands."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from posetune.report import pyplot, save_figure
from posetune.video.segments import Segment


def plot_timeline(name: str, times: Sequence[float], top_probability: Sequence[float], segments: Sequence[Segment],
                  classes: Sequence[str], out: str | Path, truth: Sequence[dict] | None = None) -> Path:
    """Segments as bands coloured by pose (ground truth above them when given), the top probability as a line."""
    plt = pyplot()
    colours = {c: plt.cm.tab10(i % 10) for i, c in enumerate(classes)}
    fig, ax = plt.subplots(figsize=(10, 2.8))
    for s in segments:
        ax.axvspan(s.start, s.end, ymin=0, ymax=0.8, color=colours.get(s.pose, "0.7"), alpha=0.35, lw=0)
        ax.text((s.start + s.end) / 2, 0.05, s.pose, ha="center", fontsize=8)
    for h in truth or []:
        ax.axvspan(float(h["start"]), float(h["end"]), ymin=0.85, ymax=1.0, color=colours.get(h["pose"], "0.7"), lw=0)
    ax.plot(times, top_probability, color="black", lw=1)
    ax.set_ylim(0, 1.25 if truth else 1.02)
    ax.set_xlim(0, max([*times, *(s.end for s in segments)], default=1))
    ax.set_xlabel("seconds")
    ax.set_ylabel("probability")
    ax.set_title(f"{name}: predicted segments" + (" (top strip: ground truth)" if truth else ""))
    return save_figure(fig, out)
