"""`posetune train`: DATA -> prepared run -> the strategy's phases -> metrics -> the run folder.

A strategy is a list of phases (``strategies.HeadPhase``: the head on cached features;
``strategies.FineTunePhase``: the epoch loop); this module runs them in order and never asks a
strategy's name.

>>> result = train("DATASET", strategy="partial", epochs=5, out="runs/yoga")  # doctest: +SKIP
>>> result.metrics["test"]["accuracy"]                                        # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from posetune.console import Reporter
from posetune.errors import UsageError
from posetune.options import TrainOptions
from posetune.run import SELECTION_DIR, RunDir
from posetune.tracking import NullTracker, Tracker, open_trackers
from posetune.training.checkpoint import CHECKPOINT, Interrupted, StopSignals, load_checkpoint, save_checkpoint
from posetune.training.prepare import Prepared, default_run_dir, discover_index, prepare, run_folder
from posetune.training.refit import (
    better_weights,
    check_selection_folder,
    final_options,
    refit_record,
    selection_choice,
    selection_done,
    selection_options,
)


@dataclass
class TrainResult:
    run: Path
    metrics: dict = field(default_factory=dict)  # {"val": {...}, "test": {...}}
    history: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    train_seconds: float = 0.0
    calibration: dict = field(default_factory=dict)  # model.json's: the temperature, ECE/NLL before and after
    budget: dict | None = None  # train --time-budget: the decision model.json records, and how it went
    best_epoch: int = 0  # the epoch whose weights were kept
    refit: dict | None = None  # train --refit: what the selection run chose (model.json's ``refit``)


@dataclass
class Scores:
    """What the kept weights score: metrics per split, the temperature fitted on val (and its calibration
    summary), and the most confidently wrong images of one split (test, else val) for the report."""

    metrics: dict[str, dict]
    temperature: float = 1.0
    calibration: dict = field(default_factory=dict)
    errors: dict | None = None  # {"split": ..., "top_losses": [...]}


def train(data: str | Path | None = None, reporter: Reporter | None = None, config: str | Path | None = None,
          verbose: bool = False, resume: str | Path | None = None, overwrite: bool = False,
          tracker: Tracker | None = None, deadline: float | None = None, budget: dict | None = None,
          stretch: tuple[float, int] | None = None, final_eval_s: float = 0.0,
          selection_budget: tuple[float, float, float] | None = None, **options) -> TrainResult:
    """Fine-tune a backbone on DATA and write a self-contained run folder. Options as `posetune train`.

    ``resume=RUN`` continues RUN from its last checkpoint with the options saved in RUN/config.yaml (a run
    killed before its first checkpoint starts again from the first epoch). ``overwrite=True`` replaces an
    earlier run at ``out``; without it an existing run folder is refused. ``tracker``: log to this
    :class:`posetune.tracking.Tracker` (left open) instead of the ones ``log=`` names. ``deadline``: a
    ``time.perf_counter()`` value; training ends at the last epoch boundary before it (the guard of
    ``train --time-budget``, whose decision ``budget`` is recorded in model.json). ``stretch=(target, most)``:
    after epoch 1, the schedule stretches to the epochs that fit before ``target`` (also a perf_counter
    value), at most ``most``. ``final_eval_s``: the seconds both leave for the final evaluation; when the
    epochs' own validation says it will take longer, training ends that much sooner. ``selection_budget=(deadline,
    target, final_eval_s)``: a budgeted refit's selection run stops and stretches by these (the final run repeats
    its epochs within ``deadline``).
    """
    from posetune.console import RichReporter

    reporter = reporter or (RichReporter() if verbose else Reporter())
    if resume is not None:
        return _resume(Path(resume), reporter, config, data, {k: v for k, v in options.items() if v is not None},
                       tracker)
    opts = TrainOptions.from_sources(config, data=str(data) if data is not None else None, **options)
    if opts.out:
        RunDir(opts.out).check_free(overwrite)  # before the slow part: nothing is replaced without --overwrite
    return _train(opts, reporter, overwrite=overwrite, tracker=tracker,
                  budget=_Budget(deadline, budget, *(stretch or (None, None)), final_eval_s, selection_budget))


def _resume(run: Path, reporter: Reporter, config, data, options: dict, tracker: Tracker | None = None) -> TrainResult:
    given = [f"--{k.replace('_', '-')}" for k in options] + (["--config"] if config else []) + (["DATA"] if data else [])
    if given:
        raise UsageError(f"--resume continues {run} with the options in its config.yaml; drop {', '.join(given)} "
                         "(or train a new run with them)")
    saved = run / "config.yaml"
    if not saved.is_file():
        raise UsageError(f"{run} has no config.yaml to resume from; it is not a posetune run folder")
    opts = TrainOptions.from_sources(saved, out=str(run))
    if not (run / CHECKPOINT).is_file() and not (run / SELECTION_DIR / CHECKPOINT).is_file():
        reporter.info(f"{run} has no checkpoint yet (it was stopped before its first epoch ended): training it "
                      "from the first epoch with its saved options")
    return _train(opts, reporter, resume=True, tracker=tracker)


@dataclass
class _Budget:
    """The wall-clock guard of a budgeted run and the decision model.json records (both None without one)."""

    deadline: float | None = None
    decision: dict | None = None
    target: float | None = None  # when the planned epochs should end (Settings.target)
    stretch_to: int | None = None  # the most epochs the schedule may stretch to after epoch 1
    final_eval_s: float = 0.0  # what deadline and target leave for the final evaluation (Settings.final_eval_s)
    selection: tuple[float, float, float] | None = None  # a planned refit: the selection's deadline, target, eval s

    def for_selection(self) -> _Budget:
        """A refit's selection run: its own share of the time, stretching as a single run would."""
        if self.selection is None:
            return _Budget(decision=self.decision)
        deadline, target, final_eval_s = self.selection
        return _Budget(deadline, self.decision, target, self.stretch_to, final_eval_s)

    def for_final(self, selection: dict | None) -> _Budget:
        """A refit's final run: the selection's epochs within the whole budget's deadline (no stretching); the
        decision gains how the selection went (its epochs, stretch and guard)."""
        decision = None if self.decision is None else {**self.decision, "selection": selection}
        return _Budget(self.deadline, decision, None, None, self.final_eval_s)


