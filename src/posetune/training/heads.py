"""A linear head trained on cached features: the linear strategy (and LP-FT's probe phase) without
re-running the frozen base each epoch, through the same epoch driver as fine-tuning."""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn.functional as nnf

from posetune.training.loop import FitResult, LoopState, Settings, cosine_with_warmup, drive_epochs, val_row


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

    def train_epoch(epoch: int, state: LoopState) -> dict:
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
        return val_row(head(val_feats), val_labels)

    def snapshot(row: dict) -> dict:
        return copy.deepcopy(head.state_dict())

    return drive_epochs(settings, train_epoch, evaluate, snapshot, on_epoch)
