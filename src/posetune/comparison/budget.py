"""`posetune train DATA --time-budget 10m`: measure on this machine and data, choose, then train in time.

Stage 1 of `compare` (:mod:`.probe`) runs on a sample of DATA's train and val images (never test): each
candidate backbone's forward throughput and its linear-probe val accuracy, fastest backbone first, until a
quarter of the budget is spent. :func:`plan_budget` (plain numbers in, so it is tested with made-up ones)
turns those into a choice with :func:`.finetune.estimate_cell_seconds`, the estimate `compare
--budget-minutes` uses: enough epochs first (:data:`GOOD_EPOCHS`), then the largest image size, then the
best-probing backbone that fits at it, ``partial`` with as many epochs as fit (at least :data:`MIN_EPOCHS`,
up to :data:`MORE_EPOCHS` x the strategy's default); when no fine-tuning fits, the head alone on cached
features (``linear``). When two runs of the strategy's default epochs fit at that size, the plan is a refit
(`train --refit`: a selection run whose val fits the temperature, then train + val again for as many epochs),
which beat both more epochs and a larger backbone on Fashion-MNIST-1k (:data:`REFIT_MIN_EPOCHS_SHARE`). Training
costs a timed training step per image (:func:`.costs.train_images_per_s`), timed for the first image backbone whose
step could be timed, at its pretrained size (the others' from their forward rate at its step/forward ratio,
:func:`estimated_train_rates`), and again at the size a plan chooses (:func:`plan_with_timed_steps`). The choice
is printed as a table before training, and recorded in model.json (``budget``); the epoch loop's guard ends
training at an epoch boundary if the estimate was off, so the run ends within the budget + 10%.

>>> probes = [Candidate("efficientnet_lite0", 0.8, 200.0, 224)]
>>> choice = plan_budget(probes, {"n_train": 500, "n_val": 100, "n_test": 100}, 120.0, default_epochs=10)
>>> (choice.strategy, choice.image_size, choice.epochs, choice.refit)
('partial', 224, 14, False)
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from posetune.checks import Duration
from posetune.comparison.finetune import CellReporter, estimate_cell_seconds
from posetune.comparison.probe import run_stage1, top_backbones
from posetune.console import Reporter
from posetune.errors import UsageError

PROBE_IMAGES_PER_CLASS = 20  # train (and val) images per class the probes see: enough to rank, quick to run
PROBE_SHARE = 0.25  # no further backbone is probed once this share of the budget is spent
MIN_EPOCHS = 3  # fewer fine-tuning epochs than this lose to the head alone at a larger size
# a smaller image size with this many epochs (capped at the strategy's default) beats a larger one with fewer
# (Fashion-MNIST-1k: 176 px x 5 epochs 0.845 > 240 px x 3 epochs 0.832; at the plain loop's 488 s on a 2-core AVX2
# EPYC, lite1 176 px x 6 epochs 0.843, where lite0 160 px x 13 epochs had scored 0.869 in 300 s on a faster
# machine; benchmarks/bench_levers.py has the epochs curve: 5 epochs -0.013 against 10 at 112 px)
GOOD_EPOCHS = 10
# time left at the largest size goes to more epochs, up to this many times the strategy's default
# (Fashion-MNIST-1k, lite0 partial 112 px: 20 epochs 0.865 against 10 epochs 0.847)
MORE_EPOCHS = 2
SIZE_STEPS = (1.0, 0.75, 0.5)  # image sizes tried, as a share of the backbone's pretrained size
RESERVE_S = 5.0  # scoring and writing the run folder (report, plots) after the last epoch
TIMING_ROUNDS = 3  # plans made again after timing the training step at the size the last one chose
OVERRUN = 1.1  # the guard lets a run end within the budget + 10%
# Under a budget the time is the user's to spend: --patience's default (5 flat epochs) would stop on a flat
# 150-image val while the cosine still has its low-LR epochs to come (Fashion-MNIST-1k 10m: stopped at 11 of
# 20 epochs, 0.863; 17 epochs the day before, 0.875). So it stops after half the epochs the run may stretch to
# (the plan's, or the stretch cap when larger) are flat, unless --patience is given.
BUDGET_PATIENCE_SHARE = 0.5
PLANNED = ("strategy", "epochs", "image_size", "freeze_stages")  # options the plan chooses
# A refit (selection run, then train + val for as many epochs) is planned when both runs fit at least this share of
# the strategy's default epochs. Fashion-MNIST-1k, lite0 partial 224 px, 3 seeds (benchmarks/README.md, levers):
# a refit of 10 + 10 epochs 0.877 +- 0.002, one run of 20 epochs 0.874 +- 0.002 (as long), lite1 at 240 px
# 0.872 (--time-budget 10m); a refit of 20 + 20 0.884. A shorter refit was not measured, so none is planned.
REFIT_MIN_EPOCHS_SHARE = 1.0
# No ensemble or TTA in the plan: on Fashion-MNIST-1k 3 default runs averaged score 0.878 against one run's
# 0.872 +- 0.002 for 3x the training and 3x slower predictions, flip TTA 0.873 (benchmarks/bench_ensemble.py)


@dataclass
class Candidate:
    """What the probes measured of one backbone."""

    backbone: str
    probe_val_accuracy: float
    images_per_s: float  # forward images/s at ``image_size`` (inference copy, batch 32)
    image_size: int  # the backbone's pretrained input size
    # a partial training step at ``image_size``: timed, or estimated (``train_rate_estimated``); None: neither (the
    # landmark kinds, a step that failed, no time left to time one)
    train_images_per_s: float | None = None
    train_rates: dict[int, float] = field(default_factory=dict)  # the step timed again at sizes a plan chose
    train_rate_estimated: bool = False  # train_images_per_s from another backbone's step/forward ratio, not timed


@dataclass
class BudgetChoice:
    backbone: str
    strategy: str
    image_size: int
    epochs: int
    estimated_seconds: float
    reason: str
    rows: list[dict] = field(default_factory=list)  # every plan considered, as the printed table shows it
    smallest_budget_s: float = 0.0  # the quickest plan's seconds (a budget below it fits nothing)
    refit: bool = False  # the selection run, then train + val for as many epochs (train --refit)


def plan_budget(candidates: list[Candidate], counts: dict, seconds_left: float, default_epochs: int,
                decode_s_per_image: float = 0.0) -> BudgetChoice | None:
    """The plan to train, or None when nothing fits ``seconds_left``. ``candidates``: best probe first;
    ``counts``: n_train, n_val, n_test of the whole of DATA."""
    rows, fits = [], []
    decode_s = decode_s_per_image * sum(counts.values())
    enough, most = min(GOOD_EPOCHS, default_epochs), default_epochs * MORE_EPOCHS
    refit_least = max(MIN_EPOCHS, math.ceil(default_epochs * REFIT_MIN_EPOCHS_SHARE))
    for rank, c in enumerate(candidates):
        for step in SIZE_STEPS:
            size = scaled_size(c.image_size, step)
            rates = _rates(c, size)
            for refit in (False, True):
                runs = refit_runs(counts) if refit else [counts]
                per_epoch = sum(_epoch_seconds(rates, n) for n in runs)
                fixed = sum(estimate_cell_seconds({**rates, **n}, 0) + decode_s + RESERVE_S for n in runs)
                epochs = min(most, int((seconds_left - fixed) // per_epoch)) if per_epoch > 0 else 0
                least = refit_least if refit else MIN_EPOCHS
                if refit and epochs < least:
                    continue  # listed only when it fits: the table stays the plans a user would weigh
                est = fixed + max(epochs, least) * per_epoch
                rows.append(_row(c, "partial", size, max(epochs, 0), est, epochs >= least, refit))
                # enough epochs first, then the largest size, then a refit, then the best probe
                if epochs >= least:
                    fits.append((-min(epochs, enough), SIZE_STEPS.index(step), not refit, rank, rows[-1]))
        # linear: one forward pass over train and val for the features, the final val + test pass, the head fit
        ips = c.images_per_s
        est = (counts["n_train"] + 2 * counts["n_val"] + counts["n_test"]) / ips + decode_s + RESERVE_S
        rows.append(_row(c, "linear", c.image_size, default_epochs, est, est <= seconds_left))
    smallest = min(r["estimated s"] for r in rows) if rows else 0.0
    if fits:
        best = min(fits, key=lambda f: f[:4])[-1]
        reason = (f"the largest image size at which {enough}+ epochs of partial fit, with the best-probing "
                  f"backbone that fits at it ({best['epochs']} epochs)" if best["epochs"] >= enough else
                  f"no plan fits {enough}+ epochs: the most epochs that fit ({best['epochs']} of partial), at the "
                  f"largest size that gives them")
        if best["refit"]:
            reason = (f"{best['epochs']} epochs fit twice at the largest size: a selection run (val fits the "
                      f"temperature), then train + val again for as many epochs (--refit; it beat more epochs and "
                      f"a larger backbone on Fashion-MNIST-1k)")
    else:
        linear = [r for r in rows if r["strategy"] == "linear" and r["fits"]]
        if not linear:
            return None
        best = linear[0]
        reason = f"no fine-tuning fits {seconds_left:.0f} s with {MIN_EPOCHS}+ epochs: the head on cached features"
    best["chosen"] = True
    return BudgetChoice(best["backbone"], best["strategy"], best["image size"], best["epochs"], best["estimated s"],
                        reason, rows, smallest, best["refit"])


def plan_with_timed_steps(candidates: list[Candidate], counts: dict, seconds_left: Callable[[], float],
                          default_epochs: int, decode_s_per_image: float,
                          time_step: Callable[[Candidate, int], float | None]) -> BudgetChoice | None:
    """:func:`plan_budget`; then, while the chosen fine-tuning plan is at a size its backbone's training step was
    not timed at, ``time_step(candidate, size)`` times it there (into ``train_rates``) and the plan is made again
    with the seconds left then (at most :data:`TIMING_ROUNDS` times, one more for each backbone whose step was only
    estimated: the plan may move to it after another was timed; past that the plan stands, and the epoch loop's
    guard ends it in time). On Fashion-MNIST-1k `--time-budget 5m` planned 17 epochs of lite0 at 112 px from the
    224 px rate and the guard stopped it after 10."""
    choice = plan_budget(candidates, counts, seconds_left(), default_epochs, decode_s_per_image)
    for _ in range(TIMING_ROUNDS + sum(c.train_rate_estimated for c in candidates)):
        if choice is None or choice.strategy == "linear":
            break
        chosen = next(c for c in candidates if c.backbone == choice.backbone)
        size = choice.image_size
        timed_there = size in chosen.train_rates or (size == chosen.image_size and not chosen.train_rate_estimated)
        if chosen.train_images_per_s is None or timed_there:
            break
        rate = time_step(chosen, size)
        if rate is None:
            break
        chosen.train_rates[size] = rate
        choice = plan_budget(candidates, counts, seconds_left(), default_epochs, decode_s_per_image)
    return choice


def estimated_train_rates(candidates: list[Candidate], timed: dict[str, float | None], untimed: set[str]) -> None:
    """Each candidate's training step at its pretrained size: ``timed[backbone]`` where it was timed (None: the
    step failed, and stays None), else, for the image backbones in ``untimed``, its forward rate at the
    step/forward ratio of the first one timed (``train_rate_estimated``; the plan times the chosen backbone's step
    where it trains, :func:`plan_with_timed_steps`). Timing lite1's and lite2's steps took 13 of 58 s of measuring
    on Fashion-MNIST-1k (2-core CPU), and their ratios matched lite0's within 0.30-0.36."""
    reference = next((c for c in candidates if timed.get(c.backbone)), None)
    for c in candidates:
        if timed.get(c.backbone):
            c.train_images_per_s = timed[c.backbone]
        elif reference is not None and c.backbone in untimed:
            c.train_images_per_s = round(c.images_per_s * timed[reference.backbone] / reference.images_per_s, 2)
            c.train_rate_estimated = True