def _train(opts: TrainOptions, reporter: Reporter, resume: bool = False, overwrite: bool = False,
           tracker: Tracker | None = None, budget: _Budget | None = None) -> TrainResult:
    from posetune.devices import training_backend
    from posetune.distributed import init_from_env, shutdown

    if opts.refit and budget is not None and budget.decision is not None and budget.selection is None:
        raise UsageError("--time-budget chooses whether to refit (when two runs fit); drop refit (--refit, or "
                         "refit: true in --config)")
    if opts.refit and tracker is not None:  # the two runs would log over each other in one tracker run
        raise UsageError("--refit logs its two runs with --log, each to its own tracker run; drop tracker= (or refit)")
    dist = init_from_env(training_backend(opts.device))
    reporter = reporter if dist.is_main else Reporter()
    try:
        if opts.refit:
            return _train_with_refit(opts, reporter, resume, overwrite, dist, tracker, budget or _Budget())
        return _train_ranked(opts, reporter, resume, overwrite, dist, tracker, budget or _Budget())
    finally:
        shutdown()


def _train_with_refit(opts: TrainOptions, reporter: Reporter, resume: bool, overwrite: bool, dist,
                      tracker: Tracker | None, budget: _Budget) -> TrainResult:
    """`train --refit`: the selection run in RUN/selection (val fits the temperature, may stop it early and
    picks model or EMA weights; test is not scored), then the final run in RUN on train + val for the epochs the
    selection ran (:mod:`.refit`). ``budget``: a `--time-budget` plan's (the selection's share of the time, then the
    whole budget's deadline)."""
    if not resume:  # at the door: nothing is written or cleared when either check fails
        discover_index(opts).require_val("--refit", "fits the temperature (and stops early) on")
        check_selection_folder(RunDir(opts.out or default_run_dir(opts)), overwrite)
    run = run_folder(opts, dist, write_config=True, overwrite=overwrite, resume=resume).path  # refit: true, for --resume
    first = None
    if resume and selection_done(run):
        reporter.info(f"resuming {run}: its selection run ({run / SELECTION_DIR}) is complete; continuing the final run")
    else:
        reporter.info(f"refit, step 1 of 2: the selection run ({run / SELECTION_DIR}): val fits the temperature and "
                      "may stop it early")
        first = _train_ranked(selection_options(opts, run), reporter, resume and RunDir(run / SELECTION_DIR).is_run(),
                              overwrite, dist, tracker, budget.for_selection(), score=("val",))
    dist.barrier()
    if dist.is_main or first is None:
        chosen = selection_choice(run)
    else:  # another rank, which may not see rank 0's files: what its own loop saw is all the final run needs
        chosen = {"best_epoch": first.best_epoch, "epochs_run": len(first.history),
                  "weights": better_weights(first.history[-1])}
    record = refit_record(chosen)
    val = (f", val accuracy {chosen['val']['accuracy']:.3f}" if chosen.get("val") else "")
    reporter.info(f"refit, step 2 of 2: the selection ran {chosen['epochs_run']} epochs (best: epoch {chosen['best_epoch']}{val}); "
                  f"training again on train + val for {record['epochs']} epochs, keeping the last, with the temperature "
                  f"{record['temperature']:.3g}" + (" and the EMA weights" if record["weights"] == "ema" else ""))
    # a budgeted refit resumed after its selection: the decision is the one the selection recorded
    spent = chosen.get("budget") or {}
    if budget.decision is None and spent:
        budget = _Budget(decision={k: v for k, v in spent.items() if k not in _HOW_IT_WENT})
        reporter.info(f"resuming a --time-budget {spent.get('time_budget')} refit: its decision is kept; the budget's "
                      "clock ended with the first session, so the final run's epochs run without a deadline")
    final_budget = budget.for_final({k: spent.get(k) for k in _HOW_IT_WENT} if spent else None)
    result = _train_ranked(final_options(opts, record), reporter, resume, overwrite, dist, tracker, final_budget,
                           refit=record)
    result.train_seconds += record["selection_train_seconds"]  # what the user waited for (model.json: the final's)
    return result


