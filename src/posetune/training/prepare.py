"""What a training run is built from: DATA -> checked samples -> backbone + plan -> decoded datasets.

`train` and `lr-find` share :func:`prepare`; each step reports what it chose.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from posetune.console import Reporter
from posetune.errors import UsageError
from posetune.io import file_sha256
from posetune.options import TrainOptions

if TYPE_CHECKING:
    import torch

    from posetune.backbones import BackboneSpec, Stage
    from posetune.data.layouts import DataIndex
    from posetune.data.pipeline import DecodedDataset, Preprocess
    from posetune.distributed import Dist
    from posetune.run import RunDir
    from posetune.strategies import Plan, Strategy
    from posetune.training.loop import Settings


@dataclass
class Prepared:
    """Everything a training run is built from: what `train` and `lr-find` share."""

    opts: TrainOptions
    strategy: Strategy
    spec: BackboneSpec
    device: torch.device
    index: DataIndex
    model: torch.nn.Module
    stages: list[Stage]
    plan: Plan
    preprocess: Preprocess
    out: RunDir
    train_ds: DecodedDataset  # augmented
    val_ds: DecodedDataset
    test_ds: DecodedDataset
    settings: Settings
    class_weights: torch.Tensor | None
    sampler: object  # a torch Sampler for --balance sampler or DDP, else None
    dist: Dist
    config_sha256: str | None = None  # of the run's config.yaml: the checkpoints carry it
    budget: dict | None = None  # train --time-budget's decision, recorded in model.json
    no_person: dict | None = None  # pose / NAME+pose: {split: {class: images with no person found}}
    refit: dict | None = None  # train --refit's final run: what its selection run chose, recorded in model.json
    score: tuple[str, ...] = ("val", "test")  # the splits scored after training (a selection run: val only)

    @property
    def epochs(self) -> int:
        return self.settings.epochs

    def loader(self, ds, shuffle: bool = False, sampler=None):
        from posetune.data.pipeline import make_loader

        return make_loader(ds, self.opts.batch_size, shuffle, self.device, self.opts.seed, sampler)

    def train_loader(self):
        """The augmented training set in seeded batches (pipeline.SeededBatches), in --balance's or DDP's
        sampler order where there is one."""
        from posetune.data.pipeline import make_train_loader

        return make_train_loader(self.train_ds, self.opts.batch_size, self.device, self.opts.seed, self.sampler)

    def shard_loader(self, ds):
        """This rank's share of ``ds`` in order (all of it on one process)."""
        from torch.utils.data import Subset

        return self.loader(Subset(ds, self.dist.shard(len(ds))))


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_run_dir(opts: TrainOptions) -> Path:
    base = Path("runs") / f"{Path(opts.data).stem or 'data'}-{opts.backbone.split('@')[0]}-{opts.strategy}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def prepare(opts: TrainOptions, reporter: Reporter, write_config: bool = True, dist: Dist | None = None,
            overwrite: bool = False, resume: bool = False, create: bool = True, val_in_train: bool = False) -> Prepared:
    """DATA -> checked samples -> backbone with its plan -> decoded datasets, reporting each choice.

    ``create``: make the run folder (refusing an existing one unless ``overwrite`` or ``resume``);
    ``val_in_train``: the val split trains too (`train --refit`'s final run)."""
    from posetune import backbones, strategies
    from posetune.data.pipeline import Preprocess
    from posetune.devices import place, training_precision
    from posetune.distributed import Dist
    from posetune.runtime import tune_allocator
    from posetune.training.loop import Settings

    tune_allocator()
    dist = dist or Dist()
    strategy = strategies.get_strategy(opts.strategy)
    spec = backbones.parse_spec(opts.backbone, weights=opts.weights, pretrained=opts.pretrained)
    if spec.kind == "pose" and opts.strategy != "linear":
        # a `pose` model is all head: nothing to freeze or unfreeze, so every strategy but linear (head on
        # cached landmark features) is the epoch loop over the whole (small) model
        reporter.info(f"backbone pose is all head: --strategy {opts.strategy} trains it in the epoch loop (as full)")
        strategy = strategies.get_strategy("full")
    device = _device(opts.device, dist)
    # a precision this device cannot run stops here, before any file is written
    precision, slow = training_precision(device, opts.precision)
    if slow:
        reporter.warn(slow)
    seed_everything(opts.seed)
    index = load_index(opts, reporter, val_in_train)
    model, stages, plan = build_model(opts, spec, len(index.classes), reporter, strategy.name)
    epochs = opts.epochs if opts.epochs is not None else strategy.epochs
    preprocess = Preprocess.from_config(backbones.data_config(model, opts.image_size, opts.crop_pct))
    out = run_folder(opts, dist, write_config and create, overwrite, resume, create)
    reporter.info(f"backbone {spec.name} ({spec.arch}, weights: {spec.weight_source}), strategy {opts.strategy}, "
                  f"{epochs} epochs, image size {preprocess.size}, batch {opts.batch_size}, device {device} ({precision}), "
                  f"head lr {plan.lrs['head']:.1e} -> {out.path}")
    reporter.table("stages", plan.table(stages))
    if not index.split("val") and not val_in_train:
        reporter.info(f"no val split (DATA has none and --val-fraction {opts.val_fraction:g} held none out): every "
                      "epoch runs, the last one's weights are kept and no temperature is fitted")
    train_ds, val_ds, test_ds = decode_datasets(opts, index, preprocess, reporter)
    no_person = None
    if spec.uses_pose:
        from posetune.training.pose_inputs import attach_pose

        with_pose, no_person = attach_pose(index, {"train": train_ds, "val": val_ds, "test": test_ds}, reporter)
        train_ds, val_ds, test_ds = with_pose["train"], with_pose["val"], with_pose["test"]
    place(model, device)
    settings = Settings(epochs=epochs, batch_size=opts.batch_size, patience=opts.patience,
                        weight_decay=opts.weight_decay, label_smoothing=opts.label_smoothing, seed=opts.seed,
                        ema_decay=opts.ema, mixup=opts.mixup, cutmix=opts.cutmix,
                        precision=precision)
    class_weights, sampler = balancing(opts.balance, train_ds.labels, len(index.classes), opts.seed)
    if dist.enabled:
        import torch

        if sampler is not None:
            raise UsageError("--balance sampler does not work with several processes; use --balance weights")
        # Every rank gets an equal share (padded by a few repeats) so that DDP's collectives line up.
        sampler = torch.utils.data.distributed.DistributedSampler(train_ds, dist.world, dist.rank, shuffle=True,
                                                                  seed=opts.seed)
    config = out / "config.yaml"
    return Prepared(opts, strategy, spec, device, index, model, stages, plan, preprocess, out,
                    train_ds, val_ds, test_ds, settings, class_weights, sampler, dist,
                    file_sha256(config) if config.is_file() else None, no_person=no_person)


