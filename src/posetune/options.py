"""The options of each command: one dataclass per command, checked at the door.

The CLI and the Python API build the same dataclass, so a flag and its API keyword share a name
(a test guards it), and every value is checked before any file is read or written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from posetune.errors import UsageError

DEFAULT_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
DEFAULT_STRATEGIES = ("linear", "partial", "full")


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
        return cls(**values).validate()

    def validate(self) -> TrainOptions:
        """Every value checked before any file is read or written."""
        if self.balance not in ("none", "weights", "sampler"):
            raise UsageError(f"--balance must be none, weights or sampler, not '{self.balance}'")
        if self.cache not in ("auto", "memory", "disk"):
            raise UsageError(f"--cache must be auto, memory or disk, not '{self.cache}'")
        return self


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
class CompareOptions:
    """Every option of `posetune compare` (same names as the flags)."""

    data: str = ""
    backbones: list[str] = field(default_factory=lambda: list(DEFAULT_BACKBONES))
    strategies: list[str] = field(default_factory=lambda: list(DEFAULT_STRATEGIES))
    seeds: int = 1
    epochs: int | None = None
    top_k: int = 2
    budget_minutes: float | None = None
    out: str | None = None
    image_size: int | None = None
    batch_size: int = 32
    device: str = "auto"
    val_fraction: float = 0.15
    label_level: int = 6

    def validate(self) -> list:
        """Check every option and backbone spec before any work; returns the parsed specs."""
        from posetune.backbones import parse_spec
        from posetune.strategies import get_strategy

        if not self.data:
            raise UsageError("no DATA given: pass a folder of class folders, split folders or a CSV manifest")
        self.backbones = list(dict.fromkeys(_split_list(self.backbones)))
        self.strategies = list(dict.fromkeys(_split_list(self.strategies)))
        if not self.backbones:
            raise UsageError("--backbones is empty; give e.g. efficientnet_lite0,efficientnet_lite2,resnet18@random")
        if not self.strategies:
            raise UsageError("--strategies is empty; give some of linear,partial,full")
        for name in self.strategies:
            get_strategy(name)
        for key, low in (("seeds", 1), ("top_k", 0), ("epochs", 1), ("batch_size", 1), ("image_size", 32)):
            value = getattr(self, key)
            if value is not None and value < low:
                raise UsageError(f"--{key.replace('_', '-')} must be at least {low}, not {value}")
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            raise UsageError(f"--budget-minutes must be positive, not {self.budget_minutes}")
        return [parse_spec(b) for b in self.backbones]  # unknown names fail here, with close names


def _split_list(value: str | Sequence[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else [x for v in value for x in str(v).split(",")]
    return [x.strip() for x in items if x.strip()]