_HOW_IT_WENT = ("epochs_run", "stretched_to", "stopped_by_deadline")  # a budgeted run's record, past its decision


def _train_ranked(opts: TrainOptions, reporter: Reporter, resume: bool, overwrite: bool, dist,
                  tracker: Tracker | None, budget: _Budget, refit: dict | None = None,
                  score: tuple[str, ...] = ("val", "test")) -> TrainResult:
    """The training run as one rank of ``dist`` sees it (rank 0 alone writes the run folder and logs).
    ``refit``: this is `--refit`'s final run (val trains too; the folder and its config.yaml exist already);
    ``score``: the splits scored at the end."""
    final_of_refit = refit is not None
    p = prepare(opts, reporter, write_config=dist.is_main and not final_of_refit, dist=dist, overwrite=overwrite,
                resume=resume, create=not final_of_refit, val_in_train=final_of_refit)
    p.refit = None if refit is None else {**refit, "n_train": len(p.train_ds)}  # train + val, as decoded
    p.score = score
    p.settings = dataclasses.replace(p.settings, keep_ema=bool(refit) and refit.get("weights") == "ema",
                                     deadline=budget.deadline, target=budget.target,
                                     stretch_to=budget.stretch_to, final_eval_s=budget.final_eval_s,
                                     final_images=(len(p.val_ds) if "val" in score else 0) +
                                     (len(p.test_ds) if "test" in score else 0), val_images=len(p.val_ds))
    p.budget = budget.decision
    if tracker is not None or not dist.is_main:  # the caller's tracker (a compare cell's); none off rank 0
        return _run_phases(p, reporter, resume, dist, tracker if dist.is_main else NullTracker())
    with open_trackers(opts.log, p.out.path, opts.log_dir, opts.mlflow_uri, resume=resume) as tracker:
        return _run_phases(p, reporter, resume, dist, tracker)


