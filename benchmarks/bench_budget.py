"""Issue 16's `train --time-budget` figures: accuracy reached and wall time used against the budget.

Data: synthetic yoga at the demo's settings (`posetune demo`: 100 train + 30 test images per pose, 160 px) and
Fashion-MNIST-1k (bench_fmnist.py's: 100 train images per class, the official 10,000 test images). For each set
and each ``--budgets`` entry, `posetune.train(DATA, time_budget=B)` from nothing (its probes included): the wall
time of the call against B, the recipe it chose (model.json's ``budget``) and the test accuracy it reports.
With ``--plain-loop`` (Fashion-MNIST only), the torchvision-tutorial loop's `full` strategy runs first in the
same benchmark run (bench_fmnist.py's peer: 10 epochs, 112 px, batch 64), and posetune gets that loop's own
measured training time as its budget: the issue's "same time, which is more accurate". ``--plans refit,one-run``
runs each budget twice in a row, the second time with refit plans off (the planner as it was before it could plan
a refit: one run), so the two plans compare in one benchmark run; ``--plans one-run`` only the latter.
``--seeds 0,1,2`` runs every row once per seed (posetune's ``--seed``; with ``--plain-loop``, the loop runs again
before each seed's row, with that seed, and its own time is that row's budget).

Run: PYTHONPATH=src python benchmarks/bench_budget.py [--sets yoga,fmnist] [--budgets 2m,5m,10m] [--plain-loop]
     [--seeds 0]
     (`--sets fmnist --budgets "" --plain-loop`: only the plain loop and the budget it sets)
Writes benchmarks/results/budget.json (rows of sets, budgets, plans and seeds not rerun are kept, and the plain
loop's runs of seeds not rerun). Wall times depend on the machine's load (load_average is kept per row).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_fmnist  # noqa: E402  (the Fashion-MNIST-1k folders and the plain-loop peer)
from common import save_and_print  # noqa: E402

DEMO_DATA = {"per_class": 100, "test_per_class": 30, "size": 160, "seed": 0}


def seconds_of(budget: str) -> float:
    from posetune.checks import Duration

    return float(Duration()(budget, "--budgets"))


def budget_row(data: Path, name: str, budget: str, work: Path, one_run: bool = False, seed: int = 0) -> dict:
    import posetune
    from posetune.comparison import budget as planner
    from posetune.errors import UsageError

    out = work / f"{name}-{budget}{'-one-run' if one_run else ''}-s{seed}"
    least = planner.REFIT_MIN_EPOCHS_SHARE
    planner.REFIT_MIN_EPOCHS_SHARE = 1000 if one_run else least  # no refit fits: one run
    budget_s = seconds_of(budget)
    t0 = time.perf_counter()

    def row_of(**measured) -> dict:  # what every row says, a refusal's included
        wall = time.perf_counter() - t0
        row = {"set": name, "budget": budget, "seed": seed, "budget_seconds": budget_s, "wall_seconds": round(wall, 1),
               "wall_over_budget": round(wall / budget_s, 3), **measured,
               "plans": "one run" if one_run else "refit allowed", "load_average_1min": round(os.getloadavg()[0], 2),
               "measured": time.strftime("%Y-%m-%d %H:%M")}
        print(json.dumps(row), flush=True)
        return row

    try:
        result = posetune.train(str(data), time_budget=budget, out=str(out), seed=seed)
    except UsageError as exc:  # a budget too small for this set on this machine: the refusal is the row
        return row_of(refused=str(exc))
    finally:
        planner.REFIT_MIN_EPOCHS_SHARE = least
    meta = json.loads((out / "model.json").read_text())
    return row_of(test_accuracy=(result.metrics.get("test") or {}).get("accuracy"),
                  backbone=meta.get("backbone"), strategy=meta.get("strategy"),
                  image_size=meta["preprocessing"]["input_size"][-1], epochs_run=len(result.history),
                  refit=meta.get("refit"), budget_record=meta.get("budget") or {})


def _previous(path: str) -> dict:
    return json.loads(Path(path).read_text()) if Path(path).is_file() else {}


def kept_rows(path: str, rows: list[dict], peer_seeds: set[int]) -> list[dict]:
    """The rows of ``path`` this run did not measure again (another set, budget or seed): a run of one set or
    budget does not erase the others. A seed's plain-loop row goes when the peer ran again with that seed (its
    budget is the new time)."""
    def key(r: dict) -> tuple:  # rows from before refit plans existed planned one run; before --seeds, seed 0
        return r["set"], r["budget"], r.get("plans", "one run"), r.get("seed", 0), bool(r.get("vs"))

    redone = {key(r) for r in rows}
    return [r for r in _previous(path).get("rows", []) if key(r) not in redone
            and not ("vs" in r and r.get("seed", 0) in peer_seeds)]


def kept_peers(path: str, peers: list[dict]) -> list[dict]:
    """The plain-loop runs of ``path`` whose seed this run did not run again, then this run's."""
    old = _previous(path).get("plain_loop_full") or []
    old = [old] if isinstance(old, dict) else old  # one run, before --seeds
    rerun = {p["seed"] for p in peers}
    return sorted([p for p in old if p.get("seed", 0) not in rerun] + peers, key=lambda p: p.get("seed", 0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="yoga,fmnist")
    ap.add_argument("--budgets", default="2m,5m,10m")
    ap.add_argument("--plain-loop", action="store_true")
    ap.add_argument("--plans", default="refit", help="refit (refit plans allowed, the default), one-run (refit plans "
                    "off) or both, comma-separated: each budget runs once per entry, in this order")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds: every row runs once per seed")
    ap.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "posetune-budget"))
    ap.add_argument("--out", default=str(HERE / "results" / "budget.json"))
    args = ap.parse_args(argv)
    if set(args.plans.split(",")) - {"refit", "one-run"}:
        ap.error(f"--plans takes refit and/or one-run, not {args.plans}")
    try:
        seeds = list(dict.fromkeys(int(s) for s in args.seeds.split(",")))  # each once
    except ValueError:
        ap.error(f"--seeds takes comma-separated integers, not {args.seeds}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows, peers = [], []
    sets = args.sets.split(",")
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        tmp = Path(tmp)
        data = {}
        if "yoga" in sets:
            from posetune.data.synth import render_dataset

            render_dataset(tmp / "yoga", **DEMO_DATA)
            data["yoga"] = tmp / "yoga"
        if "fmnist" in sets:
            data["fmnist"] = bench_fmnist.write_folders(bench_fmnist.ensure_dataset(), work / "fmnist1k")
        budgets = [b for b in args.budgets.split(",") if b]  # --budgets "" with --plain-loop: only that row
        for seed in seeds if args.plain_loop and "fmnist" in data else []:  # the loop, then posetune in its time
            peer = bench_fmnist.run_peer("plain-loop", data["fmnist"], "full", seed, tmp)
            print(json.dumps(peer), flush=True)
            peers.append(peer)
            rows.append(dict(budget_row(data["fmnist"], "fmnist", f"{round(peer['train_seconds'])}s", tmp, seed=seed),
                             vs=f"the plain loop's full-strategy training time, seed {seed}, measured just before"))
        for name, root in data.items():
            for budget in budgets:
                for plans in args.plans.split(","):
                    for seed in seeds:
                        rows.append(budget_row(root, name, budget, tmp, one_run=plans.strip() == "one-run", seed=seed))
    result = {"rows": kept_rows(args.out, rows, {p["seed"] for p in peers}) + rows, "cpus": os.cpu_count(),
              "plain_loop_full": kept_peers(args.out, peers)}
    save_and_print(args.out, result)
    from tables import write_readme

    write_readme()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
