"""The options of each command: one dataclass per command, checked at the door.

The CLI and the Python API build the same dataclass, so a flag and its API keyword share a name
(tests/test_options.py guards it), and ``validate()`` checks every value before any file is read or
written, with a message that says what was expected, what was found, and which flag to change.
Each field declares its check and its bounds (:mod:`posetune.checks`).

This module holds the options that need the strategy and backbone registries: train, lr-find and
compare (it sits above strategies and backbones in the layer contract). The commands below it
declare theirs beside their code, re-exported here so that one import finds them all (see
:mod:`posetune.checks` for why):

========================  ============================================
``posetune evaluate``     :class:`EvaluateOptions` (posetune.evaluation)
``posetune predict``      :class:`PredictOptions` (posetune.predict.loading)
``posetune export``       :class:`ExportOptions` (posetune.exporting)
``posetune serve``        :class:`ServeOptions` (posetune.serve.options)
``posetune data check``   :class:`CheckOptions` (posetune.data.check)
``posetune data synth``   :class:`SynthOptions` (posetune.data.synth.dataset)
========================  ============================================
"""

from __future__ import annotations

from dataclasses import dataclass

from posetune.checks import (
    BATCH_SIZE,
    DATA,
    IMAGE_SIZE,
    LABEL_LEVELS,
    SEED,
    Bool,
    Choice,
    Float,
    Int,
    InvalidOption,
    Names,
    Options,
    OutputPath,
    Text,
    option,
    read_config,
)
from posetune.data.check import CheckOptions
from posetune.data.synth.dataset import SynthOptions
from posetune.devices import DEVICE, PRECISIONS
from posetune.evaluation import EvaluateOptions
from posetune.exporting import ExportOptions
from posetune.predict.loading import PredictOptions
from posetune.serve.options import ServeOptions
from posetune.tracking import LOG, check_trackers

__all__ = ["CheckOptions", "CompareOptions", "EvaluateOptions", "ExportOptions", "LrFindOptions", "PredictOptions",
           "ServeOptions", "SynthOptions", "TrainOptions", "read_config"]

DEFAULT_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
DEFAULT_STRATEGIES = ("linear", "partial", "full")
EPOCHS = Int(1, 10_000)
VAL_FRACTION = Float(0.0, 0.9)  # 0: no held-out val when DATA has none (no early stopping on it)
MLFLOW_URI = Text("an MLflow tracking URI like sqlite:///runs/mlflow.db or http://127.0.0.1:5000")


@dataclass
class TrainOptions(Options):
    """Every option of `posetune train` (the YAML config uses the same keys). None = the strategy's default.

    Bounds: image size 32..1024 px and batch size 1..4096 (beyond, one batch exhausts memory), learning
    rates in (0, 1] (AdamW diverges above), epochs 1..10000, seed 0..2**32-1 (numpy's range)."""

    data: str = option("", DATA, flag="DATA")
    backbone: str = option("efficientnet_lite0", Text("a timm model name, NAME@random or NAME@PATH"))
    strategy: str = option("partial", Text("a strategy name (linear, partial, full, ...)"))
    freeze_stages: int | None = option(None, Int(0, 1000))  # the backbone's own stage count is checked when built
    epochs: int | None = option(None, EPOCHS)
    lr: float | None = option(None, Float(0, 1, low_open=True))
    base_lr_ratio: float = option(0.3, Float(0, 1, low_open=True))  # = strategies.BASE_LR_RATIO
    layer_decay: float | None = option(None, Float(0, 1, low_open=True))
    bn: str = option("frozen", Choice("frozen", "train"))
    batch_size: int = option(32, Int(*BATCH_SIZE))
    image_size: int | None = option(None, Int(*IMAGE_SIZE), hint="omit it for the backbone's pretrained size")
    crop_pct: float | None = option(None, Float(0.3, 1.0))  # eval resize ratio; 1.0 keeps the whole image
    # the random train crop's smallest area share (1.0: no crop); 0.5 = data.pipeline.TrainAugment's default
    crop_scale: float = option(0.5, Float(0.05, 1.0))
    augment: str = option("light", Choice("light", "trivial"))  # data.pipeline.TrainAugment.POLICIES
    val_fraction: float = option(0.15, VAL_FRACTION)
    # once the run has fitted its temperature on val, train again on train + val for as many epochs (training.refit)
    refit: bool = option(False, Bool())
    patience: int = option(5, Int(0, 10_000))
    weight_decay: float = option(0.05, Float(0.0, 1.0))
    label_smoothing: float = option(0.1, Float(0.0, 1.0, high_open=True))
    out: str | None = option(None, OutputPath(folder=True))
    seed: int = option(0, Int(*SEED))
    device: str = option("auto", DEVICE)
    precision: str = option("auto", Choice(*PRECISIONS))  # autocast dtype (posetune.devices.amp_dtype)
    weights: str | None = option(None, Text("a .safetensors/.pth/.bin file"))
    pretrained: bool = option(True, Bool(), flag="pretrained (--no-pretrained)")
    label_level: int = option(6, Choice(*LABEL_LEVELS))
    freeze_epochs: int = option(1, Int(0, 10_000))  # gradual: epochs with only the head training
    unfreeze_every: int = option(1, Int(1, 10_000))  # gradual: epochs between two stages unfreezing
    ema: float | None = option(None, Float(0, 1, low_open=True, high_open=True), flag="--ema-decay")  # off when None
    balance: str = option("none", Choice("none", "weights", "sampler"))
    mixup: float = option(0.0, Float(0.0, 100.0))
    cutmix: float = option(0.0, Float(0.0, 100.0))
    cache: str = option("auto", Choice("auto", "memory", "disk"))  # disk: memory-mapped, reused by later runs
    cache_dir: str | None = option(None, OutputPath(folder=True))  # default ~/.cache/posetune/decoded ($POSETUNE_CACHE)
    log: list[str] | None = option(None, LOG)  # experiment trackers (posetune.tracking); None: none
    log_dir: str | None = option(None, OutputPath(folder=True))  # TensorBoard root; default RUN/tensorboard
    mlflow_uri: str | None = option(None, MLFLOW_URI)  # default $MLFLOW_TRACKING_URI, else <run's parent>/mlflow.db

    def check_together(self, label) -> None:
        """The strategy is registered, the backbone exists (close names suggested), a --weights file is there,
        the packages of the --log trackers are installed."""
        from posetune.backbones import parse_spec
        from posetune.strategies import STRATEGIES

        Choice(*STRATEGIES)(self.strategy, label("strategy"))
        check_trackers(self.log, self.log_dir, self.mlflow_uri, label)
        spec = parse_spec(self.backbone, weights=self.weights, pretrained=self.pretrained)
        if spec.uses_pose and (self.mixup or self.cutmix):
            raise InvalidOption(f"--mixup/--cutmix do not mix landmarks yet; drop them for --backbone {spec.name}")
        if spec.uses_pose and self.augment != "light":  # its shears and rotations move the body off its landmarks
            raise InvalidOption(f"--augment {self.augment} would move the image away from its landmarks; use "
                                f"--augment light for --backbone {spec.name}")


