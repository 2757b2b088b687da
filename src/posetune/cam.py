"""Class-activation maps: where in an image a run's model finds its answer, and on synthetic data with figure
masks (`data synth --masks`) how much of that lies on the background instead of the figure.

The maps are HiResCAM (Draelos & Carin, 2020) through captum's LayerGradientXActivation: the gradient of the
class score times the activation, summed over channels, at each location of the last feature map. For a CNN
with an average-pooled linear head it equals Grad-CAM (the gradient is the same at every location); unlike
Grad-CAM it shows only locations that the score actually depends on. The layer is chosen the same way for
every timm model: for a CNN, the output of ``forward_features`` (the last stage, after any head conv); for a
ViT, the tokens entering the last block (after it, a class-token head sees no patch token), reshaped to the
patch grid. Gradients run through the model exactly as trained (``Classifier(..., optimize=False)``).

>>> clf = Classifier(RunDir("runs/yoga"), optimize=False)                     # doctest: +SKIP
>>> crops, maps, predicted = class_activation_maps(clf, ["photo.jpg"])      # doctest: +SKIP
>>> maps.shape, float(maps.max())                                           # doctest: +SKIP
((1, 224, 224), 1.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from posetune.errors import UsageError

METHOD = "hirescam"
MASK_THRESHOLD = 128  # a mask pixel (0..255, resized with the image) belongs to the figure from here up


class _FeatureTap(torch.nn.Module):
    """``model`` as forward_features -> ``tap`` -> forward_head: the tap's output is the feature map."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.tap = torch.nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.tap(self.model.forward_features(x)))


@dataclass
class CamTarget:
    """What captum differentiates (``forward``), the layer whose activations it weighs, and their layout."""

    forward: torch.nn.Module
    layer: torch.nn.Module
    layer_name: str
    layer_input: bool  # attribute to the layer's input (a ViT's last block), else its output
    channel_dim: int  # 1 for NCHW maps, -1 for NHWC maps and (N, tokens, C) tokens
    prefix_tokens: int | None  # tokens: the class/register tokens before the patches; None for a map


def cam_target(model: torch.nn.Module, size: int) -> CamTarget:
    """The CAM layer of any timm model, found from the shape of ``forward_features`` on a ``size`` input."""
    param = next(model.parameters())
    with torch.no_grad():
        features = model.forward_features(torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype))
    if features.ndim == 4:
        tap = _FeatureTap(model)
        nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"  # e.g. Swin
        return CamTarget(tap, tap.tap, "forward_features", False, -1 if nhwc else 1, None)
    blocks = getattr(model, "blocks", None)
    if features.ndim == 3 and isinstance(blocks, (torch.nn.Sequential, torch.nn.ModuleList)) and len(blocks):
        prefix = int(getattr(model, "num_prefix_tokens", 1 if getattr(model, "cls_token", None) is not None else 0))
        return CamTarget(model, blocks[-1], f"blocks.{len(blocks) - 1} (input)", True, -1, prefix)
    raise UsageError(f"{type(model).__name__}.forward_features gives a {tuple(features.shape)} tensor, neither a "
                     "feature map (N, C, H, W) nor ViT tokens with model.blocks; class-activation maps need one of "
                     "those; evaluate without --cam for this backbone")