def refit_runs(counts: dict) -> list[dict]:
    """The two runs of a refit as split counts: the selection (train, scored on val; test is not scored), then the
    final run (train + val, scored on test)."""
    return [{"n_train": counts["n_train"], "n_val": counts["n_val"], "n_test": 0},
            {"n_train": counts["n_train"] + counts["n_val"], "n_val": 0, "n_test": counts["n_test"]}]


def selection_share(counts: dict, rates: dict) -> float:
    """The share of a refit's epoch time that the selection run takes (the rest is the final run's); ``rates``:
    images_per_s and train_images_per_s at the planned size."""
    sel, final = (_epoch_seconds(rates, n) for n in refit_runs(counts))
    return sel / (sel + final)


def _epoch_seconds(rates: dict, counts: dict) -> float:
    """One more epoch's estimated seconds (training and its val pass) of a run over ``counts``."""
    return estimate_cell_seconds({**rates, **counts}, 1) - estimate_cell_seconds({**rates, **counts}, 0)


def _rates(c: Candidate, size: int) -> dict:
    """``c``'s forward and training-step images/s at ``size``, as :func:`estimate_cell_seconds` reads them."""
    return {"images_per_s": at_size(c, size), "train_images_per_s": at_size(c, size, train=True)}


def selection_times(now: float, deadline: float, target: float, decode_s: float, val_s: float,
                    share: float) -> tuple[float, float, float]:
    """A refit's selection run: (deadline, target, its val scoring seconds). Between ``now`` and the whole plan's
    ``deadline`` / ``target`` come both runs' decoding (``decode_s`` each), the selection's val scoring and writing
    (``val_s`` + RESERVE_S) and both runs' epochs; the selection's epochs get ``share`` of the epochs' time."""
    fixed = 2 * decode_s + val_s + RESERVE_S
    return (now + decode_s + (deadline - now - fixed) * share, now + decode_s + (target - now - fixed) * share, val_s)


