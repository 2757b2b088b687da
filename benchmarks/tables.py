"""Render benchmarks/README.md from benchmarks/results/*.json (called by suite.py and bench_fmnist.py)."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BEGIN, END = "<!-- tables:begin -->", "<!-- tables:end -->"

INTRO = """# Benchmarks

`make bench-quick` (a few minutes on 2 cores) and `make bench` (every case, plus Fashion-MNIST-1k, long) run
`benchmarks/suite.py`. Every headline figure is a ratio of two measurements taken one right after the other in
the same run (these CPUs are shared and noisy); the absolute figures are beside it here and in full in
`benchmarks/results/*.json`. Sections: `python benchmarks/suite.py --quick --only predict,onnx`.

What each ratio compares:

- **train_efficiency**: `posetune train` images/s over its steady-state epochs (epoch 1 and per-epoch
  validation excluded) / the bare model's forward + backward + AdamW step images/s on an in-memory tensor of the
  same shape, same frozen stages, measured in one process (bare blocks between the epochs, each side's rate
  pooled over the steady epochs). Minimum over the cases.
- **vs_plain_loop**: the loop from the torchvision fine-tuning tutorial (ImageFolder, PIL decode + transforms
  every epoch, DataLoader with one worker per core, train + val phase per epoch) / posetune (decode-once +
  the same epochs), same model, strategy (full), batch, image size, optimizer, on 1024-1280 px JPEGs.
- **decoded_cache_speedup**: the same training step fed by decoding (PIL open + resize) every epoch / by
  posetune's decoded-image cache (issue 3).
- **linear_cache_speedup**: the linear strategy trained with training.loop.fit (frozen base forward every epoch) /
  posetune's cached-feature training, 10 epochs (issue 2).
- **predict_efficiency**: `posetune predict RUN FOLDER` images/s (wall of a folder minus wall of one image, so
  start-up and model load are excluded) / bare inference images/s on in-memory tensors, same model and size.
- **predict_efficiency_small_images**: the same, on the photos resized to 320x240 (typical dataset images).
- **batch_jitter_speedup**: training epoch from the decoded cache with colour jitter per image (before) / on the
  batch (after), interleaved in one process.
- **mallopt_speedup** (before/after of `runtime.tune_allocator()`): bare training step rate with `runtime.tune_allocator()` / with `POSETUNE_NO_MALLOPT=1`.

Reproduce: `make bench-quick` (or `.venv/bin/python benchmarks/suite.py --quick`), `make bench`;
one section: `.venv/bin/python benchmarks/suite.py --quick --only linear_cache`; Fashion-MNIST-1k alone:
`PYTHONPATH=src .venv/bin/python benchmarks/bench_fmnist.py --seeds 1`. Scratch files go to
`$TMPDIR/posetune-bench` and `$TMPDIR/posetune-fmnist1k`.