def _device(name: str, dist: Dist):
    import torch

    from posetune.devices import resolve_device

    device = resolve_device(name)
    return torch.device("cuda", dist.local_rank) if dist.enabled and device.type == "cuda" else device


def discover_index(opts: TrainOptions) -> DataIndex:
    """DATA's samples and splits as these options see them (the val split held out with --seed)."""
    from posetune.data.layouts import discover

    return discover(opts.data, val_fraction=opts.val_fraction, seed=opts.seed, label_level=opts.label_level)


def load_index(opts: TrainOptions, reporter: Reporter, val_in_train: bool = False) -> DataIndex:
    """The samples of DATA, with the fast part of `posetune data check` (cross-split copies) and the counts."""
    from posetune.data.check import exact_duplicates

    index = discover_index(opts)
    if val_in_train:
        index = index.with_val_in_train()
    for w in index.warnings:
        reporter.warn(w)
    for group in exact_duplicates(index):
        if group["cross_split"]:
            reporter.warn(f"the same file is in {' and '.join(group['splits'])}: {', '.join(group['paths'])} "
                          "(train/test leak; run `posetune data check`)")
    counts = index.counts()
    reporter.table(f"data: {opts.data} ({index.layout})",
                   [{"split": s, **counts[s], "total": sum(counts[s].values())} for s in ("train", "val", "test")
                    if s in counts])
    return index