def at_size(c: Candidate, size: int, train: bool = False) -> float | None:
    """Forward (``train``: training step) images/s of ``c`` at ``size`` px: conv cost grows with the pixel count,
    from the nearest size it was measured at (the pretrained one; for the training step also the sizes timed
    again, :func:`plan_with_timed_steps`). Only roughly: lite0's step at 112 px ran at 0.71x of what its 224 px
    rate scaled by the pixels says (67 against 94 img/s; 160 px: 1.01x), so a plan's own size is timed."""
    if not train:
        return c.images_per_s * (c.image_size / size) ** 2
    if c.train_images_per_s is None:
        return None
    timed = {c.image_size: c.train_images_per_s, **c.train_rates}
    nearest = _nearest(timed, size)
    return timed[nearest] * (nearest / size) ** 2


def at_estimate(c: Candidate, size: int) -> bool:
    """Whether :func:`at_size`'s training rate of ``c`` at ``size`` scales the estimated pretrained-size rate."""
    timed = {c.image_size, *c.train_rates}
    return c.train_rate_estimated and c.image_size not in c.train_rates and _nearest(timed, size) == c.image_size


def _nearest(sizes, size: int) -> int:
    return min(sizes, key=lambda s: abs(math.log(s / size)))


def scaled_size(size: int, step: float) -> int:
    """``size * step`` to a multiple of 16 (at least 32): what the backbones' strides divide evenly."""
    return size if step == 1.0 else max(32, int(round(size * step / 16)) * 16)


