"""The fine-tuning peers, written the way their users write them, on the plain loop's protocol and data.

- fastai: a ``Learner`` with a body/head ``splitter`` and ``fine_tune(epochs, freeze_epochs=1)`` on
  ``ImageDataLoaders.from_folder`` (item ``Resize``, batch ``Normalize``).
- Lightning: a ``LightningModule`` whose ``backbone`` (the trainable base parameters) the
  ``BackboneFinetuning`` callback unfreezes after the first epoch, on torchvision ``ImageFolder`` loaders.

Both start from the same model as the plain loop (``workers.planned_model``: posetune's offline weights, its
frozen stages for the strategy) and read DATA/TRAIN, VAL, TEST. They are benchmark-only
(benchmarks/requirements-peers.txt); :func:`missing` names what is not installed, so a section can skip.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

PEERS = {"fastai": "fastai", "lightning": "pytorch_lightning"}  # peer -> the module it needs


def missing(peer: str) -> str | None:
    """None when ``peer`` can run here, else the line a skipped section prints."""
    if importlib.util.find_spec(PEERS[peer]) is None:
        return f"{peer}: skipped, not installed (pip install -r benchmarks/requirements-peers.txt)"
    return None


def _split_params(model) -> tuple[list, list]:
    """(trainable base parameters, head parameters) of a planned model: frozen stages are in neither."""
    head = list(model.get_classifier().parameters())
    ids = {id(p) for p in head}
    return [p for p in model.parameters() if p.requires_grad and id(p) not in ids], head


def worker_fastai(spec: dict) -> dict:
    import torch
    from fastai.vision.all import (
        CategoryBlock,
        DataBlock,
        GrandparentSplitter,
        ImageBlock,
        LabelSmoothingCrossEntropyFlat,
        Learner,
        Normalize,
        Resize,
        accuracy,
        get_image_files,
        parent_label,
    )
    from workers import planned_model

    torch.manual_seed(spec.get("seed", 0))
    data = Path(spec["data"])
    def train_and_val(path):
        return [f for f in get_image_files(path) if f.parent.parent.name in ("TRAIN", "VAL")]

    block = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=train_and_val, get_y=parent_label,
                      splitter=GrandparentSplitter(train_name="TRAIN", valid_name="VAL"),
                      item_tfms=Resize(spec["size"]), batch_tfms=Normalize.from_stats(spec["mean"], spec["std"]))
    dls = block.dataloaders(data, bs=spec["batch"], num_workers=spec.get("workers", os.cpu_count() or 1))
    model = planned_model(spec["backbone"], spec["strategy"], len(dls.vocab), spec.get("freeze_stages"))
    learn = Learner(dls, model, loss_func=LabelSmoothingCrossEntropyFlat(), metrics=accuracy, wd=0.05,
                    splitter=lambda m: [g for g in _split_params(m) if g])
    t0 = time.perf_counter()
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(spec["epochs"] - 1, base_lr=spec["lr"], freeze_epochs=1)  # same epoch count in all
    seconds = time.perf_counter() - t0
    test = dls.test_dl(get_image_files(data / "TEST"), with_labels=True)
    with learn.no_bar():
        preds, targets = learn.get_preds(dl=test)
    return {"total_seconds": round(seconds, 2), "test_accuracy": float((preds.argmax(1) == targets).float().mean())}


def worker_lightning(spec: dict) -> dict:
    import pytorch_lightning as pl
    import torch
    import torch.nn.functional as nnf
    from pytorch_lightning.callbacks import BackboneFinetuning
    from workers import loader_accuracy, planned_model, tutorial_loaders

    pl.seed_everything(spec.get("seed", 0), verbose=False)
    sets, loaders, _ = tutorial_loaders(spec)
    model = planned_model(spec["backbone"], spec["strategy"], len(sets["train"].classes), spec.get("freeze_stages"))

    class Classifier(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model
            # what BackboneFinetuning freezes, then unfreezes: the base's trainable leaf modules (not the head's)
            head = set(model.get_classifier().modules())
            self.backbone = torch.nn.ModuleList(
                m for m in model.modules() if m not in head and not list(m.children())
                and any(p.requires_grad for p in m.parameters(recurse=False)))

        def forward(self, x):
            return self.model(x)

        def training_step(self, batch, _):
            x, y = batch
            return nnf.cross_entropy(self(x), y, label_smoothing=0.1)

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_acc", (self(x).argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.AdamW(self.model.get_classifier().parameters(), lr=spec["lr"], weight_decay=0.05)

    module = Classifier()
    trainer = pl.Trainer(max_epochs=spec["epochs"], accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[BackboneFinetuning(unfreeze_backbone_at_epoch=1, backbone_initial_ratio_lr=0.1,
                                                       should_align=True, verbose=False)])
    t0 = time.perf_counter()
    trainer.fit(module, loaders["train"], loaders["val"])
    seconds = time.perf_counter() - t0
    return {"total_seconds": round(seconds, 2), "test_accuracy": loader_accuracy(module, loaders["test"])}


PEER_WORKERS = {"fastai": worker_fastai, "lightning": worker_lightning}
