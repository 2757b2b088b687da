"""The CLI's start-up: `posetune --help` in a fresh process (help_seconds)."""

from __future__ import annotations

import statistics

from common import posetune_bin, run_child_rss


def bench_cli(ctx: dict) -> dict:
    runs = [run_child_rss([posetune_bin(), "--help"]) for _ in range(3)]
    walls = [r["wall"] for r in runs]
    return {"help_seconds_runs": [round(w, 3) for w in walls], "help_seconds": round(statistics.median(walls), 3),
            "help_cpu_seconds": round(statistics.median(r["cpu"] for r in runs), 3)}