def _run_phases(p: Prepared, reporter: Reporter, resume: bool, dist, tracker: Tracker) -> TrainResult:
    """The strategy's phases, the scores and the run folder of a prepared run."""
    from posetune.strategies import FineTunePhase, HeadPhase

    opts = p.opts
    has_checkpoint = resume and (p.out / CHECKPOINT).is_file()
    checkpoint = load_checkpoint(p.out / CHECKPOINT, p.config_sha256) if has_checkpoint else None
    if checkpoint is not None and p.budget is None and checkpoint.get("budget"):
        p.budget = checkpoint["budget"]
        reporter.info(f"resuming a --time-budget {p.budget.get('time_budget')} run: its decision is kept; the budget's "
                      "clock ended with the first session, so the remaining epochs run without a deadline")
    tracker.log_params(run_params(p))
    t0 = time.perf_counter()
    history: list[dict] = []
    best_epoch = images_seen = 0
    stopped_by_deadline, stretched_to = False, None
    for i, phase in enumerate(p.strategy.phases, 1):
        if len(p.strategy.phases) > 1:
            reporter.info(f"{opts.strategy} phase {i} of {len(p.strategy.phases)}: {phase.title}")
        prefix = f"phase{i}/" if i < len(p.strategy.phases) else ""  # the last phase's rows are the run's
        if isinstance(phase, HeadPhase):
            if checkpoint is not None:
                continue  # the checkpoint of the fine-tuning phase restores the whole model, head included
            result = head_phase(p, phase, reporter, tracker, prefix)
        elif isinstance(phase, FineTunePhase):
            result = finetune_phase(p, checkpoint, reporter, tracker, prefix)
        else:
            raise TypeError(f"unknown phase {phase!r} of strategy {opts.strategy}")
        history, best_epoch, images_seen = result.history, result.best_epoch, result.images_seen
        stopped_by_deadline = stopped_by_deadline or result.stopped_by_deadline
        stretched_to = getattr(result, "stretched_to", None) or stretched_to
    if stopped_by_deadline:
        limit = "its share of the budget (a refit's selection run)" if p.score == ("val",) else "the budget"
        kept = "the last epoch is kept (a refit's final run)" if p.refit else "the best epoch so far is kept"
        reporter.warn(f"time budget: training ended after epoch {len(history)} of {stretched_to or p.epochs}, as one more would "
                      f"have run past {limit} (the estimate was off); {kept}")
    train_seconds = time.perf_counter() - t0
    if not dist.is_main:
        return TrainResult(run=p.out.path, history=history, train_seconds=train_seconds, best_epoch=best_epoch)
    given = (p.refit["temperature"], f"the selection run's ({SELECTION_DIR}/), before val joined the training: "
             f"{p.refit['temperature_note']}") if p.refit else None
    scores = score_splits(p, p.score, given)
    budget = None if p.budget is None else {**p.budget, "epochs_run": len(history), "stretched_to": stretched_to,
                                            "stopped_by_deadline": stopped_by_deadline}
    write_run(p, history, best_epoch, scores, train_seconds, images_seen, budget)
    tracker.log_results(p.out.path, scores.metrics)
    return TrainResult(run=p.out.path, metrics=scores.metrics, history=history, skipped=p.index.skipped,
                       train_seconds=train_seconds, calibration=scores.calibration, budget=budget,
                       best_epoch=best_epoch, refit=p.refit)


