"""The preprocessing contract of a run (model.json "preprocessing"), free of torch.

Both engines build on it: ``data.pipeline.Preprocess`` (torch tensors) and
``onnx_engine.ImageTransform`` (numpy, for deployments without torch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PreprocessConfig:
    """Input size, normalisation and resize policy, from the backbone's pretrained config."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    crop_pct: float = 0.875

    @classmethod
    def from_config(cls, cfg: dict):
        return cls(size=int(cfg["input_size"][-1]), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                   interpolation=cfg.get("interpolation", "bicubic"), crop_pct=float(cfg.get("crop_pct", 0.875)))

    def to_config(self) -> dict:
        return {"input_size": [3, self.size, self.size], "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "crop_pct": self.crop_pct}

    @property
    def short_side(self) -> int:
        """Resize target before the center crop, as timm's eval transform does."""
        return int(math.floor(self.size / self.crop_pct))