def _row(c: Candidate, strategy: str, size: int, epochs: int, est: float, fits: bool, refit: bool = False) -> dict:
    return {"backbone": c.backbone, "probe val acc": round(c.probe_val_accuracy, 4), "strategy": strategy,
            "image size": size, "epochs": epochs, "refit": refit, "estimated s": round(est, 1), "fits": fits,
            "chosen": False}


def train_within_budget(data, time_budget: str, reporter: Reporter | None = None, config=None,
                        overwrite: bool = False, verbose: bool = False, **options):
    """`posetune train DATA --time-budget T`: measure, choose and train within T (+10%); returns the
    :class:`posetune.training.job.TrainResult` of the chosen run, whose model.json records the decision."""
    from posetune.console import RichReporter
    from posetune.options import DEFAULT_BACKBONES, TrainOptions
    from posetune.run import RunDir

    t0 = time.perf_counter()
    reporter = reporter or (RichReporter() if verbose else Reporter())
    budget_s = Duration()(time_budget, "--time-budget")
    given = [f"--{k.replace('_', '-')}" for k in PLANNED if options.get(k) is not None]
    if given or options.get("resume"):
        raise UsageError(f"--time-budget chooses the strategy, epochs and image size; drop "
                         f"{', '.join(given) or '--resume'} (or train without --time-budget)")
    options = {k: v for k, v in options.items() if v is not None}
    opts = TrainOptions.from_sources(config, data=str(data) if data is not None else None, **options)
    if opts.refit:  # from --refit or from --config
        raise UsageError("--time-budget chooses whether to refit (when two runs fit); drop refit (--refit, or "
                         "refit: true in --config)")
    if opts.out:
        RunDir(opts.out).check_free(overwrite)
    backbones = [opts.backbone] if "backbone" in options else list(DEFAULT_BACKBONES)
    candidates, counts, decode_s, time_step = measure(opts, backbones, budget_s * PROBE_SHARE, t0, reporter)
    from posetune.strategies import get_strategy

    def timed_step(c: Candidate, size: int) -> float | None:
        guess, rate = at_size(c, size, train=True), time_step(c, size)
        source = ("estimated from another backbone's step/forward ratio" if at_estimate(c, size)
                  else "scaled from the sizes timed before")
        if rate and guess:
            reporter.info(f"time budget: {c.backbone}'s training step at {size} px: {rate:.1f} images/s "
                          f"({source}: {guess:.1f}); planning again")
        return rate

    choice = plan_with_timed_steps(candidates, counts, lambda: budget_s - (time.perf_counter() - t0),
                                   get_strategy("partial").epochs, decode_s, timed_step)
    spent = time.perf_counter() - t0
    if choice is not None:
        reporter.table(f"time budget {time_budget}: plans that fit the {budget_s - spent:.0f} s left after "
                       f"{spent:.0f} s of measuring", choice.rows)
    if choice is None:
        quickest = _quickest(candidates, counts, decode_s)
        raise UsageError(f"--time-budget {time_budget} is too small for {opts.data}: measuring took {spent:.0f} s and "
                         f"the quickest plan (the head alone) needs ~{quickest:.0f} s more; give at least "
                         f"--time-budget {_round_up(spent + quickest)}")
    reporter.info(f"chosen: {choice.backbone}, {choice.strategy}{' + refit' if choice.refit else ''}, "
                  f"{choice.image_size} px, {choice.epochs} epochs{' in each run' if choice.refit else ''}, "
                  f"~{choice.estimated_seconds:.0f} s ({choice.reason})")
    chosen = next(c for c in candidates if c.backbone == choice.backbone)
    rates = _rates(chosen, choice.image_size)
    ips = rates["images_per_s"]
    # a refit's final run scores test only (val trained), its selection val only
    scoring_s = (counts["n_test"] if choice.refit else counts["n_val"] + counts["n_test"]) / ips  # the loop re-checks it
    final_eval_s = scoring_s + RESERVE_S
    deadline = t0 + budget_s * OVERRUN - final_eval_s
    most = get_strategy("partial").epochs * MORE_EPOCHS  # the cap plan_budget gives epochs
    selection = None
    if choice.refit:  # the selection stretches into its share of the epochs' time; the final run repeats its epochs
        selection = selection_times(time.perf_counter(), deadline, t0 + budget_s - final_eval_s,
                                    decode_s * sum(counts.values()), counts["n_val"] / ips,
                                    selection_share(counts, rates))
    if "patience" not in options and opts.patience == TrainOptions().patience:
        options["patience"] = max(opts.patience, math.ceil(BUDGET_PATIENCE_SHARE * max(most, choice.epochs)))
        reporter.info(f"patience {options['patience']} epochs (half the epochs the run may stretch to; "
                      f"--patience sets it)")
    decision = {"time_budget": time_budget, "time_budget_s": budget_s, "measuring_seconds": round(spent, 2),
                "chosen": {k: getattr(choice, k) for k in ("backbone", "strategy", "image_size", "epochs",
                                                           "estimated_seconds", "refit")},
                "reason": choice.reason, "plans": choice.rows, "patience": options.get("patience", opts.patience),
                "measured": [dataclasses.asdict(c) for c in candidates], "probe_images_per_class": PROBE_IMAGES_PER_CLASS}
    from posetune.training import train

    options.update(backbone=choice.backbone, strategy=choice.strategy,
                   image_size=choice.image_size, epochs=choice.epochs)
    if choice.refit:
        options["refit"] = True
    result = train(opts.data, reporter=reporter, config=config, overwrite=overwrite, deadline=deadline,
                   budget=decision, stretch=(t0 + budget_s - final_eval_s, max(most, choice.epochs)),
                   final_eval_s=scoring_s, selection_budget=selection,
                   **{k: v for k, v in options.items() if k != "data"})
    wall = time.perf_counter() - t0
    result.budget = {**(result.budget or {}), "wall_seconds": round(wall, 2)}
    reporter.info(f"time budget {time_budget}: {wall:.0f} s used of {budget_s:.0f} s ({wall / budget_s:.0%})")
    return result