def build_model(opts: TrainOptions, spec: BackboneSpec, n_classes: int, reporter: Reporter,
                strategy_name: str | None = None):
    """The backbone with a new head, its stages, and the strategy's plan applied (frozen stages frozen)."""
    from posetune import backbones, strategies
    from posetune.pose import pose_dim_of

    model, info = backbones.create_backbone(spec, num_classes=n_classes, pose_dim=pose_dim_of(spec))
    for note in info["notes"]:
        reporter.info(f"note: {note}")
    stages = backbones.model_stages(model)
    plan = strategies.make_plan(strategy_name or opts.strategy, stages, lr=opts.lr, freeze_stages=opts.freeze_stages,
                                base_lr_ratio=opts.base_lr_ratio, layer_decay=opts.layer_decay, bn=opts.bn,
                                freeze_epochs=opts.freeze_epochs, unfreeze_every=opts.unfreeze_every)
    strategies.apply_freeze(model, stages, plan.frozen)
    return model, stages, plan


def run_folder(opts: TrainOptions, dist: Dist, write_config: bool, overwrite: bool, resume: bool,
               create: bool = True) -> RunDir:
    """The run's folder (--out, else a new one under runs/), made by rank 0 with config.yaml first."""
    from posetune.run import RunDir

    out = RunDir(opts.out or default_run_dir(opts))
    opts.out = str(out.path)
    dist.barrier()  # every rank has picked the same folder name before rank 0 creates it
    if create and dist.is_main:
        out.create(overwrite=overwrite, resume=resume)
        if write_config and not resume:
            out.write_config(dataclasses.asdict(opts))  # first, so that an interrupted run can be resumed
    dist.barrier()
    return out


def decode_datasets(opts: TrainOptions, index: DataIndex, preprocess: Preprocess, reporter: Reporter):
    """Decode every image once; unreadable files are skipped here, never mid-epoch. (train, val, test)."""
    from posetune.data.pipeline import DecodedDataset, TrainAugment, decode_all

    paths = [s.path for s in index.samples]
    images, failed = decode_all(paths, preprocess, progress=reporter.start("decode images", len(paths)),
                                cache=opts.cache, cache_dir=opts.cache_dir)
    reporter.stop()
    index.drop(failed)
    for path, reason in failed.items():
        reporter.warn(f"skipped {path}: {reason}")
    decoded = dict(zip(paths, images))

    def dataset(split: str, augment: bool) -> DecodedDataset:
        samples = index.split(split)
        return DecodedDataset([decoded[s.path] for s in samples], [s.label for s in samples], preprocess,
                              TrainAugment(preprocess.size, scale=(opts.crop_scale, 1.0), policy=opts.augment)
                              if augment else None)

    train_ds = dataset("train", True)
    if len(train_ds) == 0:
        raise UsageError(f"no readable training images in {opts.data}; see the skipped files above")
    return train_ds, dataset("val", False), dataset("test", False)


def balancing(mode: str, labels: list[int], n_classes: int, seed: int):
    """``--balance``: class weights for the loss (inverse frequency), or a sampler that draws every class
    equally often; (None, None) for 'none'."""
    import torch

    counts = torch.bincount(torch.tensor(labels), minlength=n_classes).float().clamp(min=1)
    if mode == "weights":
        return counts.sum() / (n_classes * counts), None
    if mode == "sampler":
        per_sample = (1.0 / counts)[torch.tensor(labels)]
        gen = torch.Generator().manual_seed(seed)
        return None, torch.utils.data.WeightedRandomSampler(per_sample, len(labels), replacement=True, generator=gen)
    return None, None
