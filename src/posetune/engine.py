"""The training loop: devices, AMP, warm-up + cosine schedule, best-epoch keeping, early stopping.

Small functions over plain data: a model, parameter groups, loaders in; a history and the best
weights out. The linear strategy trains its head on cached features (features.py) through the
same epoch driver.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as nnf

from posetune.backbones import Stage
from posetune.data.pipeline import Preprocess
from posetune.errors import UsageError
from posetune.strategies import Plan, param_groups, set_train_mode


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise UsageError(f"--device must be auto, cpu, cuda or mps, not '{name}'")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps was asked for but MPS is not available; use --device cpu or auto")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA GPUs that support it, fp16 on older ones; off on CPU (exact fp32)."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast("cpu", enabled=False)


def place(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device`` in channels_last (NHWC) memory format, on CPU as well as CUDA: oneDNN's NHWC
    convolutions trained efficientnet_lite0 1.4-1.8x and resnet18 1.15-1.3x faster on a 2-core CPU, and ran
    batch inference 1.3-1.4x faster (benchmarks/README.md). Inputs follow via Normalizer; saved weights are
    made contiguous again (RunDir.save_model)."""
    return model.to(device=device, memory_format=torch.channels_last)


class Normalizer:
    """uint8 batch on the host -> normalised float batch on the device (normalising there is cheap)."""

    def __init__(self, preprocess: Preprocess, device: torch.device):
        self.device = device
        self.mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)

    def __call__(self, x: torch.Tensor, color: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """``color``: a batch augmentation of the [0, 1] pixels, applied before mean/std (training only)."""
        x = x.to(self.device, non_blocking=True).float().div_(255.0)
        if color is not None:
            x = color(x)
        x = x.sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=torch.channels_last)  # the layout place() gives the model


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


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # one row per epoch
    best_epoch: int = 0
    best_state: dict | None = None
    seconds: float = 0.0
    images_seen: int = 0
    stopped_early_by_signal: bool = False


class StopRequested(Exception):
    """Raised inside an epoch at a step boundary after SIGINT/SIGTERM."""

    def __init__(self, step: int, stats: dict):
        super().__init__(step)
        self.step, self.stats = step, stats