def _quickest(candidates: list[Candidate], counts: dict, decode_s_per_image: float) -> float:
    """Seconds of the quickest plan there is (the head alone on the fastest backbone), with its margins."""
    total = sum(counts.values())
    ips = max((c.images_per_s for c in candidates), default=1.0)
    return (counts["n_train"] + 2 * counts["n_val"] + counts["n_test"]) / ips + decode_s_per_image * total + RESERVE_S


def _round_up(seconds: float) -> str:
    """A budget a person would type, just above ``seconds``: 40s, 3m, 2h."""
    if seconds <= 90:
        return f"{int(math.ceil(seconds / 10) * 10)}s"
    if seconds <= 90 * 60:
        return f"{int(math.ceil(seconds / 60))}m"
    return f"{int(math.ceil(seconds / 3600))}h"


def measure(opts, backbones: list[str], probe_budget_s: float, t0: float,
            reporter: Reporter) -> tuple[list[Candidate], dict, float, Callable[[Candidate, int], float | None]]:
    """(candidates best probe first, the counts of DATA's splits, decode seconds per image, a timer of a
    candidate's training step at a size): compare's stage 1 on a sample of train and val, one backbone after
    another, until ``probe_budget_s`` is spent."""
    from posetune.devices import resolve_device
    from posetune.options import CompareOptions
    from posetune.runtime import tune_allocator
    from posetune.training.prepare import discover_index

    tune_allocator()  # as the run will train: without it a training step measured ~1.3x slower on a CPU
    index = discover_index(opts)  # the splits the chosen run will train and validate on
    index.require_val("--time-budget", "ranks backbones on")
    counts = {f"n_{s}": len(index.split(s)) for s in ("train", "val", "test")}
    sample = dataclasses.replace(index, samples=_sample(index), skipped=[], warnings=[])
    device = resolve_device(opts.device)
    probes: dict[str, dict] = {}
    train_rates: dict[str, float | None] = {}  # None: the step failed
    untimed: set[str] = set()  # image backbones whose step another one's timing prices
    decode_s = 0.0
    quiet = CellReporter(reporter, "measuring")
    with tempfile.TemporaryDirectory(prefix="posetune-budget-") as tmp:  # the probe cells: not the user's run
        for backbone in backbones:
            spec = _probe_spec(backbone, opts)
            if probes and time.perf_counter() - t0 > probe_budget_s:
                reporter.info(f"time budget: {spec} not measured (a quarter of the budget is spent)")
                continue
            copts = CompareOptions.from_sources(None, data=str(opts.data), backbones=spec, out=tmp,
                                                batch_size=opts.batch_size, device=opts.device,
                                                val_fraction=opts.val_fraction, label_level=opts.label_level)
            seconds: dict[str, float] = {}
            specs = copts.backbone_specs()
            probes.update(run_stage1(copts, specs, sample, device, Path(tmp), {}, quiet, seconds))
            decode_s = max(decode_s, seconds.get("decode", 0.0) / max(1, len(sample.samples)))
            if probes.get(spec, {}).get("status") != "ok" or probes[spec].get("kind", "image") != "image":
                continue
            if any(train_rates.values()):  # one timed step prices the others (estimated_train_rates)
                untimed.add(spec)
            elif time.perf_counter() - t0 <= probe_budget_s:
                train_rates[spec] = _train_rate(spec, probes[spec]["image_size"], len(index.classes), opts, device)
    ranked = top_backbones(probes, len(probes))
    if not ranked:
        errors = "; ".join(p.get("error", "") for p in probes.values())
        raise UsageError(f"--time-budget: no backbone could be measured on {opts.data} ({errors})")
    named = {_probe_spec(b, opts): b for b in backbones}  # back to the name `train` is given
    # pose kinds: training reads cached landmarks (the model's own throughput), but finds them once per image
    # first, most not yet cached (the sample saw a few): BlazePose's measured time joins the per-image decode
    landmark_s = max((probes[b].get("landmark_ms") or 0.0) / 1000 for b in ranked)
    candidates = [Candidate(named[b], probes[b]["val_accuracy"] or 0.0,
                            probes[b].get("forward_images_per_s") or probes[b]["images_per_s"],
                            probes[b]["image_size"])
                  for b in ranked]
    estimated_train_rates(candidates, {named[b]: r for b, r in train_rates.items() if b in named},
                          {named[b] for b in untimed if b in named})

    def time_step(c: Candidate, size: int) -> float | None:
        return _train_rate(_probe_spec(c.backbone, opts), size, len(index.classes), opts, device)

    return candidates, counts, decode_s + landmark_s, time_step


