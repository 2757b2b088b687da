"""`posetune train`: DATA -> samples -> decoded images -> backbone + strategy -> fit -> run folder.

>>> result = train("DATASET", strategy="partial", epochs=5, out="runs/yoga")  # doctest: +SKIP
>>> result.metrics["test"]["accuracy"]                                        # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from posetune.console import Reporter
from posetune.errors import PosetuneError, UsageError


@dataclass
class TrainOptions:
    """Every option of `posetune train` (the YAML config uses the same keys). None = the strategy default."""

    data: str = ""
    backbone: str = "efficientnet_lite0"
    strategy: str = "partial"
    freeze_stages: int | None = None
    epochs: int | None = None
    lr: float | None = None
    base_lr_ratio: float = 0.1
    layer_decay: float | None = None
    bn: str = "frozen"
    batch_size: int = 32
    image_size: int | None = None
    crop_pct: float | None = None  # eval centre crop / resize ratio; 1.0 keeps the whole image (default: backbone's)
    val_fraction: float = 0.15
    patience: int = 5
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    out: str | None = None
    seed: int = 0
    device: str = "auto"
    weights: str | None = None
    pretrained: bool = True
    label_level: int = 6
    freeze_epochs: int = 1  # gradual: epochs with only the head training
    unfreeze_every: int = 1  # gradual: epochs between two stages unfreezing
    ema: float | None = None  # EMA decay of the weights, e.g. 0.999 (off when None)
    balance: str = "none"  # none | weights | sampler
    mixup: float = 0.0
    cutmix: float = 0.0
    cache: str = "auto"  # decoded pixels: auto | memory | disk (memory-mapped, reused by later runs)
    cache_dir: str | None = None  # default ~/.cache/posetune/decoded (or $POSETUNE_CACHE)

    @classmethod
    def from_sources(cls, config: str | Path | None = None, **overrides) -> TrainOptions:
        """YAML config first, then explicit overrides (flags) on top; unknown keys are an error."""
        values: dict = {}
        if config:
            values.update(read_config(config))
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"unknown option(s) {', '.join(unknown)} in the config; valid keys: {', '.join(sorted(known))}")
        return cls(**values)


def read_config(path: str | Path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(values, dict):
        raise UsageError(f"{path} must hold a mapping of option: value")
    return {k.replace("-", "_"): v for k, v in values.items()}


@dataclass
class TrainResult:
    run: Path
    metrics: dict = field(default_factory=dict)  # {"val": {...}, "test": {...}}
    history: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    train_seconds: float = 0.0


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


def train(data: str | Path | None = None, reporter: Reporter | None = None, config: str | Path | None = None,
          verbose: bool = False, resume: str | Path | None = None, **options) -> TrainResult:
    """Fine-tune a backbone on DATA and write a self-contained run folder. Options as `posetune train`.

    ``resume=RUN`` continues RUN from its last checkpoint with the options saved in RUN/config.yaml.
    """
    from posetune.console import RichReporter

    reporter = reporter or (RichReporter() if verbose else Reporter())
    if resume is not None:
        saved = Path(resume) / "config.yaml"
        if not (Path(resume) / CHECKPOINT).is_file() or not saved.is_file():
            raise UsageError(f"{resume} has no checkpoint to resume from ({CHECKPOINT} and config.yaml are needed)")
        opts = TrainOptions.from_sources(saved, out=str(resume))
        return _train(opts, reporter, resume=True)
    opts = TrainOptions.from_sources(config, data=str(data) if data is not None else None, **options)
    if not opts.data:
        raise UsageError("no DATA given: pass a folder of class folders, split folders or a CSV manifest")
    if not Path(opts.data).exists():  # before the slow imports: a typo should fail at once
        raise UsageError(f"DATA not found: {opts.data} (give a folder of class folders, split folders, or a CSV)")
    return _train(opts, reporter)


CHECKPOINT = "checkpoint/last.pt"


class StopSignals:
    """SIGINT/SIGTERM set a flag that the loop checks at every step, so it can checkpoint and exit cleanly."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.received = signum

    def __call__(self) -> bool:
        return self.received is not None

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class Prepared:
    """Everything a training run is built from: what `train` and `lr-find` share."""

    opts: TrainOptions
    strategy: object
    spec: object
    device: object
    index: object
    model: object
    stages: list
    plan: object
    epochs: int
    preprocess: object
    out: object
    train_ds: object
    val_ds: object
    test_ds: object
    settings: object
    class_weights: object
    sampler: object
    dist: object

    def loader(self, ds, shuffle: bool = False):
        from posetune.data.pipeline import make_loader

        return make_loader(ds, self.opts.batch_size, shuffle, self.device, self.opts.seed)