def head_phase(p: Prepared, phase, reporter: Reporter, tracker: Tracker = NullTracker(), prefix: str = ""):
    """The base does not change while the head fits: one forward pass per image (on an inference-optimised
    copy: the same features, faster), then the head trains on the cached features."""
    from posetune.data.pipeline import DecodedDataset
    from posetune.features import extract_features
    from posetune.inference import optimize_for_inference
    from posetune.training.heads import fit_head_on_features

    image_net = p.model.cnn if p.spec.kind == "fusion" else p.model
    net = None if p.spec.kind == "pose" else optimize_for_inference(image_net, (3, p.preprocess.size,
                                                                                 p.preprocess.size))[0]
    plain = DecodedDataset(p.train_ds.images, p.train_ds.labels, p.preprocess)  # no augmentation
    if p.spec.uses_pose:  # the unflipped landmark features beside each image
        from posetune.training.pose_inputs import PoseDataset

        plain = PoseDataset(plain, p.train_ds.features, p.train_ds.mirrored, augment=False)
    advance = reporter.start("extract features", len(plain) + len(p.val_ds))
    # Under torchrun each rank extracts its shard; the gathered features are the same on every rank.
    f_train, y_train = (p.dist.unshard(t) for t in extract_features(net, p.shard_loader(plain), p.device,
                                                                     p.preprocess, advance))
    f_val, y_val = (p.dist.unshard(t) for t in extract_features(net, p.shard_loader(p.val_ds), p.device,
                                                                 p.preprocess, advance))
    del net
    reporter.stop()
    settings = p.settings
    if phase.epochs is not None:  # a fixed probe before fine-tuning (LP-FT)
        settings = dataclasses.replace(settings, epochs=phase.epochs, mixup=0.0, cutmix=0.0)
    lr = phase.lr if phase.lr is not None else p.plan.lrs["head"]
    reporter.info(f"head on cached features: {settings.epochs} epochs, lr {lr:.0e}")
    if p.spec.uses_pose:
        from posetune.pose_heads import FeatureHead

        head = FeatureHead(p.model).to("cpu")
    else:
        head = p.model.get_classifier().to("cpu")
    result = fit_head_on_features(head, f_train, y_train, f_val, y_val, lr, settings,
                                  on_epoch=tracked_epochs(reporter.epoch, tracker, prefix),
                                  class_weights=p.class_weights)
    head.load_state_dict(result.best_state)
    head.to(p.device)
    return result


def finetune_phase(p: Prepared, checkpoint: dict | None, reporter: Reporter, tracker: Tracker = NullTracker(),
                   prefix: str = ""):
    """The epoch loop with checkpoints after every epoch and a clean stop on SIGINT/SIGTERM."""
    import torch

    from posetune.training.loop import Trainer, fit

    train_loader = p.train_loader()
    trainer = Trainer(p.model, p.stages, p.plan, p.preprocess, p.settings, p.device, len(train_loader),
                      p.class_weights, p.dist, p.spec.kind)
    if checkpoint is not None:
        loop = checkpoint["loop"]
        reporter.info(f"resuming {p.out.path} after epoch {loop['epoch']}"
                      + (f" (step {loop['step_in_epoch']})" if loop["step_in_epoch"] else ""))
    # a resumed run that stretched after its epoch 1 runs the checkpoint's epochs, not the planned ones
    epochs = (checkpoint["loop"].get("epochs") or p.epochs) if checkpoint else p.epochs
    progress = EpochProgress(reporter, len(p.train_ds), epochs, (checkpoint["loop"]["epoch"] + 1) if checkpoint else 1,
                             most=p.settings.stretch_to)
    with StopSignals() as stop:
        try:
            result = fit(trainer, train_loader, p.shard_loader(p.val_ds), p.train_ds.augment.batch_color,
                         resume=checkpoint, save=_saver(p, reporter) if p.dist.is_main else None, stop_flag=stop,
                         on_step=tracked_steps(progress.step, tracker, trainer),
                         on_epoch=tracked_epochs(progress.epoch, tracker, prefix))
        except torch.cuda.OutOfMemoryError as exc:
            raise UsageError(f"out of GPU memory at batch size {p.opts.batch_size}; try --batch-size "
                             f"{max(1, p.opts.batch_size // 2)} (or a smaller --image-size)") from exc
    reporter.stop()
    if result.stopped_early_by_signal:
        raise Interrupted(f"stopped by a signal; checkpoint saved. Resume with: posetune train --resume {p.out.path}")
    p.model.load_state_dict(result.best_state)
    return result