Noise: on a shared 2-core machine another process with its own 2 compute threads slows a torch step
10-30x (OpenMP threads wait on each other), not 2x; compare only the ratios, and check
`load_average_1min` in each results file before trusting an absolute figure.
"""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def summary_table() -> list[str]:
    s = _load("summary")
    if not s:
        return ["_No summary yet: run `make bench-quick`._"]
    m = s.get("machine", {})
    lines = [f"## Summary ({s.get('mode')} run, {m.get('cpus')} CPUs, load average {m.get('load_average_before')} -> "
             f"{m.get('load_average_after')}, {s.get('wall_seconds')} s; data: {s.get('data')})", "",
             "| key | value | target | measured as |", "|---|---|---|---|"]
    te, pl, dc, lc, pr, ox, ma = (_load(f"bench_{n}") or {} for n in
                                  ("train_efficiency", "plain_loop", "decoded_cache", "linear_cache", "predict", "onnx",
                                   "mallopt"))
    how = {
        "train_efficiency": "; ".join(f"{c['backbone']} {c['strategy']} {c['size']}px: epochs {_fmt(c['epoch_images_per_s'][1:])} / "
                                      f"bare blocks {_fmt(c['bare_block_images_per_s'])} img/s, per epoch "
                                      f"{_fmt(c['efficiency_epochs'])}, pooled {c['efficiency']} (across processes {c['efficiency_across_processes']})"
                                      + (f", measured {c['measured']}" if c.get("measured") else "")
                                      for c in te.get("cases", [])),
        "vs_plain_loop": (f"{sum(pl['plain_epoch_seconds']):.1f} s / {sum(pl['posetune_epoch_seconds']) + (pl.get('posetune_decode_once_seconds') or 0):.1f} s "
                          f"for {pl['epochs']} epochs at {pl['size']}px (steady epoch {pl['vs_plain_loop_steady_epoch']}x); "
                          f"test acc plain {pl['plain_test_accuracy']:.3f} vs posetune {pl['posetune_test_accuracy']:.3f}") if pl else "",
        "decoded_cache_speedup": (f"epoch {_fmt(dc['epoch_seconds_decode_every_epoch'])} s vs {_fmt(dc['epoch_seconds_with_cache'])} s "
                                  f"({dc['images']} images, {dc['size']}px); decode once {dc['decode_once_seconds']} s; "
                                  f"10 epochs incl. decode {dc['decoded_cache_speedup_10_epochs_incl_decode']}x") if dc else "",
        "linear_cache_speedup": (f"{lc['per_epoch_forward_train_seconds']} s vs {lc['cached_train_seconds']} s; test acc "
                                 f"{lc['per_epoch_forward_test_accuracy']:.3f} vs {lc['cached_test_accuracy']:.3f}") if lc else "",
        "predict_efficiency": (f"median of per-round ratios {_fmt(pr.get('predict_efficiency_rounds'))}: "
                               f"{_fmt(pr.get('posetune_predict_images_per_s_rounds'))} / "
                               f"{_fmt(pr.get('bare_inference_images_per_s_rounds'))} img/s, {pr['images']} JPEGs of "
                               f"1024-1280 px; decoding them alone runs at {pr.get('decode_only_images_per_s')} img/s "
                               f"and the optimised model at {pr.get('optimized_inference_images_per_s')}, which caps the "
                               f"ratio at about {pr.get('ceiling_with_decode')} on shared cores") if pr else "",
        "predict_efficiency_small_images": (f"rounds {_fmt(pr.get('predict_efficiency_rounds_small_images'))}: "
                                            f"{_fmt(pr.get('posetune_predict_images_per_s_rounds_small_images'))} img/s "
                                            "on the same photos at 320x240") if pr else "",
        "onnx_speedup_b1": (f"{ox['torch_eager']['batch1_ms_p50']} ms / {ox['onnxruntime']['batch1_ms_p50']} ms") if ox else "",
        "mallopt_speedup": (f"{_fmt(ma['images_per_s_tuned'])} vs {_fmt(ma['images_per_s_untuned'])} img/s; minor faults "
                            f"{_fmt(ma['minor_faults_tuned'])} vs {_fmt(ma['minor_faults_untuned'])}") if ma else "",
        "help_seconds": "median of 3 `posetune --help`",
        "predict_one_seconds": "`posetune predict RUN one.jpg --json`, model load included",
    }
    for key, target in s.get("targets", {}).items():
        if key in s:
            lines.append(f"| {key} | {_fmt(s[key])} | {target} | {how.get(key, '')} |")
    return lines


def fmnist_table() -> list[str]:
    f = _load("fmnist1k")
    if not f:
        return []
    p = f["protocol"]
    lines = ["", f"## Fashion-MNIST-1k ({p['train_per_class']} train images per class, {p['test']} test images, "
             f"{p['image_size']} px, {p['backbone']}, batch {p['batch_size']}, {p.get('cpus')} CPUs)", "",
             "posetune holds out 15% of TRAIN for validation (best epoch), so it trains on 850 images; the plain "
             "loop (torchvision tutorial, run in the same benchmark run right after each posetune run) trains on "
             "the same 850 and validates on the same 150. Train time = posetune's `train_seconds` (feature extraction, epochs and "
             "per-epoch validation; not the 10,000-image test evaluation). Measured (UTC): when the strategy's "
             "latest run was; rows measured at different times come from different invocations (machine states), so "
             "their seconds compare only within one time (a posetune row and its peers always share one).", "",
             "| strategy | seeds | test accuracy | train s | plain loop acc | plain loop s | matches plain loop | measured |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in f["strategies"].items():
        acc = f"{r['test_accuracy_mean']:.3f}" + (f" ± {r['test_accuracy_std']:.3f}" if r["seeds"] > 1 else "")
        ref_acc = r.get("plain_test_accuracy_mean")
        ref_acc = f"{ref_acc:.3f}" if ref_acc is not None else "-"
        ref_s = r.get("plain_train_seconds_mean")
        ref_s = f"{ref_s:.0f}" if ref_s is not None else "-"
        match = {True: "yes", False: "no", None: "-"}[r.get("matches_plain_loop")]
        lines.append(f"| {name} | {r['seeds']} | {acc} | {r['train_seconds_mean']:.0f} | {ref_acc} | {ref_s} | {match} "
                     f"| {r.get('measured') or 'earlier, undated'} |")
    peers = [(name, peer, v) for name, r in f["strategies"].items() for peer, v in r.get("peers", {}).items()
             if peer != "plain-loop"]
    if peers:
        lines += ["", "Peers, same protocol, run right after each posetune run: "
                  + "; ".join(f"{peer} {name} {v['test_accuracy_mean']:.3f} in {v['train_seconds_mean']:.0f} s"
                              for name, peer, v in peers) + "."]
    best = f["strategies"][f["best"]]
    lines += ["", f"Best: **{f['best']}**, {best['test_accuracy_mean']:.3f} in {best['train_seconds_mean']:.0f} s "
              f"(targets: >= 0.88, < 294 s)."]
    return lines


def trust_tables() -> list[str]:
    """Background reliance per strategy and ECE before/after temperature, from full runs only (not --smoke)."""
    lines: list[str] = []
    rel, cal = _load("background_reliance"), _load("calibration")
    if rel and rel.get("mode") == "full":
        p, bg = rel["protocol"], rel.get("background") or {}
        lines += ["", f"## Background reliance (`bench_reliance.py`: synthetic yoga with figure masks, demo settings, "
                  f"{p['backbones']} at {p['image_size']} px, {p['reliance_images']} test images, {p.get('cpus')} CPUs)", "",
                  "Share of the HiResCAM map (predicted class) outside the figure; 0 = only the figure; a map with no "
                  f"preference scores {_fmt(bg.get('background_area'))}.", "",
                  "| strategy | background reliance | test accuracy | train s |", "|---|---|---|---|"]
        lines += [f"| {r['strategy']} | {_fmt(r['background_reliance'])} | {_fmt(r['test_accuracy'])} | "
                  f"{_fmt(r['train_seconds'])} |" for r in rel["rows"]]
    if cal and cal.get("mode") == "full":
        p = cal["protocol"]
        lines += ["", f"## Calibration (`bench_calibration.py`: Fashion-MNIST-1k, {p['test']} test images, ECE over "
                  f"{p['ece_bins']} bins, temperature fitted on val; goal: after <= {p['goal_ece_after']})", "",
                  "| strategy | seed | temperature | ECE before | ECE after | evaluate's ECE | test accuracy |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['strategy']} | {r['seed']} | {_fmt(r['temperature'])} | {_fmt(r['ece_before'])} | "
                  f"{_fmt(r['ece_after'])} | {_fmt(r['ece_after_evaluate'])} | {_fmt(r['test_accuracy'])} |"
                  for r in cal["runs"]]
    return lines


def live_table() -> list[str]:
    """Live mode in headless Chromium (bench_live.py): one row per engine."""
    live = _load("live")
    if not live:
        return []
    cam = live["camera"]
    lines = ["", f"## Live mode (`bench_live.py`: the served page in headless Chromium, its fake camera looping a "
             f"{cam['session_s']:g} s synthetic session at {cam['size']} px, {cam['fps']} fps; Live on for "
             f"{live['seconds']:g} s; {live['run']}; load average {_fmt(round(live['load_average'][0], 2))} on "
             f"{live['cpus']} CPUs)", "",
             "Latency: camera picture grabbed -> answer drawn. Match: answered frames captured during a hold whose shown "
             "label is that hold's pose (session time from the stream's opening; best shift of -2..+2 s beside it). The page "
             "sends at most 10 frames/s, one in flight: about 10 answered frames/s means the server kept up, and the "
             "latency is the headroom.", "",
             "| engine | frames sent / answered | answered frames/s | latency ms p50 / p95 | first frame ms | "
             "shown label match (smoothing) | server label match | best shift s |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {e['frames_sent']} / {e['frames_answered']} | {_fmt(e['answered_frames_per_s'])} | "
              f"{_fmt(e['latency_ms_median'])} / {_fmt(e['latency_ms_p95'])} | {_fmt(e['first_frame_latency_ms'])} | "
              f"{_fmt(e['shown_label_match'])} ({e['smoothing']}) | {_fmt(e['server_label_match'])} | "
              f"{_fmt(e['best_shift_s'])} |" for name, e in live["engines"].items()]
    return lines


def levers_table() -> list[str]:
    """bench_levers.py: each lever's test accuracy (mean ± std over seeds) and cost against the baseline."""
    lev = _load("levers")
    if not lev:
        return []
    sizes = lev["protocol"]["sizes"]
    lines = ["", "## Training levers (`bench_levers.py`: the baseline (posetune's defaults before the sweep: "
             "--base-lr-ratio 0.1, now 0.3; --crop-scale 0.5) with one change; "
             + ", ".join(f"{k} at {v} px" for k, v in sizes.items()) + " unless the lever sets the size)", "",
             "Test accuracy, mean ± std over the seeds (val chooses the epoch; test is only reported). Cost: the "
             "lever's training seconds / the baseline's on the same set in the same invocation (same machine state; "
             "'-' where that invocation trained no baseline; tta: the 10-view evaluation instead).", "",
             "| set | lever | seeds | test accuracy | vs baseline | train s | cost |", "|---|---|---|---|---|---|---|"]
    for set_name, table in lev["levers"].items():
        base = (table.get("baseline") or {}).get("test_accuracy_mean")
        for name, r in table.items():
            acc = f"{r['test_accuracy_mean']:.3f}" + (f" ± {r['test_accuracy_std']:.3f}" if r["seeds"] > 1 else "")
            gain = f"{r['test_accuracy_mean'] - base:+.3f}" if base is not None else "-"
            cost = "eval x10" if name == "tta" else _fmt(r.get("cost_vs_baseline") or "-")
            lines.append(f"| {set_name} | {name} | {r['seeds']} | {acc} | {gain} | {r['train_seconds_mean']:.0f} | {cost} |")
    return lines