def cosine_with_warmup(optimizer, total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    # foreach kernels batch the per-parameter updates: fewer, larger ops on CPU and GPU.
    return torch.optim.AdamW([{k: v for k, v in g.items() if k != "stage"} for g in groups],
                             foreach=True, fused=False if device.type == "cpu" else None)


def drive_epochs(settings: Settings, train_epoch: Callable[[int, LoopState], dict], evaluate: Callable[[], dict],
                 snapshot: Callable[[dict], dict], on_epoch: Callable[[dict], None] | None = None,
                 state: LoopState | None = None, best_state: dict | None = None,
                 checkpoint: Callable[[LoopState, dict | None], None] | None = None) -> FitResult:
    """Run epochs from ``state`` on; keep the best by val accuracy (then lower val loss); stop after
    ``patience`` flat epochs. ``checkpoint(state, best_state)`` is called after every epoch, and at the
    step where a stop signal arrived (then the result says so)."""
    state = state or LoopState()
    result = FitResult(best_state=best_state)
    start = time.perf_counter()
    for epoch in range(state.epoch + 1, settings.epochs + 1):
        if settings.patience and state.stale >= settings.patience:
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
        acc = max(row.get("val_accuracy", 0.0), row.get("ema_val_accuracy", -1.0))
        neg_loss = -min(row.get("val_loss", 0.0), row.get("ema_val_loss", math.inf))
        row["best"] = (acc, neg_loss) > (state.best_acc, state.best_neg_loss)
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


def epoch_seed(seed: int, epoch: int) -> int:
    """Data order and augmentation for an epoch depend on (seed, epoch) only: a resumed run replays them."""
    return seed * 100_003 + epoch


def fit(model: torch.nn.Module, stages: list[Stage], plan: Plan, train_loader, val_loader, preprocess: Preprocess,
        settings: Settings, device: torch.device, on_step: Callable[[int, float, float], None] | None = None,
        on_epoch: Callable[[dict], None] | None = None, class_weights: torch.Tensor | None = None,
        resume: dict | None = None, checkpoint_path=None, stop_flag: Callable[[], bool] | None = None,
        on_warning: Callable[[str], None] | None = None, dist=None) -> FitResult:
    """Fine-tune ``model`` following ``plan`` (which stages train in which epoch, at which LR).

    ``resume``: a checkpoint dict from :func:`load_checkpoint`; ``checkpoint_path``: where to write one
    after every epoch; ``stop_flag``: polled at every step (SIGINT/SIGTERM), stops at that boundary.
    ``dist``: a :class:`posetune.distributed.Dist` under torchrun — DDP for the gradients, statistics
    summed over ranks, val predictions gathered, only rank 0 writes checkpoints.
    """
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy
    from timm.utils import ModelEmaV3

    from posetune.distributed import Dist
    from posetune.strategies import apply_freeze

    groups = param_groups(model, stages, plan, settings.weight_decay)
    optimizer = make_optimizer(groups, device)
    steps_per_epoch = max(1, len(train_loader))
    scheduler = cosine_with_warmup(optimizer, steps_per_epoch * settings.epochs,
                                   int(steps_per_epoch * settings.warmup_epochs))
    prepare = Normalizer(preprocess, device)
    batch_color = getattr(getattr(_base_dataset(train_loader), "augment", None), "batch_color", None)
    weight = class_weights.to(device) if class_weights is not None else None
    n_classes = model.get_classifier().out_features
    mixer = (Mixup(mixup_alpha=settings.mixup, cutmix_alpha=settings.cutmix, label_smoothing=settings.label_smoothing,
                   num_classes=n_classes) if settings.mixup or settings.cutmix else None)
    soft_loss = SoftTargetCrossEntropy()
    ema = ModelEmaV3(model, decay=settings.ema_decay, device=device) if settings.ema_decay else None
    dist = dist or Dist()
    ddp: dict = {"frozen": None, "module": model}  # DDP wrapper, rebuilt when the trainable set changes

    def forward_module(frozen: list[str]) -> torch.nn.Module:
        if dist.enabled and ddp["frozen"] != frozen:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            ddp["module"], ddp["frozen"] = DistributedDataParallel(model, device_ids=ids), frozen
        return ddp["module"]

    state, best_state = LoopState(), None
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if ema is not None and resume.get("ema") is not None:
            ema.load_state_dict(resume["ema"])
        state, best_state = LoopState(**resume["loop"]), resume.get("best_state")

    def train_epoch(epoch: int, state: LoopState) -> dict:
        frozen = plan.frozen_at(epoch)
        apply_freeze(model, stages, frozen)
        set_train_mode(model, stages, frozen, plan.bn)
        seed = epoch_seed(settings.seed, epoch)
        torch.manual_seed(seed)  # augmentation, dropout, mixup draws
        loader_gen = getattr(train_loader, "generator", None)
        if loader_gen is not None:
            loader_gen.manual_seed(seed)
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):  # DistributedSampler: the shard order depends on (seed, epoch)
            sampler.set_epoch(epoch)
        elif getattr(sampler, "generator", None) is not None:
            sampler.generator.manual_seed(seed)
        module = forward_module(frozen)
        stats = dict(state.partial_stats) or {"loss": 0.0, "correct": 0, "seen": 0}
        skip = state.step_in_epoch
        for step, (x, y) in enumerate(train_loader):
            if step < skip:
                continue  # resuming mid-epoch: these batches were trained before the stop
            if stop_flag is not None and dist.any(stop_flag()):  # every rank stops at the same step
                raise StopRequested(step, stats)
            color = None
            if batch_color is not None:  # its draws depend on (seed, epoch, step) only, as a resumed run needs
                gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
                color = functools.partial(batch_color, generator=gen)
            x, y = prepare(x, color), y.to(device, non_blocking=True)
            target = None
            if mixer is not None and len(y) % 2 == 0:
                x, target = mixer(x, y)
            with autocast(device):
                logits = module(x)
            logits = logits.float()
            if target is not None:
                loss = soft_loss(logits, target)
            else:
                loss = nnf.cross_entropy(logits, y, weight=weight, label_smoothing=settings.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update(model, step=(epoch - 1) * steps_per_epoch + step)
            stats["loss"] += loss.item() * len(y)
            stats["correct"] += (logits.argmax(1) == y).sum().item()
            stats["seen"] += len(y)
            if on_step:
                on_step(len(y), stats["loss"] / stats["seen"], stats["correct"] / stats["seen"])
        loss_sum, correct, seen = dist.sum([stats["loss"], stats["correct"], stats["seen"]])
        row = {"train_loss": loss_sum / max(1, seen), "train_accuracy": correct / max(1, seen),
               "lr": scheduler.get_last_lr()[-1], "images": int(seen), "frozen": "+".join(frozen) if frozen else "-"}
        if dist.enabled:
            row["images_per_rank"] = stats["seen"]
        return row

    def gathered_logits(net: torch.nn.Module):
        logits, labels = predict_logits(net, val_loader, device, preprocess)
        return dist.gather_rows(logits), dist.gather_rows(labels)

    def evaluate() -> dict:
        row = _val_row(*gathered_logits(model))
        if ema is not None:
            ema_row = _val_row(*gathered_logits(ema.module))
            row.update({f"ema_{k}": v for k, v in ema_row.items()})
        return row

    def snapshot(row: dict) -> dict:
        use_ema = ema is not None and row.get("ema_val_accuracy", -1) > row.get("val_accuracy", 0)
        source = ema.module if use_ema else model
        row["weights"] = "ema" if use_ema else "model"
        return {k: v.detach().to("cpu", copy=True) for k, v in source.state_dict().items()}

    def save(state: LoopState, best: dict | None) -> None:
        if checkpoint_path is None or not dist.is_main:
            return
        try:
            save_checkpoint(checkpoint_path, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "ema": ema.state_dict() if ema is not None else None, "loop": dataclasses.asdict(state),
                "best_state": best,
            })
        except OSError as exc:  # e.g. disk full: the atomic write left the previous checkpoint intact
            if on_warning:
                on_warning(f"could not save the checkpoint after epoch {state.epoch} ({exc}); the previous one is kept")

    return drive_epochs(settings, train_epoch, evaluate, snapshot, on_epoch, state, best_state, save)