class EpochProgress:
    """A progress bar per epoch with the running loss and accuracy beside it."""

    def __init__(self, reporter: Reporter, images: int, epochs: int, first: int, most: int | None = None):
        self.reporter, self.images, self.epochs, self.most = reporter, images, epochs, most
        self.advance = reporter.start(f"epoch {first}", images)

    def step(self, n: int, loss: float, acc: float) -> None:
        self.advance(n)
        self.reporter.set_extra(f"loss {loss:.3f} acc {acc:.3f}")

    def epoch(self, row: dict) -> None:
        self.reporter.epoch(row)
        if row.get("stretched_to"):
            fit = "the most it may stretch to" if row["stretched_to"] == self.most else "the epochs that fit"
            self.reporter.info(f"time budget: epoch 1 took {row['seconds']:.0f} s, so the schedule now ends at epoch "
                               f"{row['stretched_to']} ({fit}; planned {self.epochs})")
            self.epochs = row["stretched_to"]
        if row["epoch"] < self.epochs:
            self.advance = self.reporter.start(f"epoch {row['epoch'] + 1}", self.images)


def tracked_steps(on_step, tracker: Tracker, trainer):
    """``on_step`` of the epoch loop, then the tracker: the batch loss and each stage's LR at the run's step."""
    if type(tracker) is NullTracker:
        return on_step

    def step(n: int, loss: float, acc: float) -> None:
        on_step(n, loss, acc)
        lrs = {stage: group["lr"] for stage, group in zip(trainer.group_stages, trainer.optimizer.param_groups)}
        tracker.log_step(trainer.scheduler.last_epoch, trainer.last_loss, lrs)  # last_epoch: steps taken so far

    return step


def tracked_epochs(on_epoch, tracker: Tracker, prefix: str = ""):
    """``on_epoch``, then the tracker gets the row (its columns named ``prefix + column``)."""
    def epoch(row: dict) -> None:
        on_epoch(row)
        tracker.log_epoch(row["epoch"], {f"{prefix}{k}": v for k, v in row.items() if k != "epoch"})

    return epoch


def run_params(p: Prepared) -> dict:
    """The hyper-parameters a tracker records: the options, and what the defaults resolved to."""
    options = {k: v for k, v in dataclasses.asdict(p.opts).items() if k not in ("log", "log_dir", "mlflow_uri")}
    return {**options, "epochs": p.epochs, "image_size": p.preprocess.size, "device": str(p.device),
            "processes": p.dist.world, "classes": p.index.classes, "frozen_stages": p.plan.frozen or "-",
            "n_train": len(p.train_ds), "n_val": len(p.val_ds), "n_test": len(p.test_ds),
            **{f"lr_{stage}": lr for stage, lr in p.plan.lrs.items()}}


def _saver(p: Prepared, reporter: Reporter):
    from posetune.training.checkpoint import CONFIG_KEY

    def save(payload: dict) -> None:
        payload[CONFIG_KEY] = p.config_sha256
        if p.budget is not None:  # plain data: a resumed budgeted run still records its decision
            payload["budget"] = p.budget
        try:
            save_checkpoint(p.out / CHECKPOINT, payload)
        except OSError as exc:  # e.g. disk full: the atomic write left the previous checkpoint intact
            reporter.warn(f"could not save the checkpoint after epoch {payload['loop']['epoch']} ({exc}); "
                          "the previous one is kept")

    return save