def prepare(opts: TrainOptions, reporter: Reporter, write_config: bool = True, dist=None) -> Prepared:
    """DATA -> checked samples -> backbone with its plan -> decoded datasets, reporting each choice."""
    import torch

    from posetune import backbones, strategies
    from posetune.data.check import exact_duplicates
    from posetune.data.layouts import discover
    from posetune.data.pipeline import DecodedDataset, Preprocess, TrainAugment, decode_all
    from posetune.engine import Settings, place, resolve_device
    from posetune.run import RunDir
    from posetune.runtime import tune_allocator

    tune_allocator()
    strategy = strategies.get_strategy(opts.strategy)
    spec = backbones.parse_spec(opts.backbone, weights=opts.weights, pretrained=opts.pretrained)
    device = resolve_device(opts.device)
    if dist is not None and dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    seed_everything(opts.seed)

    index = discover(opts.data, val_fraction=opts.val_fraction, seed=opts.seed, label_level=opts.label_level)
    for w in index.warnings:
        reporter.warn(w)
    for group in exact_duplicates(index):  # the fast part of `posetune data check`
        if group["cross_split"]:
            reporter.warn(f"the same file is in {' and '.join(group['splits'])}: {', '.join(group['paths'])} "
                          "(train/test leak; run `posetune data check`)")
    counts = index.counts()
    reporter.table(f"data: {opts.data} ({index.layout})",
                   [{"split": s, **counts[s], "total": sum(counts[s].values())} for s in ("train", "val", "test")
                    if s in counts])

    model, info = backbones.create_backbone(spec, num_classes=len(index.classes))
    for note in info["notes"]:
        reporter.info(f"note: {note}")
    stages = backbones.model_stages(model)
    plan = strategies.make_plan(opts.strategy, stages, lr=opts.lr, freeze_stages=opts.freeze_stages,
                                base_lr_ratio=opts.base_lr_ratio, layer_decay=opts.layer_decay, bn=opts.bn,
                                freeze_epochs=opts.freeze_epochs, unfreeze_every=opts.unfreeze_every)
    if opts.balance not in ("none", "weights", "sampler"):
        raise UsageError(f"--balance must be none, weights or sampler, not '{opts.balance}'")
    strategies.apply_freeze(model, stages, plan.frozen)
    epochs = opts.epochs or strategy.epochs
    preprocess = Preprocess.from_config(backbones.data_config(model, opts.image_size, opts.crop_pct))
    out = RunDir(opts.out or default_run_dir(opts))
    if dist is not None:
        dist.barrier()  # every rank has picked the same folder name before rank 0 creates it
    out.path.mkdir(parents=True, exist_ok=True)
    opts.out = str(out.path)
    if write_config:
        _write_config(out, opts)  # first, so that an interrupted run can be resumed
    reporter.info(f"backbone {spec.name} ({spec.arch}, weights: {spec.weight_source}), strategy {opts.strategy}, "
                  f"{epochs} epochs, image size {preprocess.size}, batch {opts.batch_size}, device {device}, "
                  f"head lr {plan.lrs['head']:.1e} -> {out.path}")
    reporter.table("stages", plan.table(stages))

    # Decode every image once; unreadable files are skipped here, never mid-epoch.
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
                              TrainAugment(preprocess.size) if augment else None)

    train_ds, val_ds, test_ds = dataset("train", True), dataset("val", False), dataset("test", False)
    if len(train_ds) == 0:
        raise UsageError(f"no readable training images in {opts.data}; see the skipped files above")
    place(model, device)
    settings = Settings(epochs=epochs, batch_size=opts.batch_size, patience=opts.patience,
                        weight_decay=opts.weight_decay, label_smoothing=opts.label_smoothing, seed=opts.seed,
                        ema_decay=opts.ema, mixup=opts.mixup, cutmix=opts.cutmix)
    class_weights, sampler = balancing(opts.balance, train_ds.labels, len(index.classes), opts.seed)
    if dist is not None and dist.enabled:
        if sampler is not None:
            raise UsageError("--balance sampler does not work with several processes; use --balance weights")
        # Every rank gets an equal share (padded by a few repeats) so that DDP's collectives line up.
        sampler = torch.utils.data.distributed.DistributedSampler(train_ds, dist.world, dist.rank, shuffle=True,
                                                                  seed=opts.seed)
    return Prepared(opts, strategy, spec, device, index, model, stages, plan, epochs, preprocess, out,
                    train_ds, val_ds, test_ds, settings, class_weights, sampler, dist)