def _train_rate(spec: str, size: int, num_classes: int, opts, device) -> float | None:
    """A partial training step's images/s of an image backbone at ``size`` px, at the run's batch size and
    precision; None for the landmark kinds and where the step fails (e.g. out of GPU memory): the estimate is then
    ~3 forwards per image (not another backbone's ratio), and the run itself reports the failure."""
    from posetune.backbones import parse_spec
    from posetune.comparison.costs import train_images_per_s

    parsed = parse_spec(spec)
    if parsed.kind != "image":
        return None
    try:
        rate = train_images_per_s(parsed.arch, num_classes, size, opts.batch_size, device,
                                  precision=opts.precision)
    except (RuntimeError, ValueError):  # torch's errors (OOM included) are RuntimeErrors
        return None
    return round(rate, 2)


def _probe_spec(backbone: str, opts) -> str:
    """The compare spec of the weights `train` will start from (--no-pretrained, --weights PATH)."""
    if opts.weights:
        return f"{backbone}@{opts.weights}"
    return backbone if opts.pretrained or "@" in backbone else f"{backbone}@random"


def _sample(index) -> list:
    """Up to PROBE_IMAGES_PER_CLASS train and val images of each class, spread over the folder; no test."""
    picked, seen = [], {}
    for s in index.samples:
        if s.split in ("train", "val") and seen.get((s.split, s.label), 0) < PROBE_IMAGES_PER_CLASS:
            seen[(s.split, s.label)] = seen.get((s.split, s.label), 0) + 1
            picked.append(s)
    return picked