def ensemble_table() -> list[str]:
    """bench_ensemble.py: whether an ensemble of default runs, or flip TTA, pays on Fashion-MNIST-1k."""
    e = _load("ensemble")
    if not e:
        return []
    m = e["members"]
    lines = ["", f"## Ensembles and flip TTA (`bench_ensemble.py`: {len(m)} runs of `posetune train DATA`, every "
             f"default, seeds 0-{len(m) - 1}, on Fashion-MNIST-1k; {e['protocol']['n_test']:,} test images)", "",
             "Ensembles average the members' probabilities; mean ± std over every combination of k members. Costs "
             "are what a user pays, as multiples of one run: k runs to train, k (x2 with flip TTA) forward passes "
             "per prediction.", "",
             "| recipe | test accuracy | combinations | train s | train cost | predict cost |", "|---|---|---|---|---|---|"]
    for name, r in e["rows"].items():
        acc = f"{r['mean']:.3f}" + (f" ± {r['std']:.3f}" if r["n"] > 1 else "")
        lines.append(f"| {name} | {acc} | {r['n']} | {r['train_seconds']:.0f} | x{r['train_cost']} | x{r['predict_cost']} |")
    return lines


def budget_table() -> list[str]:
    """bench_budget.py: `train --time-budget` per set and budget."""
    b = _load("budget")
    if not b:
        return []
    dated = sorted(r["measured"] for r in b["rows"] if r.get("measured"))
    when = f"{dated[0]} to {dated[-1]} UTC" if dated else "dates in results/budget.json"
    lines = ["", "## `train --time-budget` (`bench_budget.py`; wall time includes the measuring and the final test "
             "evaluation; plans: 'one run' rows come from the planner before it could plan a refit, or from "
             "`--plans one-run`, which turns refit plans off; a refit's epochs run are each run's. Rows measured "
             f"{when} (those without a date earlier), one run per seed; results/budget.json has each row's time)",
             "", "| set | budget | plans | seed | wall s | wall / budget | chose | epochs run | test accuracy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(b["rows"], key=lambda r: (r["set"] != "yoga", bool(r.get("vs")),
                                              0 if r.get("vs") else r["budget_seconds"], r.get("plans", "one run"),
                                              r.get("seed", 0))):  # the plain loop's rows together, by seed
        vs = f" ({r['vs']})" if r.get("vs") else ""
        head = f"| {r['set']} | {r['budget']}{vs} | {r.get('plans', 'one run')} | {r.get('seed', 0)} | {r['wall_seconds']:.0f} | "
        if r.get("refused"):  # the budget was too small for the set on that machine: what posetune said
            lines.append(f"{head}{r['wall_over_budget']:.2f} | refused: {r['refused']} | - | - |")
            continue
        chose = f"{r['backbone']} {r['strategy']}{' + refit' if r.get('refit') else ''}, {r['image_size']} px"
        lines.append(f"{head}{r['wall_over_budget']:.2f} | {chose} | {r['epochs_run']} | {_fmt(r['test_accuracy'])} |")
    peers = b.get("plain_loop_full") or []
    peers = [peers] if isinstance(peers, dict) else peers  # one run before --seeds
    if peers:
        ours = {r.get("seed", 0): r.get("test_accuracy") for r in b["rows"] if r.get("vs")}
        paired = [p for p in peers if ours.get(p.get("seed", 0)) is not None]  # a refused row has no accuracy
        seeds = ", ".join(str(p.get("seed", 0)) for p in peers)
        times = ", ".join(f"{p['train_seconds']:.0f}" for p in peers)
        unpaired = "" if len(paired) == len(peers) else f" ({len(peers) - len(paired)} without a posetune accuracy)"
        lines += ["", f"The plain loop's `full` runs that set the budgets (seeds {seeds}): test accuracy "
                  f"{_mean_std([p['test_accuracy'] for p in peers])} in {times} s of training; posetune in each "
                  f"one's time: {_mean_std([ours[p.get('seed', 0)] for p in paired])}{unpaired}."]
    return lines


def _mean_std(values: list[float]) -> str:
    """mean ± sample std to 4 places (a spread under 0.001 still shows; the value alone for one)."""
    if len(values) < 2:
        return _fmt(values[0]) if values else "-"
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return f"{mean:.4f} ± {std:.4f} ({len(values)} seeds)"


def write_readme() -> Path:
    path = HERE / "README.md"
    text = path.read_text() if path.is_file() else INTRO
    if BEGIN not in text:
        text = text.rstrip() + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    body = "\n".join(summary_table() + fmnist_table() + levers_table() + ensemble_table() + budget_table() + trust_tables() + live_table())
    path.write_text(f"{head}{BEGIN}\n{body}\n{END}{tail}")
    return path