@dataclass
class LrFindOptions(TrainOptions):
    """`posetune lr-find`: the options of `train` (the model and data are built the same way) plus the sweep."""

    start_lr: float = option(1e-7, Float(0, 10, low_open=True))
    end_lr: float = option(1.0, Float(0, 10, low_open=True))
    steps: int = option(100, Int(10, 100_000))

    def check_together(self, label) -> None:
        if self.start_lr >= self.end_lr:
            raise InvalidOption(f"--start-lr must be below --end-lr, not {self.start_lr} >= {self.end_lr}")
        if self.log or self.log_dir or self.mlflow_uri:
            raise InvalidOption("lr-find logs to no experiment tracker (it writes lr_find.png); drop --log, "
                                "--log-dir and --mlflow-uri")
        if self.refit:
            raise InvalidOption("lr-find sweeps the LR once and trains no run to refit; drop refit")
        super().check_together(label)


@dataclass
class CompareOptions(Options):
    """Every option of `posetune compare` (same names as the flags)."""

    data: str = option("", DATA, flag="DATA")
    backbones: list[str] = option(check=Names("efficientnet_lite0,efficientnet_lite2,resnet18@random"),
                                  factory=lambda: list(DEFAULT_BACKBONES))
    strategies: list[str] = option(check=Names("linear,partial,full"), factory=lambda: list(DEFAULT_STRATEGIES))
    seeds: int = option(1, Int(1, 100))
    epochs: int | None = option(None, EPOCHS)
    top_k: int = option(2, Int(0, 100))  # 0: the stage-1 probes only
    budget_minutes: float | None = option(None, Float(0, 1e6, low_open=True))
    out: str | None = option(None, OutputPath(folder=True))
    image_size: int | None = option(None, Int(*IMAGE_SIZE), hint="omit it for each backbone's pretrained size")
    batch_size: int = option(32, Int(*BATCH_SIZE))
    device: str = option("auto", DEVICE)
    val_fraction: float = option(0.15, VAL_FRACTION)
    label_level: int = option(6, Choice(*LABEL_LEVELS))
    reliance_images: int = option(32, Int(0, 10_000))  # test images per cell for background reliance (masked data)
    log: list[str] | None = option(None, LOG)  # one child run / folder per cell (posetune.tracking)
    log_dir: str | None = option(None, OutputPath(folder=True))  # TensorBoard root; default OUT/tensorboard
    mlflow_uri: str | None = option(None, MLFLOW_URI)  # default $MLFLOW_TRACKING_URI, else <OUT's parent>/mlflow.db

    def check_together(self, label) -> None:
        from posetune.strategies import STRATEGIES

        for name in self.strategies:
            Choice(*STRATEGIES)(name, label("strategies"))
        check_trackers(self.log, self.log_dir, self.mlflow_uri, label)
        if any(spec.uses_pose for spec in self.backbone_specs()):  # unknown names fail here, with close names
            from posetune.pose import require_mediapipe

            require_mediapipe()  # `pose` / `NAME+pose`: the one-line install hint before OUT is made

    def backbone_specs(self) -> list:
        """The parsed backbone specs (posetune.backbones.BackboneSpec), in the order given."""
        from posetune.backbones import parse_spec

        return [parse_spec(b) for b in self.backbones]
