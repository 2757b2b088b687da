"""The epoch loop: warm-up + cosine schedule, AMP, best-epoch keeping, early stopping.

Small parts over plain data: :func:`drive_epochs` runs epochs and keeps the best; a :class:`Trainer`
holds what one fine-tuning run steps (model, optimizer, schedule, EMA, mixup) and knows one step,
one epoch, one validation and its checkpoint; :func:`fit` joins them. The head on cached features
(``training.heads``) goes through the same :func:`drive_epochs`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as nnf

from posetune.backbones import Stage
from posetune.data.pipeline import Preprocess, SeededBatches, color_seed, epoch_batches
from posetune.data.prefetch import BatchProducer
from posetune.devices import Normalizer, autocast, grad_scaler
from posetune.inference import inference_copy
from posetune.predict.torch_engine import predict_logits
from posetune.strategies import Plan, apply_freeze, param_groups, set_train_mode


@dataclass
class Settings:
    epochs: int
    batch_size: int = 32
    patience: int = 5  # epochs without a better val score before stopping (0: never stop early)
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    seed: int = 0
    ema_decay: float | None = None  # keep an exponential moving average of the weights (timm ModelEmaV3)
    mixup: float = 0.0  # mixup alpha (timm Mixup); 0 = off
    cutmix: float = 0.0  # cutmix alpha; 0 = off
    deadline: float | None = None  # time.perf_counter() by which training ends (train --time-budget's guard)
    # train --time-budget: after epoch 1 (timed on the real run, not the probe) the schedule stretches to the
    # epochs that fit before ``target`` (the budget less the final evaluation), up to ``stretch_to``
    target: float | None = None
    stretch_to: int | None = None
    # the final evaluation after the last epoch: the seconds deadline and target leave for it (the planner's
    # estimate), and the images it scores (val + test) beside the val images each epoch scores, from which
    # the epochs' own validation estimates it again (final_eval_shortfall)
    final_eval_s: float = 0.0
    final_images: int = 0
    val_images: int = 0
    precision: str = "auto"  # --precision (posetune.devices.amp_dtype)
    keep_ema: bool = False  # with no val score to compare them on, keep the EMA (`--refit`: as its selection did)


@dataclass
class LoopState:
    """Where the epoch loop is: everything a checkpoint needs besides weights and optimizer."""

    epoch: int = 0  # last completed epoch
    best_acc: float = -1.0
    best_neg_loss: float = -math.inf
    best_epoch: int = 0
    stale: int = 0
    history: list[dict] = field(default_factory=list)
    images_seen: int = 0
    step_in_epoch: int = 0  # >0 only in a checkpoint written mid-epoch (after a stop signal)
    partial_stats: dict = field(default_factory=dict)
    epochs: int = 0  # the run's epochs when stretched after epoch 1 (0: Settings.epochs)


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # one row per epoch
    best_epoch: int = 0
    best_state: dict | None = None
    seconds: float = 0.0
    images_seen: int = 0
    stopped_early_by_signal: bool = False
    stopped_by_deadline: bool = False  # an epoch more would have ended after Settings.deadline
    stretched_to: int | None = None  # the epochs the schedule stretched to after epoch 1 (None: as planned)


class StopRequested(Exception):
    """Raised inside an epoch at a step boundary after SIGINT/SIGTERM."""

    def __init__(self, step: int, stats: dict):
        super().__init__(step)
        self.step, self.stats = step, stats


class CosineWithWarmup:
    """The LR factor at a step: linear warm-up, then a cosine to 0 at ``total_steps``. An object, not a closure:
    LambdaLR's state_dict keeps its attributes, so a stretched schedule (``total_steps`` raised) resumes as run."""

    def __init__(self, total_steps: int, warmup_steps: int):
        self.total_steps, self.warmup_steps = total_steps, warmup_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / max(1, self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def cosine_with_warmup(optimizer, total_steps: int, warmup_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, CosineWithWarmup(total_steps, warmup_steps))


def make_optimizer(groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    # foreach kernels batch the per-parameter updates: fewer, larger ops on CPU and GPU.
    return torch.optim.AdamW([{k: v for k, v in g.items() if k != "stage"} for g in groups],
                             foreach=True, fused=False if device.type == "cpu" else None)


def drive_epochs(settings: Settings, train_epoch: Callable[[int, LoopState], dict], evaluate: Callable[[], dict],
                 snapshot: Callable[[dict], dict], on_epoch: Callable[[dict], None] | None = None,
                 state: LoopState | None = None, best_state: dict | None = None,
                 checkpoint: Callable[[LoopState, dict | None], None] | None = None,
                 stretch: Callable[[int], int] | None = None) -> FitResult:
    """Run epochs from ``state`` on; keep the best by val accuracy (then lower val loss); stop after
    ``patience`` flat epochs; without val scores (no val split) each epoch is the best so far, so the last is
    kept. ``checkpoint(state, best_state)`` is called after every epoch, and at the step where a stop signal
    arrived (then the result says so). ``stretch(epochs)``: after epoch 1 of a run
    with a target (:func:`stretched_epochs`), moves the schedule's end to that many epochs and returns them."""
    state = state or LoopState()
    result = FitResult(best_state=best_state, stretched_to=state.epochs or None)
    start = time.perf_counter()
    total, epoch = state.epochs or settings.epochs, state.epoch
    while epoch < total:
        epoch += 1
        if settings.patience and state.stale >= settings.patience:
            break
        shortfall = final_eval_shortfall(settings, state.history)
        if past_deadline(None if settings.deadline is None else settings.deadline - shortfall, state.history):
            result.stopped_by_deadline = True
            break
        t0 = time.perf_counter()
        try:
            row = {"epoch": epoch, **train_epoch(epoch, state)}
        except StopRequested as stop:
            state.step_in_epoch, state.partial_stats = stop.step, stop.stats
            if checkpoint:
                checkpoint(state, result.best_state)
            result.stopped_early_by_signal = True
            break
        state.step_in_epoch, state.partial_stats = 0, {}
        row["train_seconds"] = round(time.perf_counter() - t0, 3)  # without validation: the steady-state rate
        row.update(evaluate())
        row["seconds"] = round(time.perf_counter() - t0, 3)
        if epoch == 1 and stretch:  # every rank calls it (a collective), stretched or not
            agreed = stretch(stretched_epochs(settings, row["seconds"], total, final_eval_shortfall(settings, [row])))
            if agreed > total:
                total = state.epochs = result.stretched_to = row["stretched_to"] = agreed
        if "val_accuracy" in row or "ema_val_accuracy" in row:
            acc = max(row.get("val_accuracy", 0.0), row.get("ema_val_accuracy", -1.0))
            neg_loss = -min(row.get("val_loss", 0.0), row.get("ema_val_loss", math.inf))
            row["best"] = (acc, neg_loss) > (state.best_acc, state.best_neg_loss)
        else:  # no val split (--val-fraction 0): nothing to choose on, so the latest epoch is kept, no early stop
            acc, neg_loss, row["best"] = state.best_acc, state.best_neg_loss, True
        if row["best"]:
            state.best_acc, state.best_neg_loss, state.best_epoch, state.stale = acc, neg_loss, epoch, 0
            result.best_state = snapshot(row)
        else:
            state.stale += 1
        state.epoch = epoch
        state.history.append(row)
        state.images_seen += int(row.get("images", 0))
        if checkpoint:
            checkpoint(state, result.best_state)
        if on_epoch:
            on_epoch(row)
    result.history, result.best_epoch, result.images_seen = state.history, state.best_epoch, state.images_seen
    result.seconds = time.perf_counter() - start
    return result


def past_deadline(deadline: float | None, history: list[dict]) -> bool:
    """Another epoch, as long as the slowest so far, would end after ``deadline`` (the first always runs:
    a run that trained nothing would have no weights to keep)."""
    if deadline is None or not history:
        return False
    return time.perf_counter() + max(row.get("seconds", 0.0) for row in history) > deadline


def final_eval_shortfall(settings: Settings, history: list[dict]) -> float:
    """Seconds the final evaluation will take beyond the ``final_eval_s`` that the deadline and target leave
    for it: the epochs' own validation, at its slowest per image, over the final evaluation's images. The
    planner's estimate scales the probe's forward rate from the pretrained size by the pixel count, which
    runs fast at small sizes (Fashion-MNIST-1k at 160 px: 10,150 final images counted at 31 s took ~42 s,
    and a 2-minute budget ended at 1.14x)."""
    if not (settings.final_images and settings.val_images):
        return 0.0
    val_s = [row["seconds"] - row["train_seconds"] for row in history if "train_seconds" in row]
    if not val_s:
        return 0.0
    return max(0.0, settings.final_images * max(val_s) / settings.val_images - settings.final_eval_s)


def stretched_epochs(settings: Settings, epoch_seconds: float, epochs: int, shortfall: float = 0.0) -> int:
    """The epochs that fit before ``settings.target`` (less ``shortfall``: final_eval_shortfall) at
    ``epoch_seconds`` each, the first one run (at least ``epochs``, at most ``settings.stretch_to``): a
    budgeted plan rests on the probe's throughput, which a cold process measures low, so the real first
    epoch sets the rest. The cosine is still at its peak after a one-epoch warm-up, so moving its end then
    changes no step already taken."""
    if settings.target is None or settings.stretch_to is None or epoch_seconds <= 0:
        return epochs
    fit = 1 + int((settings.target - shortfall - time.perf_counter()) // epoch_seconds)
    return max(epochs, min(settings.stretch_to, fit))


def epoch_seed(seed: int, epoch: int) -> int:
    """Data order and augmentation for an epoch depend on (seed, epoch) only: a resumed run replays them."""
    return seed * 100_003 + epoch


def seed_epoch(loader, epoch: int, seed: int) -> int:
    """Seed everything an epoch draws from (shuffle order, sampler, augmentation, dropout, mixup) from
    (seed, epoch) alone, so a resumed run replays the epoch exactly; returns the epoch's seed."""
    seed = epoch_seed(seed, epoch)
    torch.manual_seed(seed)
    if getattr(loader, "generator", None) is not None:
        loader.generator.manual_seed(seed)
    # a loader built on a batch sampler (SeededBatches) keeps its real sampler there
    sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None) or getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):  # DistributedSampler: the shard order depends on (seed, epoch)
        sampler.set_epoch(epoch)
    elif getattr(sampler, "generator", None) is not None:
        sampler.generator.manual_seed(seed)
    return seed


class Trainer:
    """One fine-tuning run's moving parts, built from plain data (a model, its stages, a plan, settings)."""

    def __init__(self, model: torch.nn.Module, stages: list[Stage], plan: Plan, preprocess: Preprocess,
                 settings: Settings, device: torch.device, steps_per_epoch: int,
                 class_weights: torch.Tensor | None = None, dist=None, kind: str = "image"):
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy
        from timm.utils import ModelEmaV3

        from posetune.distributed import Dist

        self.model, self.stages, self.plan, self.settings, self.device = model, stages, plan, settings, device
        self.preprocess, self.dist, self.steps_per_epoch = preprocess, dist or Dist(), max(1, steps_per_epoch)
        self.kind = kind  # image | pose | fusion: which inference copy validation scores (inference_copy)
        groups = param_groups(model, stages, plan, settings.weight_decay)
        self.group_stages = [g["stage"] for g in groups]  # the stage of each optimizer param group
        self.optimizer = make_optimizer(groups, device)
        self.scheduler = cosine_with_warmup(self.optimizer, self.steps_per_epoch * settings.epochs,
                                            int(self.steps_per_epoch * settings.warmup_epochs))
        self.normalize = Normalizer(preprocess, device)
        self.scaler = grad_scaler(device, settings.precision)  # fp16 only
        self.class_weight = class_weights.to(device) if class_weights is not None else None
        self.mixer = (Mixup(mixup_alpha=settings.mixup, cutmix_alpha=settings.cutmix,
                            label_smoothing=settings.label_smoothing, num_classes=model.get_classifier().out_features)
                      if settings.mixup or settings.cutmix else None)
        self.soft_loss = SoftTargetCrossEntropy()  # mixup/cutmix targets
        # the decay warms up (1 - (1 + step)^-2/3, capped at ema_decay): a fine-tune of a few hundred steps at
        # 0.999 would average mostly the pretrained weights and never score above the model itself
        self.ema = ModelEmaV3(model, decay=settings.ema_decay, use_warmup=True, device=device) \
            if settings.ema_decay else None
        self._ddp: tuple[list[str] | None, torch.nn.Module] = (None, model)
        self.last_loss = math.nan  # of the latest step's batch (this rank's)

    # ------------------------------------------------------------------ checkpoint

    def state(self, loop: LoopState, best: dict | None) -> dict:
        """A checkpoint: tensors and plain data only (it loads with torch.load(weights_only=True))."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
                "scaler": self.scaler.state_dict() if self.scaler else None, "loop": dataclasses.asdict(loop), "best_state": best}

    def restore(self, checkpoint: dict) -> tuple[LoopState, dict | None]:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.ema is not None and checkpoint.get("ema") is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        return LoopState(**checkpoint["loop"]), checkpoint.get("best_state")

    # ------------------------------------------------------------------ training

    def _module(self, frozen: list[str]) -> torch.nn.Module:
        """The model, or its DDP wrapper under torchrun (rebuilt when the trainable set changes)."""
        if self.dist.enabled and self._ddp[0] != frozen:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = (frozen, DistributedDataParallel(self.model, device_ids=ids))
        return self._ddp[1]

    def batch_inputs(self, x, step: int, seed: int, batch_color=None) -> tuple:
        """A loader batch -> the model's normalised inputs; ``batch_color`` (the batch colour jitter) draws
        from (seed, epoch, step) only, as a resumed run needs."""
        color = None
        if batch_color is not None:
            color = functools.partial(batch_color, generator=torch.Generator().manual_seed(color_seed(seed, step)))
        return self.normalize.inputs(x, color)

    def step(self, module: torch.nn.Module, inputs: tuple, y: torch.Tensor, global_step: int):
        """One optimisation step on normalised inputs (``batch_inputs``): (loss, logits)."""
        y = y.to(self.device, non_blocking=True)
        target = None
        if self.mixer is not None and len(y) % 2 == 0:  # prepare refuses mixing for landmark inputs
            mixed, target = self.mixer(inputs[0], y)
            inputs = (mixed, *inputs[1:])
        with autocast(self.device, self.settings.precision):
            logits = module(*inputs).float()
        if target is not None:
            loss = self.soft_loss(logits, target)
        else:
            loss = nnf.cross_entropy(logits, y, weight=self.class_weight, label_smoothing=self.settings.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:  # fp16: scaled loss, the step skipped on inf/nan gradients
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, step=global_step)
        return loss, logits

    def batches(self, loader, seed: int, start: int, batch_color=None):
        """(step, inputs, labels) from step ``start`` on, as a context manager: made here, in turn with the
        steps; on CUDA the loader's workers crop and the device normalises. POSETUNE_PREFETCH=1 makes a CPU
        run's batches in a BatchProducer thread while the model trains on the one before (the same batches
        either way). Off by default: on 2 cores the thread's gain did not show above the noise (issue 16)."""
        def prepare(item):
            step, (x, y) = item
            return step, self.batch_inputs(x, step, seed, batch_color), y

        items = epoch_batches(loader, seed, start)
        if self.device.type == "cpu" and isinstance(loader.batch_sampler, SeededBatches) \
                and os.environ.get("POSETUNE_PREFETCH", "0") == "1":
            return BatchProducer(items, prepare)
        return contextlib.nullcontext(map(prepare, items))

    def train_epoch(self, epoch: int, loader, state: LoopState, batch_color=None,
                    stop_flag: Callable[[], bool] | None = None,
                    on_step: Callable[[int, float, float], None] | None = None) -> dict:
        """One epoch over ``loader`` (whose dataset decides the per-image augmentation); ``batch_color`` is
        the batch colour jitter."""
        frozen = self.plan.frozen_at(epoch)
        apply_freeze(self.model, self.stages, frozen)
        set_train_mode(self.model, self.stages, frozen, self.plan.bn)
        seed = seed_epoch(loader, epoch, self.settings.seed)
        module = self._module(frozen)
        stats = dict(state.partial_stats) or {"loss": 0.0, "correct": 0, "seen": 0}
        with self.batches(loader, seed, state.step_in_epoch, batch_color) as batches:
            for step, inputs, y in batches:
                if stop_flag is not None and self.dist.any(stop_flag()):  # every rank stops at the same step
                    raise StopRequested(step, stats)
                loss, logits = self.step(module, inputs, y, (epoch - 1) * self.steps_per_epoch + step)
                self.last_loss = loss.item()
                stats["loss"] += self.last_loss * len(y)
                stats["correct"] += (logits.argmax(1).cpu() == y).sum().item()
                stats["seen"] += len(y)
                if on_step:
                    on_step(len(y), stats["loss"] / stats["seen"], stats["correct"] / stats["seen"])
        loss_sum, correct, seen = self.dist.sum([stats["loss"], stats["correct"], stats["seen"]])
        row = {"train_loss": loss_sum / max(1, seen), "train_accuracy": correct / max(1, seen),
               "lr": self.scheduler.get_last_lr()[-1], "images": int(seen), "frozen": "+".join(frozen) or "-"}
        if self.dist.enabled:
            row["images_per_rank"] = stats["seen"]
        return row

    def stretch(self, epochs: int) -> int:
        """The epochs every rank agrees on (the mean of their proposals: every rank must call this), and the
        cosine ends there instead when that is later than planned. The LR of the next step is recomputed: a
        warm-up shorter than the epoch would have set it from the old end."""
        epochs = int(self.dist.sum([float(epochs)])[0] // self.dist.world) if self.dist.enabled else epochs
        schedule = self.scheduler.lr_lambdas[0]  # one object for every group
        if self.steps_per_epoch * epochs > schedule.total_steps:
            schedule.total_steps = self.steps_per_epoch * epochs
            factor = schedule(self.scheduler.last_epoch)
            for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
                group["lr"] = base * factor
            self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        return epochs

    # ------------------------------------------------------------------ validation

    def validate(self, loader) -> dict:
        """val loss and accuracy of the model (and of its EMA, as ``ema_*``), gathered over ranks; scored on
        the BN-folded copy that the final scoring and predict run (the same logits to ~1e-4, ~1.5-2x faster
        than the training graph on a CPU; folding lite0 takes ~0.2 s), so the epochs' validation times also
        say what the final evaluation will take (final_eval_shortfall)."""
        def scores(net: torch.nn.Module) -> dict:
            net = inference_copy(net, self.kind, self.preprocess.size)[0]
            logits, labels = predict_logits(net, loader, self.device, self.preprocess)
            return val_row(self.dist.gather_rows(logits), self.dist.gather_rows(labels))

        row = scores(self.model)
        if self.ema is not None:
            row.update({f"ema_{k}": v for k, v in scores(self.ema.module).items()})
        return row

    def snapshot(self, row: dict) -> dict:
        """A CPU copy of the better of the weights and their EMA on this epoch's val score (without val: the EMA
        when ``Settings.keep_ema``)."""
        if "val_accuracy" in row:
            use_ema = self.ema is not None and ema_scored_better(row)
        else:
            use_ema = self.ema is not None and self.settings.keep_ema
        row["weights"] = "ema" if use_ema else "model"
        source = self.ema.module if use_ema else self.model
        return {k: v.detach().to("cpu", copy=True) for k, v in source.state_dict().items()}


def ema_scored_better(row: dict) -> bool:
    """Whether an epoch's row (as the loop keeps it, or read back from metrics.csv) scored the EMA above the
    model's own weights on val; False without an EMA score."""
    return float(row.get("ema_val_accuracy") or -1) > float(row.get("val_accuracy") or 0)


def fit(trainer: Trainer, train_loader, val_loader, batch_color=None, resume: dict | None = None,
        save: Callable[[dict], None] | None = None, stop_flag: Callable[[], bool] | None = None,
        on_step: Callable[[int, float, float], None] | None = None,
        on_epoch: Callable[[dict], None] | None = None) -> FitResult:
    """Fine-tune following the trainer's plan. ``resume``: a checkpoint from ``load_checkpoint``;
    ``save(checkpoint)``: called after every epoch and at a stop signal (only rank 0 is given one);
    ``stop_flag``: polled at every step (SIGINT/SIGTERM), stops at that boundary."""
    state, best_state = trainer.restore(resume) if resume is not None else (LoopState(), None)

    def train_epoch(epoch: int, state: LoopState) -> dict:
        return trainer.train_epoch(epoch, train_loader, state, batch_color, stop_flag, on_step)

    def checkpoint(state: LoopState, best: dict | None) -> None:
        if save is not None:
            save(trainer.state(state, best))

    return drive_epochs(trainer.settings, train_epoch, lambda: trainer.validate(val_loader), trainer.snapshot,
                        on_epoch, state, best_state, checkpoint, trainer.stretch)


def val_row(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    if len(labels) == 0:
        return {}
    return {"val_loss": nnf.cross_entropy(logits, labels).item(),
            "val_accuracy": (logits.argmax(1) == labels).float().mean().item()}