def _train(opts: TrainOptions, reporter: Reporter, resume: bool = False) -> TrainResult:
    import torch

    from posetune.distributed import init_from_env, shutdown

    dist = init_from_env("cuda" if opts.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    try:
        return _train_ranked(opts, reporter if dist.is_main else Reporter(), resume, dist)
    finally:
        shutdown()


def _train_ranked(opts: TrainOptions, reporter: Reporter, resume: bool, dist) -> TrainResult:
    """The training run as one rank of ``dist`` sees it (rank 0 alone writes the run folder)."""
    import torch
    from torch.utils.data import Subset

    from posetune import strategies
    from posetune.data.pipeline import make_loader
    from posetune.engine import fit, load_checkpoint, predict_logits
    from posetune.evaluation import compute_metrics
    from posetune.features import extract_features, fit_head_on_features
    from posetune.fusion import optimize_for_inference
    from posetune.report import plot_confusion, plot_history, write_run_report
    from posetune.run import write_csv

    p = prepare(opts, reporter, write_config=dist.is_main, dist=dist)
    strategy, spec, device, index, model, stages, plan = p.strategy, p.spec, p.device, p.index, p.model, p.stages, p.plan
    epochs, preprocess, out, settings = p.epochs, p.preprocess, p.out, p.settings
    train_ds, val_ds, test_ds, class_weights, sampler, loader = (p.train_ds, p.val_ds, p.test_ds, p.class_weights,
                                                                 p.sampler, p.loader)

    t0 = time.perf_counter()
    if strategy.cached_features or strategy.probe_first:
        # The base does not change while the head fits: one forward pass per image, then the head
        # trains on the cached features (the linear strategy, and LP-FT's probe phase).
        augment, train_ds.augment = train_ds.augment, None
        advance = reporter.start("extract features", len(train_ds) + len(val_ds))
        # Extraction is inference on a frozen base: an optimised copy gives the same features, faster.
        net, _ = optimize_for_inference(model, (3, preprocess.size, preprocess.size))
        # Under torchrun each rank extracts its shard; the gathered features are the same on every rank.
        f_train, y_train = (dist.unshard(t) for t in extract_features(
            net, loader(Subset(train_ds, dist.shard(len(train_ds)))), device, preprocess, advance))
        f_val, y_val = (dist.unshard(t) for t in extract_features(
            net, loader(Subset(val_ds, dist.shard(len(val_ds)))), device, preprocess, advance))
        del net
        reporter.stop()
        train_ds.augment = augment
        head = model.get_classifier().to("cpu")
        probe_settings = settings if strategy.cached_features else dataclasses.replace(
            settings, epochs=strategies.PROBE_EPOCHS, mixup=0.0, cutmix=0.0)
        probe_lr = plan.lrs["head"] if strategy.cached_features else strategies.PROBE_LR
        if strategy.probe_first:
            reporter.info(f"LP-FT phase 1: linear probe on cached features ({probe_settings.epochs} epochs, lr {probe_lr:.0e})")
        result = fit_head_on_features(head, f_train, y_train, f_val, y_val, probe_lr, probe_settings,
                                      on_epoch=reporter.epoch, class_weights=class_weights)
        head.load_state_dict(result.best_state)
        head.to(device)
    if not strategy.cached_features:
        if strategy.probe_first:
            reporter.info("LP-FT phase 2: fine-tune from the probed head")
        checkpoint = out / CHECKPOINT
        state = load_checkpoint(checkpoint) if resume else None
        if state is not None:
            reporter.info(f"resuming {out.path} after epoch {state['loop']['epoch']}"
                          + (f" (step {state['loop']['step_in_epoch']})" if state["loop"]["step_in_epoch"] else ""))
        start_epoch = (state["loop"]["epoch"] + 1) if state else 1
        advance = reporter.start(f"epoch {start_epoch}", len(train_ds))

        def on_epoch(row: dict) -> None:
            nonlocal advance
            reporter.epoch(row)
            if row["epoch"] < epochs:
                advance = reporter.start(f"epoch {row['epoch'] + 1}", len(train_ds))

        with StopSignals() as stop:
            try:
                result = fit(model, stages, plan, make_loader(train_ds, opts.batch_size, True, device, opts.seed, sampler),
                             loader(Subset(val_ds, dist.shard(len(val_ds)))), preprocess, settings, device,
                             on_step=lambda n, loss, acc: (advance(n), reporter.set_extra(f"loss {loss:.3f} acc {acc:.3f}")),
                             on_epoch=on_epoch, class_weights=class_weights,
                             resume=state, checkpoint_path=checkpoint, stop_flag=stop, on_warning=reporter.warn,
                             dist=dist)
            except torch.cuda.OutOfMemoryError as exc:
                raise UsageError(f"out of GPU memory at batch size {opts.batch_size}; try --batch-size "
                                 f"{max(1, opts.batch_size // 2)} (or a smaller --image-size)") from exc
        reporter.stop()
        if result.stopped_early_by_signal:
            raise Interrupted(f"stopped by a signal; checkpoint saved. Resume with: posetune train --resume {out.path}")
        model.load_state_dict(result.best_state)
    train_seconds = time.perf_counter() - t0
    if not dist.is_main:
        return TrainResult(run=out.path, history=result.history, train_seconds=train_seconds)

    metrics = {}
    for split, ds in (("val", val_ds), ("test", test_ds)):
        if len(ds):
            logits, labels = predict_logits(model, loader(ds), device, preprocess)
            metrics[split] = compute_metrics(labels.tolist(), logits.argmax(1).tolist(), index.classes)
            metrics[split]["split"] = split

    meta = {
        "backbone": spec.name, "arch": spec.arch, "weight_source": spec.weight_source,
        "classes": index.classes, "preprocessing": preprocess.to_config(), "strategy": opts.strategy,
        "frozen_stages": plan.frozen_at(max(1, len(result.history))), "stage_lrs": plan.lrs, "best_epoch": result.best_epoch,
        "epochs_run": len(result.history), "train_seconds": round(train_seconds, 2),
        "train_images_per_s": round(result.images_seen / max(train_seconds, 1e-9), 2),
        "data": str(opts.data), "layout": index.layout, "device": str(device),
        "metrics": {s: {k: m[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "n")} for s, m in metrics.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    model.to("cpu")
    out.save_model(model, meta)
    write_csv(out / "metrics.csv", result.history)
    write_csv(out / "skipped.csv", [{"path": p, "reason": r} for p, r in index.skipped], header=["path", "reason"])
    out.write_json("metrics.json", metrics)
    plots = [plot_history(result.history, out / "training.png")]
    if "test" in metrics:
        plots.append(plot_confusion(metrics["test"], out / "confusion_test.png"))
    write_run_report(out.path, meta, plan.table(stages), result.history, metrics.get("test"), index.skipped, plots)
    return TrainResult(run=out.path, metrics=metrics, history=result.history, skipped=index.skipped,
                       train_seconds=train_seconds)


class Interrupted(PosetuneError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint (exit code 130, like Ctrl-C)."""

    exit_code = 130


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


def _write_config(out, opts: TrainOptions) -> None:
    import yaml

    from posetune.run import atomic_write_text

    atomic_write_text(out / "config.yaml", yaml.safe_dump(dataclasses.asdict(opts), sort_keys=False))
