"""What a backbone costs: parameters, GMACs (counted on the meta device, no compute) and batch-1 latency.

For the landmark kinds (`pose`, `NAME+pose`) the per-image cost also holds BlazePose's landmark extraction,
measured on the sweep's own images (:func:`landmark_ms`): it is added to the batch-1 latency, and the counts
are those of the whole model (fusion: the CNN + the landmark embedding + the head; pose: the MLP).

>>> costs = measure_costs(net, "resnet18", 5, 224, torch.device("cpu"))        # doctest: +SKIP
>>> sorted(costs)                                                              # doctest: +SKIP
['gmacs', 'landmark_ms', 'latency_ms', 'params_m']
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

LATENCY_RUNS = 8  # timed calls at most, after one warm-up
LATENCY_SECONDS = 0.3  # stop early once this much was timed (and at least 3 runs)
LANDMARK_TIMING_IMAGES = 5  # images BlazePose is timed on, after one warm-up image
TRAIN_TIMING_STEPS = 2  # timed training steps, after one untimed step


def measure_costs(model, arch: str, num_classes: int, size: int, device, kind: str = "image", pose_dim: int = 0,
                  landmark_ms: float | None = None) -> dict:
    """Parameters (M) and GMACs at ``size`` of ``arch`` (FLOPs / 2, counted on the meta device: no compute),
    and the batch-1 latency of ``model`` on ``device`` (median of timed runs after a warm-up).

    ``kind`` pose / fusion: ``model`` is a callable of (images, landmark features), the counts are of the
    whole pose / fusion model, and ``landmark_ms`` (BlazePose per image) is added to the latency."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from posetune.backbones import BackboneSpec, build_spec_model

    with torch.device("meta"):
        meta_model = build_spec_model(BackboneSpec(arch, arch, None, kind), num_classes, pose_dim).eval()
    with FlopCounterMode(display=False) as counter:
        meta_model(*_inputs(kind, size, pose_dim, "meta"))
    latency_ms = 1000 * batch1_latency(model, size, device, kind, pose_dim)
    return {"params_m": round(sum(p.numel() for p in meta_model.parameters()) / 1e6, 3),  # as built, before folding
            "gmacs": round(counter.get_total_flops() / 2e9, 4),
            "latency_ms": round(latency_ms + (landmark_ms or 0.0), 3),
            "landmark_ms": None if landmark_ms is None else round(landmark_ms, 3)}


def _inputs(kind: str, size: int, pose_dim: int, device) -> tuple:
    """One image (channels_last) and/or one row of landmark features, as the model of ``kind`` takes them."""
    import torch

    image = torch.randn(1, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    if kind == "image":
        return (image,)
    pose = torch.randn(1, pose_dim, device=device)
    return (None if kind == "pose" else image, pose)


def batch1_latency(model: Callable, size: int, device, kind: str = "image", pose_dim: int = 0) -> float:
    """Median seconds of one image through ``model`` (channels_last, autocast as predict runs it)."""
    import torch

    from posetune.devices import autocast

    inputs = _inputs(kind, size, pose_dim, device)
    times = []
    with torch.inference_mode(), autocast(device):
        for i in range(LATENCY_RUNS):
            t = time.perf_counter()
            model(*inputs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 1:  # the first call pays for allocation and kernel selection
                times.append(time.perf_counter() - t)
            if sum(times) > LATENCY_SECONDS and len(times) >= 3:
                break
    return _median(times)


def train_images_per_s(arch: str, num_classes: int, size: int, batch: int, device, strategy: str = "partial",
                       steps: int = TRAIN_TIMING_STEPS, precision: str = "auto") -> float:
    """Images/s of one training step as `train` runs it (forward, backward and AdamW with ``strategy``'s frozen
    stages, channels_last, autocast at ``precision``) on a random batch, after one untimed step: what an epoch
    pays per train image. Random weights (the cost is the architecture's); the global RNGs are left as they were.
    `--time-budget` plans with it: 3 forward passes of the probe (TRAIN_COST_PER_FORWARD) guessed 1.6-2x too
    long on a 2-core CPU, which planned smaller images and fewer epochs than fit."""
    import torch

    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # dropout and the init draw from them; the run's seed stays the user's
        torch.manual_seed(0)
        return _timed_train_steps(arch, num_classes, size, batch, device, strategy, steps, precision)


def _timed_train_steps(arch: str, num_classes: int, size: int, batch: int, device, strategy: str, steps: int,
                       precision: str) -> float:
    import torch
    import torch.nn.functional as nnf

    from posetune.backbones import build_model, model_stages
    from posetune.devices import autocast
    from posetune.strategies import apply_freeze, make_plan, set_train_mode
    from posetune.training.loop import make_optimizer

    model = build_model(arch, num_classes)
    stages = model_stages(model)
    plan = make_plan(strategy, stages)
    apply_freeze(model, stages, plan.frozen)
    set_train_mode(model, stages, plan.frozen, plan.bn)
    model = model.to(device=device, memory_format=torch.channels_last)
    optimizer = make_optimizer([{"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-4,
                                 "weight_decay": 0.05}], device)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step() -> None:
        with autocast(device, precision):
            loss = nnf.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with torch.enable_grad():
        step()  # builds the kernels and the optimizer's state
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
    return batch * steps / max(time.perf_counter() - t, 1e-9)


def landmark_ms(paths: Sequence[str]) -> float:
    """Milliseconds BlazePose takes per image on these files (full size, as training and predict see them):
    the median over up to LANDMARK_TIMING_IMAGES images after one warm-up (the shared detector's start)."""
    from posetune.pose.inputs import full_rgb
    from posetune.pose.landmarks import extract_landmarks, require_mediapipe

    require_mediapipe()
    paths = list(paths)[: LANDMARK_TIMING_IMAGES + 1]
    if not paths:
        return 0.0
    extract_landmarks(full_rgb(paths[0]))
    times = []
    for path in paths[1:] or paths:
        rgb = full_rgb(path)  # decoding is not BlazePose's time
        t = time.perf_counter()
        extract_landmarks(rgb)
        times.append(time.perf_counter() - t)
    return 1000 * _median(times)


def _median(times: list[float]) -> float:
    times = sorted(times)
    return times[len(times) // 2]
