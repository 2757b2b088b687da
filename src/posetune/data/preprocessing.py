"""The preprocessing contract of a run (model.json "preprocessing"), free of torch.

Both engines build on it: ``data.pipeline.Preprocess`` (torch tensors) and
``predict.onnx_engine.ImageTransform`` (numpy, for deployments without torch). :meth:`PreprocessConfig.pixels`
is the one decoder of a path, PIL image or array that every engine uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from posetune.data.images import load_image, resize_short_side, to_rgb


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

    def pixels(self, item) -> np.ndarray:
        """A path, PIL image or HxWx3 uint8 array -> HxWx3 uint8 RGB, short side resized (raises ImageError).

        Paths decode through :func:`load_image` (EXIF, any mode, JPEG DCT scaling to the short side)."""
        if isinstance(item, (str, Path)):
            img = load_image(item, min_side=self.short_side)
        elif isinstance(item, Image.Image):
            img = to_rgb(item)
        else:
            img = to_rgb(Image.fromarray(np.asarray(item, dtype=np.uint8)))
        return np.asarray(resize_short_side(img, self.short_side, self.interpolation), dtype=np.uint8)
