"""Inference-only graph surgery, for a model that will only ever see one input size.

1. Fold each BatchNorm that directly follows a convolution into that conv. In eval mode a BatchNorm is
   a per-channel affine map, so ``bn(conv(x))`` equals one conv with scaled weights and a bias; dropping
   the separate pass over every activation made efficientnet_lite0's batch inference ~1.25x faster on a
   2-core CPU. Which BN consumes which conv's output is read from one tiny traced forward pass (hooks),
   not from layer names, so any timm CNN works.
2. Make TensorFlow-style 'SAME' padding static (timm's Conv2dSame, in the tf_ EfficientNets): at a known
   input size the padding is known, and a symmetric pad plus a kernel one row/column taller (a leading
   zero) reads exactly the pixels TF's asymmetric pad does, without copying every input into a padded
   buffer first.

The result is checked against the original model before it is used; any mismatch keeps the original.
"""

from __future__ import annotations

import copy
import math
from functools import partial

import torch
import torch.nn.functional as nnf
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


class _ActAfterNorm(nn.Module):
    """What remains of a norm+act layer (timm's BatchNormAct2d) once its norm is folded away."""

    def __init__(self, drop: nn.Module, act: nn.Module):
        super().__init__()
        self.drop, self.act = drop, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def _replacement(bn: nn.BatchNorm2d) -> nn.Module | None:
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if isinstance(getattr(bn, "act", None), nn.Module) and isinstance(getattr(bn, "drop", None), nn.Module):
        return _ActAfterNorm(bn.drop, bn.act)  # timm's BatchNormAct2d: bn -> drop -> act
    return None  # an unknown subclass may do more than normalise: leave it alone


def _traced_pass(model: nn.Module, sample: torch.Tensor, hooks: list) -> None:
    """One forward pass of ``sample`` with ``hooks`` registered; they are removed whatever happens."""
    try:
        with torch.inference_mode():
            model(sample)
    finally:
        for h in hooks:
            h.remove()


def _conv_bn_pairs(model: nn.Module, sample: torch.Tensor) -> list[tuple[str, str]]:
    """(conv name, bn name) where the BN's input is exactly the conv's output tensor."""
    names = {m: n for n, m in model.named_modules()}
    last_output: dict[int, str] = {}  # id(output tensor) -> conv name
    pairs: list[tuple[str, str]] = []
    keep_alive: list[torch.Tensor] = []  # ids stay unique while the pass runs

    def on_conv(module, _inputs, output):
        keep_alive.append(output)
        last_output[id(output)] = names[module]

    def on_bn(module, inputs):
        conv = last_output.pop(id(inputs[0]), None)
        if conv is not None:
            pairs.append((conv, names[module]))

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(on_conv))
        elif isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_pre_hook(on_bn))
    _traced_pass(model, sample, hooks)
    counts: dict[str, int] = {}
    for conv, _ in pairs:  # a conv module called twice (shared weights) feeding two BNs cannot be folded
        counts[conv] = counts.get(conv, 0) + 1
    return [(c, b) for c, b in pairs if counts[c] == 1]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _conv_input_sizes(model: nn.Module, sample: torch.Tensor, kind: type) -> dict[str, tuple[int, int]]:
    """Spatial input size of every ``kind`` module, from one traced pass."""
    names = {m: n for n, m in model.named_modules()}
    sizes: dict[str, tuple[int, int]] = {}

    def record(module, inputs):
        sizes[names[module]] = tuple(inputs[0].shape[-2:])

    _traced_pass(model, sample, [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, kind)])
    return sizes