def score_splits(p: Prepared, splits: tuple[str, ...] = ("val", "test"),
                 given: tuple[float, str] | None = None) -> Scores:
    """The metrics of the kept weights on ``splits``; the temperature fitted on val's logits (or ``given``, with
    how it was chosen: `--refit`'s, from its selection run), with ECE and NLL before and after it on each split;
    the most confidently wrong images of test (else val)."""
    from posetune.calibration import calibration_summary, fit_temperature
    from posetune.evaluation import compute_metrics
    from posetune.inference import inference_copy
    from posetune.predict.torch_engine import predict_logits

    metrics, scored = {}, {}
    # the BN-folded copy that predict runs: its scores, ~1.5-2x faster than the training graph on a CPU
    net = inference_copy(p.model, p.spec.kind, p.preprocess.size)[0]
    for split, ds in (("val", p.val_ds), ("test", p.test_ds)):
        if len(ds) and split in splits:
            logits, labels = predict_logits(net, p.loader(ds), p.device, p.preprocess)
            scored[split] = (logits.double().numpy(), labels.numpy())
            metrics[split] = compute_metrics(labels.tolist(), logits.argmax(1).tolist(), p.index.classes)
            metrics[split]["split"] = split
    if given is not None:
        temperature, note = given
    elif "val" in scored:
        temperature, note = fit_temperature(*scored["val"])
    else:
        temperature, note = 1.0, "not fitted: the run has no val split; temperature 1.0"
    calibration = calibration_summary(temperature, note, scored)
    split = "test" if "test" in scored else "val" if "val" in scored else None
    errors = _top_losses(p, split, *scored[split], temperature) if split else None
    return Scores(metrics, temperature, calibration, errors)


def _top_losses(p: Prepared, split: str, logits, labels, temperature: float) -> dict:
    from posetune.calibration import softmax, top_losses
    from posetune.evaluation import TOP_LOSSES

    paths, classes = [s.path for s in p.index.split(split)], p.index.classes
    items = top_losses(softmax(logits, temperature), labels, TOP_LOSSES)
    return {"split": split, "top_losses": [{"path": paths[t["index"]], "true": classes[t["true"]],
                                            "predicted": classes[t["predicted"]], "probability": t["probability"],
                                            "loss": t["loss"]} for t in items]}


def write_run(p: Prepared, history: list[dict], best_epoch: int, scores: Scores, train_seconds: float,
              images_seen: int, budget: dict | None = None) -> None:
    from posetune.run import RunMeta

    meta = RunMeta(
        backbone=p.spec.name, arch=p.spec.arch, weight_source=p.spec.weight_source, classes=p.index.classes,
        preprocessing=p.preprocess.to_config(), strategy=p.opts.strategy,
        frozen_stages=p.plan.frozen_at(max(1, len(history))), stage_lrs=p.plan.lrs, best_epoch=best_epoch,
        epochs_run=len(history), train_seconds=round(train_seconds, 2),
        train_images_per_s=round(images_seen / max(train_seconds, 1e-9), 2),
        data=str(p.opts.data), layout=p.index.layout, device=str(p.device), precision=p.settings.precision,
        metrics=RunMeta.summarize(scores.metrics), temperature=scores.temperature, calibration=scores.calibration,
        budget=budget, refit=p.refit, kind=p.spec.kind, pose_dim=getattr(p.model, "pose_dim", 0), no_person=p.no_person)
    p.model.to("cpu")
    p.out.save_model(p.model, meta)
    p.out.write_results(meta, history, scores.metrics, p.index.skipped, p.plan.table(p.stages), errors=scores.errors)
