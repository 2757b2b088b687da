"""What a backbone costs: parameters, GMACs (counted on the meta device, no compute) and batch-1 latency.

>>> costs = measure_costs(net, "resnet18", 5, 224, torch.device("cpu"))        # doctest: +SKIP
>>> sorted(costs)                                                              # doctest: +SKIP
['gmacs', 'latency_ms', 'params_m']
"""

from __future__ import annotations

import time

LATENCY_RUNS = 8  # timed calls at most, after one warm-up
LATENCY_SECONDS = 0.3  # stop early once this much was timed (and at least 3 runs)


def measure_costs(model, arch: str, num_classes: int, size: int, device) -> dict:
    """Parameters (M) and GMACs at ``size`` of ``arch`` (FLOPs / 2, counted on the meta device: no compute),
    and the batch-1 latency of ``model`` on ``device`` (median of timed runs after a warm-up)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from posetune.backbones import build_model

    with torch.device("meta"):
        meta_model = build_model(arch, num_classes).eval()
    with FlopCounterMode(display=False) as counter:
        meta_model(torch.empty(1, 3, size, size, device="meta"))
    return {"params_m": round(sum(p.numel() for p in meta_model.parameters()) / 1e6, 3),  # as built, before folding
            "gmacs": round(counter.get_total_flops() / 2e9, 4),
            "latency_ms": round(1000 * batch1_latency(model, size, device), 3)}


def batch1_latency(model, size: int, device) -> float:
    """Median seconds of one image through ``model`` (channels_last, autocast as predict runs it)."""
    import torch

    from posetune.devices import autocast

    x = torch.randn(1, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    times = []
    with torch.inference_mode(), autocast(device):
        for i in range(LATENCY_RUNS):
            t = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 1:  # the first call pays for allocation and kernel selection
                times.append(time.perf_counter() - t)
            if sum(times) > LATENCY_SECONDS and len(times) >= 3:
                break
    times.sort()
    return times[len(times) // 2]