def _base_dataset(loader):
    """The dataset under a loader, through any Subset wrappers."""
    ds = getattr(loader, "dataset", None)
    while hasattr(ds, "dataset"):
        ds = ds.dataset
    return ds


def save_checkpoint(path, payload: dict) -> None:
    """torch.save into memory, then an atomic write: a kill leaves the previous checkpoint intact."""
    import io

    from posetune.run import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _val_row(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    if len(labels) == 0:
        return {}
    return {"val_loss": nnf.cross_entropy(logits, labels).item(),
            "val_accuracy": (logits.argmax(1) == labels).float().mean().item()}


@torch.inference_mode()
def run_batches(forward: Callable[[torch.Tensor], torch.Tensor], loader, device: torch.device,
                preprocess: Preprocess, width: int, on_step: Callable[[int], None] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``forward`` over every normalised batch of ``loader``: (outputs on the CPU, labels); ``width``
    sizes the empty result of an empty loader."""
    prepare = Normalizer(preprocess, device)
    outs, labels = [], []
    for x, y in loader:
        x = prepare(x)
        with autocast(device):
            outs.append(forward(x).float().cpu())
        labels.append(torch.as_tensor(y))
        if on_step:
            on_step(len(x))
    if not outs:
        return torch.zeros(0, width), torch.zeros(0, dtype=torch.long)
    return torch.cat(outs), torch.cat(labels)


def predict_logits(model: torch.nn.Module, loader, device: torch.device, preprocess: Preprocess,
                   on_step: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels for every batch of ``loader`` (eval mode)."""
    model.eval()
    return run_batches(model, loader, device, preprocess, 0, on_step)