def _to_grid(attr: torch.Tensor, target: CamTarget) -> torch.Tensor:
    """Attribution in the layer's layout -> N x h x w, summed over channels."""
    cam = attr.sum(target.channel_dim)
    if target.prefix_tokens is None:
        return cam
    patches = cam[:, target.prefix_tokens:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise UsageError(f"{patches.shape[1]} patch tokens do not form a square grid; class-activation maps need a "
                         "square input; evaluate without --cam for this backbone")
    return patches.reshape(len(cam), side, side)


def activation_maps(model: torch.nn.Module, batch: torch.Tensor, targets: Sequence[int] | None = None,
                    target: CamTarget | None = None) -> tuple[np.ndarray, np.ndarray]:
    """HiResCAM of ``model`` (eval mode, float) on a normalised N x 3 x S x S ``batch``: (maps, classes).

    ``maps`` is N x S x S float32, each map ReLU'd, upsampled to the input and scaled so its maximum is 1
    (all zeros where nothing speaks for the class); ``targets`` default to the predicted classes, returned.
    """
    from captum.attr import LayerGradientXActivation

    target = target or cam_target(model, batch.shape[-1])
    if targets is None:
        with torch.no_grad():
            targets = model(batch).argmax(1).tolist()
    targets = [int(t) for t in targets]
    explainer = LayerGradientXActivation(target.forward, target.layer)
    attr = explainer.attribute(batch, target=targets, attribute_to_layer_input=target.layer_input)
    cam = torch.relu(_to_grid(attr.detach().float(), target))
    cam = torch.nn.functional.interpolate(cam[:, None], size=batch.shape[-2:], mode="bilinear",
                                          align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return (cam / peak).cpu().numpy().astype(np.float32), np.asarray(targets, dtype=np.int64)


def class_activation_maps(clf, images: Sequence, targets: Sequence[int] | None = None,
                          batch_size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CAMs of a torch-engine run (load it with ``optimize=False``) on paths / PIL images / arrays, as the model
    sees them (the eval crop): (crops N x S x S x 3 uint8, maps N x S x S in [0, 1], target classes).
    Raises ImageError on an unreadable image (pass the images `predict` could read)."""
    pre = clf.preprocess
    target = cam_target(clf.model, pre.size)
    crops, maps, classes = [], [], []
    for start in range(0, len(images), batch_size):
        chunk = [pre.eval_crop(pre.decode(item)) for item in images[start:start + batch_size]]
        want = None if targets is None else targets[start:start + batch_size]
        m, c = activation_maps(clf.model, clf.normalize(torch.stack(chunk)), want, target)
        crops += [t.permute(1, 2, 0).numpy() for t in chunk]
        maps.append(m)
        classes.append(c)
    size = pre.size
    if not maps:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.float32), np.zeros(0, np.int64)
    return np.stack(crops), np.concatenate(maps), np.concatenate(classes)


def eval_mask(preprocess, path) -> np.ndarray:
    """A figure mask file (255 = figure) in the geometry of the eval crop: S x S bool."""
    mask = preprocess.eval_crop(preprocess.decode(path))[0]
    return mask.numpy() >= MASK_THRESHOLD


def background_share(cam: np.ndarray, mask: np.ndarray) -> float | None:
    """The share of a map's mass (cam >= 0) outside the figure ``mask`` (True on the figure), in [0, 1];
    None for an all-zero map, which points nowhere.

    >>> cam = np.ones((4, 4)); mask = np.zeros((4, 4), bool); mask[:2] = True
    >>> background_share(cam, mask), background_share(cam * mask, mask)
    (0.5, 0.0)
    """
    total = float(cam.sum())
    if total <= 0:
        return None
    return float(cam[~mask].sum()) / total


def figure_reliance(clf, data, paths: Sequence[str], targets: Sequence[int] | None = None,
                    batch_size: int = 16, progress=None, description: str = "background reliance") -> dict | None:
    """How much of ``clf``'s maps (of ``targets``, default the predicted classes) lies outside the figure, on the
    images of ``paths`` that have a figure mask in DATA ``data`` (a `data synth --masks` render): None when DATA
    has no masks, else ``background_reliance`` (the mean share of a map's mass outside the figure; None when
    no map points anywhere), ``background_reliance_n`` (the maps it averages) and ``background_area`` (the mean
    share of the image outside the figure: what a map with no preference for the figure scores).
    ``progress`` (a Reporter) shows a bar named ``description`` over the masked images."""
    from posetune.data.synth.dataset import has_masks, mask_path

    if not has_masks(data):
        return None
    pairs = []
    for i, path in enumerate(paths):
        try:
            mask = mask_path(data, path)
        except ValueError:  # a path outside DATA (a CSV manifest)
            continue
        if mask.is_file():
            pairs.append((i, mask))
    shares, areas = [], []
    on_step = progress.start(description, len(pairs)) if progress else None
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        want = None if targets is None else [targets[i] for i, _ in chunk]
        _, maps, _ = class_activation_maps(clf, [paths[i] for i, _ in chunk], want, batch_size)
        for cam, (_, mask_file) in zip(maps, chunk):
            mask = eval_mask(clf.preprocess, mask_file)
            share = background_share(cam, mask)
            if share is not None:
                shares.append(share)
                areas.append(1.0 - float(mask.mean()))
        if on_step:
            on_step(len(chunk))
    return {"background_reliance": float(np.mean(shares)) if shares else None,
            "background_reliance_n": len(shares), "background_area": float(np.mean(areas)) if areas else None}


def background_reliance(cams: np.ndarray, masks: np.ndarray) -> float | None:
    """The mean :func:`background_share` over images (all-zero maps left out); None when none is left."""
    shares = [s for s in (background_share(c, m) for c, m in zip(cams, masks)) if s is not None]
    return float(np.mean(shares)) if shares else None