def _static_same_conv(conv: nn.Conv2d, size: tuple[int, int]) -> nn.Conv2d | None:
    """The plain nn.Conv2d that computes timm's Conv2dSame at input ``size`` (None: dilated, left alone)."""
    if conv.dilation != (1, 1):
        return None
    pads, shifts = [], []
    for i, k, s in zip(size, conv.kernel_size, conv.stride):
        total = max((math.ceil(i / s) - 1) * s + k - i, 0)
        low, high = total // 2, total - total // 2  # TF puts the odd pixel at the end
        pads.append(high)
        shifts.append(high - low)  # 1: a leading zero row/column absorbs the extra pixel at the start
    weight = nnf.pad(conv.weight.detach(), (shifts[1], 0, shifts[0], 0))
    static = nn.Conv2d(conv.in_channels, conv.out_channels, tuple(weight.shape[-2:]), conv.stride, tuple(pads),
                       groups=conv.groups, bias=conv.bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        static.weight.copy_(weight)
        if conv.bias is not None:
            static.bias.copy_(conv.bias)
    channels_last = conv.weight.is_contiguous(memory_format=torch.channels_last)
    return static.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def optimize_for_inference(model: nn.Module, input_size: tuple[int, int, int], atol: float = 1e-4,
                           static_padding: bool = True) -> tuple[nn.Module, dict[str, int]]:
    """An eval-mode copy of ``model`` for inputs of exactly ``input_size`` (C, H, W): conv->BN pairs folded
    and, with ``static_padding``, timm's dynamic 'SAME' convs made static. Returns (model, what changed).
    The copy keeps the model's device and memory layout.

    Returns ``model`` itself (nothing changed) when there is nothing to do or the copy's outputs differ by
    more than ``atol`` on a random input.
    """
    model = model.eval()
    unchanged = {"batchnorms_folded": 0, "same_pads_made_static": 0}
    device = next(model.parameters()).device
    sample = torch.randn(1, *input_size, device=device)
    pairs = [(c, b) for c, b in _conv_bn_pairs(model, sample)
             if model.get_submodule(b).track_running_stats and _replacement(model.get_submodule(b)) is not None]
    same_convs: dict[str, tuple[int, int]] = {}
    if static_padding:
        try:
            from timm.layers import Conv2dSame
        except ImportError:  # an older timm: nothing of this kind to convert
            Conv2dSame = None
        if Conv2dSame is not None:
            same_convs = _conv_input_sizes(model, sample, Conv2dSame)
    if not pairs and not same_convs:
        return model, unchanged
    optimized = copy.deepcopy(model)
    for conv_name, bn_name in pairs:
        bn = optimized.get_submodule(bn_name)
        _set(optimized, conv_name, fuse_conv_bn_eval(optimized.get_submodule(conv_name), bn))
        _set(optimized, bn_name, _replacement(bn))
    made_static = 0
    for name, size in same_convs.items():
        static = _static_same_conv(optimized.get_submodule(name), size)
        if static is not None:
            _set(optimized, name, static)
            made_static += 1
    optimized.eval()
    with torch.inference_mode():
        ok = torch.allclose(model(sample), optimized(sample), atol=atol, rtol=1e-3)
    if not ok:
        return model, unchanged
    if made_static:  # static padding is right for this input size only: refuse others instead of erring silently
        optimized.register_forward_pre_hook(partial(_require_size, tuple(input_size[-2:])))
    return optimized, {"batchnorms_folded": len(pairs), "same_pads_made_static": made_static}


def _require_size(size: tuple[int, int], _module, inputs) -> None:
    if tuple(inputs[0].shape[-2:]) != size:
        raise ValueError(f"this model was optimised for {size[0]}x{size[1]} inputs (static padding), not "
                         f"{inputs[0].shape[-2]}x{inputs[0].shape[-1]}; load the run with optimize=False for other sizes")


def inference_copy(model: nn.Module, kind: str, size: int) -> tuple[nn.Module, dict[str, int]]:
    """The model as `posetune predict` runs it, for scoring: ``image`` -> :func:`optimize_for_inference`'s
    copy; ``fusion`` -> a shallow copy whose CNN is that copy (the head is the model's own; the model keeps
    its CNN); ``pose`` -> the model itself (no convolutions). Returns (model, what changed)."""
    if kind == "image":
        return optimize_for_inference(model, (3, size, size))
    if kind == "fusion":
        cnn, changes = optimize_for_inference(model.cnn, (3, size, size))
        scoring = copy.copy(model)
        scoring._modules = dict(model._modules)  # copy.copy shares the dict: swap the CNN in a new one
        scoring.cnn = cnn
        return scoring.eval(), changes
    return model.eval(), {"batchnorms_folded": 0, "same_pads_made_static": 0}
