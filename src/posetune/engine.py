"""The training loop: devices, AMP, warm-up + cosine schedule, best-epoch keeping, early stopping.

Small functions over plain data: a model, parameter groups, loaders in; a history and the best
weights out. The linear strategy trains its head on cached features (features.py) through the
same epoch driver.
"""

from __future__ import annotations

import copy
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


class Normalizer:
    """uint8 batch on the host -> normalised float batch on the device (normalising there is cheap)."""

    def __init__(self, preprocess: Preprocess, device: torch.device):
        self.device = device
        self.mean = torch.tensor(preprocess.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(preprocess.std, device=device).view(1, 3, 1, 1)
        self.memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).float().div_(255.0).sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=self.memory_format)


@dataclass
class Settings:
    epochs: int
    batch_size: int = 32
    patience: int = 5  # epochs without a better val score before stopping (0: never stop early)
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    seed: int = 0


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)  # one row per epoch
    best_epoch: int = 0
    best_state: dict | None = None
    seconds: float = 0.0
    images_seen: int = 0


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


def drive_epochs(settings: Settings, train_epoch: Callable[[int], dict], evaluate: Callable[[], dict],
                 snapshot: Callable[[], dict], on_epoch: Callable[[dict], None] | None = None) -> FitResult:
    """Run epochs, keep the best by val accuracy (then lower val loss), stop after ``patience`` flat epochs."""
    result = FitResult()
    best_key = (-1.0, -math.inf)
    stale = 0
    start = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        t0 = time.perf_counter()
        row = {"epoch": epoch, **train_epoch(epoch)}
        row.update(evaluate())
        row["seconds"] = round(time.perf_counter() - t0, 3)
        key = (row.get("val_accuracy", 0.0), -row.get("val_loss", 0.0))
        row["best"] = key > best_key
        if row["best"]:
            best_key, result.best_epoch, result.best_state, stale = key, epoch, snapshot(), 0
        else:
            stale += 1
        result.history.append(row)
        result.images_seen += int(row.get("images", 0))
        if on_epoch:
            on_epoch(row)
        if settings.patience and stale >= settings.patience:
            break
    result.seconds = time.perf_counter() - start
    return result


def fit(model: torch.nn.Module, stages: list[Stage], plan: Plan, train_loader, val_loader, preprocess: Preprocess,
        settings: Settings, device: torch.device, on_step: Callable[[int], None] | None = None,
        on_epoch: Callable[[dict], None] | None = None, class_weights: torch.Tensor | None = None) -> FitResult:
    """Fine-tune ``model`` (frozen stages already have requires_grad=False) and return its history."""
    groups = param_groups(model, stages, plan, settings.weight_decay)
    optimizer = make_optimizer(groups, device)
    steps_per_epoch = max(1, len(train_loader))
    scheduler = cosine_with_warmup(optimizer, steps_per_epoch * settings.epochs,
                                   int(steps_per_epoch * settings.warmup_epochs))
    prepare = Normalizer(preprocess, device)
    weight = class_weights.to(device) if class_weights is not None else None

    def train_epoch(epoch: int) -> dict:
        set_train_mode(model, stages, plan)
        total_loss, correct, seen = 0.0, 0, 0
        for x, y in train_loader:
            x, y = prepare(x), y.to(device, non_blocking=True)
            with autocast(device):
                logits = model(x)
                loss = nnf.cross_entropy(logits.float(), y, weight=weight, label_smoothing=settings.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            if on_step:
                on_step(len(y))
        return {"train_loss": total_loss / max(1, seen), "train_accuracy": correct / max(1, seen),
                "lr": scheduler.get_last_lr()[-1], "images": seen}

    def evaluate() -> dict:
        logits, labels = predict_logits(model, val_loader, device, preprocess)
        return _val_row(logits, labels)

    def snapshot() -> dict:
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    return drive_epochs(settings, train_epoch, evaluate, snapshot, on_epoch)


def _val_row(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    if len(labels) == 0:
        return {}
    return {"val_loss": nnf.cross_entropy(logits, labels).item(),
            "val_accuracy": (logits.argmax(1) == labels).float().mean().item()}


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, loader, device: torch.device, preprocess: Preprocess,
                   on_step: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels for every batch of ``loader`` (eval mode)."""
    model.eval()
    prepare = Normalizer(preprocess, device)
    outs, labels = [], []
    for x, y in loader:
        x = prepare(x)
        with autocast(device):
            outs.append(model(x).float().cpu())
        labels.append(torch.as_tensor(y))
        if on_step:
            on_step(len(x))
    if not outs:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(outs), torch.cat(labels)


def fit_head_on_features(head: torch.nn.Linear, train_feats: torch.Tensor, train_labels: torch.Tensor,
                         val_feats: torch.Tensor, val_labels: torch.Tensor, lr: float, settings: Settings,
                         on_epoch: Callable[[dict], None] | None = None,
                         class_weights: torch.Tensor | None = None) -> FitResult:
    """Train a linear head on cached pooled features: the linear strategy without re-running the base."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=settings.weight_decay)
    n = len(train_labels)
    steps_per_epoch = max(1, math.ceil(n / settings.batch_size))
    scheduler = cosine_with_warmup(optimizer, steps_per_epoch * settings.epochs, int(steps_per_epoch * settings.warmup_epochs))
    gen = torch.Generator().manual_seed(settings.seed)

    def train_epoch(epoch: int) -> dict:
        head.train()
        order = torch.randperm(n, generator=gen)
        total, correct = 0.0, 0
        for start in range(0, n, settings.batch_size):
            idx = order[start:start + settings.batch_size]
            logits = head(train_feats[idx])
            loss = nnf.cross_entropy(logits, train_labels[idx], weight=class_weights,
                                     label_smoothing=settings.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
            correct += (logits.argmax(1) == train_labels[idx]).sum().item()
        return {"train_loss": total / n, "train_accuracy": correct / n, "lr": scheduler.get_last_lr()[-1],
                "images": n}

    @torch.inference_mode()
    def evaluate() -> dict:
        head.eval()
        return _val_row(head(val_feats), val_labels)

    def snapshot() -> dict:
        return copy.deepcopy(head.state_dict())

    return drive_epochs(settings, train_epoch, evaluate, snapshot, on_epoch)


@torch.inference_mode()
def extract_features(model: torch.nn.Module, loader, device: torch.device, preprocess: Preprocess,
                     on_step: Callable[[int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled pre-logits features (the classifier's input) for every image of ``loader``."""
    model.eval()
    prepare = Normalizer(preprocess, device)
    feats, labels = [], []
    for x, y in loader:
        x = prepare(x)
        with autocast(device):
            f = model.forward_head(model.forward_features(x), pre_logits=True)
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(y))
        if on_step:
            on_step(len(x))
    if not feats:
        return torch.zeros(0, model.num_features), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)
