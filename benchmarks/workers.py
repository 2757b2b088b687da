"""Benchmark measurements, each in a fresh interpreter: `python benchmarks/workers.py KIND SPEC_JSON`.

A fresh process per measurement leaves no allocator state, threads or imported modules to the next one
(train-vs-bare runs posetune's epochs and bare blocks in one process on purpose: the ratio within it).
The kinds: the bare model (training step, inference), the torchvision-tutorial loop, decoding every epoch vs
the decoded cache, colour jitter per image vs per batch, and decode alone. common.worker(KIND, **spec)
starts one; the child prints its result as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path


def planned_model(backbone: str, strategy: str, n_classes: int = 5, freeze_stages: int | None = None):
    """The backbone with an n-class head, frozen and in train mode as posetune's plan for `strategy` sets it."""
    from posetune import backbones, strategies

    spec = backbones.parse_spec(backbone)
    model, _ = backbones.create_backbone(spec, num_classes=n_classes)
    stages = backbones.model_stages(model)
    plan = strategies.make_plan(strategy, stages, freeze_stages=freeze_stages)
    strategies.apply_freeze(model, stages, plan.frozen)
    strategies.set_train_mode(model, stages, plan.frozen, plan.bn)
    return model


def bare_steps(spec: dict) -> dict:
    """layout -> a function running forward + backward + AdamW on one in-memory batch of the planned model
    (the same frozen stages as posetune's plan), in contiguous NCHW and channels_last. ``device`` (default
    cpu) and ``precision`` (default fp32; else autocast, and a GradScaler for fp16, as posetune's Trainer
    steps) for bench_gpu.py."""
    import torch
    import torch.nn.functional as nnf

    from posetune.devices import autocast, grad_scaler
    from posetune.training.loop import make_optimizer

    b, s = spec["batch"], spec["size"]
    device, precision = torch.device(spec.get("device", "cpu")), spec.get("precision", "fp32")
    steps = {}
    for layout in ("contiguous", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        torch.manual_seed(0)
        model = planned_model(spec["backbone"], spec["strategy"]).to(device=device, memory_format=fmt)
        # posetune's own optimizer (foreach kernels): the default per-tensor loop on a CPU is slower, and a
        # slower bare step would flatter posetune
        opt = make_optimizer([{"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-4,
                               "weight_decay": 0.05}], device)
        x = torch.randn(b, 3, s, s, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, 5, (b,), device=device)
        scaler = grad_scaler(device, precision)

        def step(model=model, opt=opt, x=x, y=y, scaler=scaler):
            if precision == "fp32":  # the CPU cases: no autocast context at all
                loss = nnf.cross_entropy(model(x), y)
            else:
                with autocast(device, precision):
                    loss = nnf.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()

        steps[layout] = step
    return steps


def bare_rates(steps: dict, spec: dict) -> dict:
    """layout -> images/s of ``spec["steps"]`` timed steps after ``spec["warmup"]`` untimed ones."""
    import torch

    sync = torch.cuda.synchronize if torch.device(spec.get("device") or "cpu").type == "cuda" else (lambda: None)
    rates = {}
    with torch.enable_grad():
        for layout, step in steps.items():
            for _ in range(spec.get("warmup", 3)):
                step()
            sync()
            t0 = time.perf_counter()
            for _ in range(spec.get("steps", 10)):
                step()
            sync()
            rates[layout] = round(spec["batch"] * spec.get("steps", 10) / (time.perf_counter() - t0), 2)
    return rates


def worker_bare_train(spec: dict) -> dict:
    """The bare model's training step in both memory layouts (:func:`bare_steps`); the faster one is the
    compute limit."""
    import torch

    from posetune.runtime import tune_allocator

    tuned = tune_allocator()
    rates = bare_rates(bare_steps(spec), spec)
    return {"images_per_s": max(rates.values()), "images_per_s_by_layout": rates,
            "allocator_tuned": tuned, "threads": torch.get_num_threads(), "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt}


def worker_train_vs_bare(spec: dict) -> dict:
    """One `posetune.train` run (the API the CLI calls, CPU) with a block of bare training steps before its
    first epoch and after every epoch, in this one process and allocator. Returns each epoch's images/s
    (timed around Trainer.train_epoch alone: the blocks run outside it, before validation; metrics.csv's
    train_seconds of this run include them) and each block's; sections/train.py turns them into ratios."""
    import tempfile

    import posetune
    from posetune.runtime import tune_allocator
    from posetune.training import loop

    tune_allocator()  # before the bare models allocate, as worker_bare_train does (posetune.train does it too)
    steps = bare_steps({**spec, "device": "cpu"})
    blocks: list[dict] = []  # bare rates per layout, before epoch 1 and after every epoch
    epochs: list[tuple[int, float]] = []  # (images, seconds) per epoch
    original = loop.Trainer.train_epoch

    def train_epoch(self, *args, **kwargs):
        if not blocks:
            blocks.append(bare_rates(steps, spec))
        t0 = time.perf_counter()
        row = original(self, *args, **kwargs)
        epochs.append((row["images"], time.perf_counter() - t0))
        blocks.append(bare_rates(steps, spec))
        return row

    loop.Trainer.train_epoch = train_epoch
    try:
        with tempfile.TemporaryDirectory(prefix="posetune-train-vs-bare-") as tmp:
            posetune.train(spec["data"], out=str(Path(tmp) / "run"), backbone=spec["backbone"], strategy=spec["strategy"],
                           image_size=spec["size"], epochs=spec["epochs"], batch_size=spec["batch"], patience=0, device="cpu")
    finally:
        loop.Trainer.train_epoch = original
    return {"epoch_images_per_s": [round(n / s, 2) for n, s in epochs], "bare_images_per_s": [max(b.values()) for b in blocks],
            "bare_images_per_s_by_layout": blocks,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def worker_bare_infer(spec: dict) -> dict:
    """Inference on one in-memory batch in both memory layouts; the faster one is the compute limit."""
    import torch

    from posetune.runtime import tune_allocator

    tune_allocator()
    b, s = spec["batch"], spec["size"]
    rates = {}
    for layout in ("contiguous", "channels_last"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        model = planned_model(spec["backbone"], "linear").eval().to(memory_format=fmt)
        x = torch.randn(b, 3, s, s).contiguous(memory_format=fmt)
        steps = spec.get("steps", 6)
        with torch.inference_mode():
            for _ in range(2):
                model(x)
            t0 = time.perf_counter()
            for _ in range(steps):
                model(x)
        rates[layout] = round(b * steps / (time.perf_counter() - t0), 2)
    # What posetune's torch engine runs (fusion.optimize_for_inference, channels_last): not the bare figure.
    from posetune.inference import optimize_for_inference

    optimized, _ = optimize_for_inference(model, (3, s, s))
    with torch.inference_mode():
        optimized(x)
        t0 = time.perf_counter()
        for _ in range(steps):
            optimized(x)
    return {"images_per_s": max(rates.values()), "images_per_s_by_layout": rates,
            "images_per_s_optimized": round(b * steps / (time.perf_counter() - t0), 2)}


def tutorial_loaders(spec: dict) -> tuple[dict, dict, int]:
    """(ImageFolder per split, DataLoader per split, workers) as the torchvision fine-tuning tutorial builds
    them from DATA/TRAIN, VAL, TEST: PIL decode and transforms every epoch."""
    import torch
    from torchvision import datasets, transforms

    size, batch, mean, std = spec["size"], spec["batch"], spec["mean"], spec["std"]
    tf = {"train": transforms.Compose([transforms.RandomResizedCrop(size, scale=(0.5, 1.0)), transforms.RandomHorizontalFlip(),
                                       transforms.ToTensor(), transforms.Normalize(mean, std)]),
          "val": transforms.Compose([transforms.Resize(int(size / 0.875)), transforms.CenterCrop(size),
                                     transforms.ToTensor(), transforms.Normalize(mean, std)])}
    data = Path(spec["data"])
    sets = {"train": datasets.ImageFolder(data / "TRAIN", tf["train"]), "val": datasets.ImageFolder(data / "VAL", tf["val"]),
            "test": datasets.ImageFolder(data / "TEST", tf["val"])}
    workers = spec.get("workers", os.cpu_count() or 1)
    loaders = {k: torch.utils.data.DataLoader(v, batch_size=batch, shuffle=k == "train", num_workers=workers,
                                              persistent_workers=False) for k, v in sets.items()}
    return sets, loaders, workers


def worker_plain_loop(spec: dict) -> dict:
    """The loop a user writes from the torchvision fine-tuning tutorial: ImageFolder + PIL decode and
    transforms every epoch, DataLoader workers, train + val phases per epoch; same model and optimizer."""
    import math

    import torch
    import torch.nn.functional as nnf

    torch.manual_seed(spec.get("seed", 0))
    batch, epochs = spec["batch"], spec["epochs"]
    sets, loaders, workers = tutorial_loaders(spec)
    model = planned_model(spec["backbone"], spec["strategy"], len(sets["train"].classes), spec.get("freeze_stages"))
    head = set(n for n, _ in model.get_classifier().named_parameters())
    head_params = [p for n, p in model.get_classifier().named_parameters() if n in head]
    ids = {id(p) for p in head_params}
    base = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    opt = torch.optim.AdamW([{"params": head_params, "lr": spec["lr"]}, {"params": base, "lr": spec["lr"] * 0.1}],
                            weight_decay=0.05)
    steps = epochs * math.ceil(len(sets["train"]) / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(1.0, i / steps))))
    epoch_seconds = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        for x, y in loaders["train"]:
            loss = nnf.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            for x, _ in loaders["val"]:
                model(x)
        epoch_seconds.append(round(time.perf_counter() - t0, 3))
    return {"epoch_seconds": epoch_seconds, "total_seconds": round(sum(epoch_seconds), 2),
            "test_accuracy": loader_accuracy(model, loaders["test"]), "workers": workers}


def loader_accuracy(model, loader) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) over ``loader``'s (images, labels)."""
    import torch

    correct = n = 0
    model.eval()
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(1) == y).sum().item()
            n += len(y)
    return correct / max(1, n)


def worker_decode_epochs(spec: dict) -> dict:
    """The same training step fed by posetune's decoded-image cache vs decoding (PIL open + resize) per
    sample every epoch; same TrainAugment, same loader (make_loader), same model."""
    import torch
    import torch.nn.functional as nnf
    from PIL import Image

    from posetune import backbones
    from posetune.data.layouts import discover
    from posetune.data.pipeline import DecodedDataset, Preprocess, TrainAugment, decode_all, make_loader
    from posetune.devices import Normalizer
    from posetune.runtime import tune_allocator

    tune_allocator()
    torch.manual_seed(0)
    model = planned_model(spec["backbone"], spec["strategy"])
    pre = Preprocess.from_config(backbones.data_config(model, spec["size"]))
    samples = discover(spec["data"]).split("train")
    paths, labels = [s.path for s in samples], [s.label for s in samples]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    norm = Normalizer(pre, torch.device("cpu"))

    class DecodeEveryEpoch(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            with Image.open(paths[i]) as img:
                img = img.convert("RGB")
                w, h = img.size
                k = pre.short_side / min(w, h)
                img = img.resize((round(w * k), round(h * k)), Image.BICUBIC)
            t = torch.from_numpy(__import__("numpy").asarray(img).copy()).permute(2, 0, 1)
            return augment(t), labels[i]

    augment = TrainAugment(pre.size)

    def epoch(loader) -> float:
        t0 = time.perf_counter()
        for x, y in loader:
            loss = nnf.cross_entropy(model(norm(x)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    t0 = time.perf_counter()
    images, _ = decode_all(paths, pre)
    decode_seconds = time.perf_counter() - t0
    cached = make_loader(DecodedDataset(images, labels, pre, augment), spec["batch"], True, torch.device("cpu"))
    lazy = make_loader(DecodeEveryEpoch(), spec["batch"], True, torch.device("cpu"))
    epoch(cached)  # warm-up
    with_cache, without = [], []
    for _ in range(spec["epochs"]):  # interleaved: both see the same background load
        with_cache.append(round(epoch(cached), 3))
        without.append(round(epoch(lazy), 3))
    return {"images": len(paths), "decode_once_seconds": round(decode_seconds, 3), "epoch_seconds_with_cache": with_cache,
            "epoch_seconds_decode_every_epoch": without}


def worker_augment_ab(spec: dict) -> dict:
    """Training epochs from the decoded cache with colour jitter per image (torchvision ColorJitter in the
    sample transform, as posetune did before) vs on the batch (BatchColorJitter in the step); interleaved."""
    import torch
    import torch.nn.functional as nnf
    from torchvision.transforms import v2

    from posetune import backbones
    from posetune.data.pipeline import DecodedDataset, Preprocess, TrainAugment, make_loader
    from posetune.devices import Normalizer
    from posetune.runtime import tune_allocator

    tune_allocator()
    torch.manual_seed(0)
    model = planned_model(spec["backbone"], spec["strategy"])
    pre = Preprocess.from_config(backbones.data_config(model, spec["size"]))
    n, short = spec["images"], pre.short_side
    images = [torch.randint(0, 256, (3, short, short * 4 // 3), dtype=torch.uint8) for _ in range(n)]
    labels = [i % 5 for i in range(n)]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    norm = Normalizer(pre, torch.device("cpu"))
    batched = TrainAugment(pre.size)
    # posetune's sample transform before the batch jitter: crop, flip and ColorJitter composed per image.
    per_image = v2.Compose([v2.RandomResizedCrop(pre.size, scale=(0.5, 1.0), antialias=True),
                            v2.RandomHorizontalFlip(), v2.ColorJitter(0.2, 0.2, 0.2)])

    def epoch(augment, color) -> float:
        loader = make_loader(DecodedDataset(images, labels, pre, augment), spec["batch"], True, torch.device("cpu"))
        t0 = time.perf_counter()
        for x, y in loader:
            loss = nnf.cross_entropy(model(norm(x, color)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    epoch(batched, batched.batch_color)
    before, after = [], []
    for _ in range(spec["epochs"]):
        before.append(round(epoch(per_image, None), 3))
        after.append(round(epoch(batched, batched.batch_color), 3))
    return {"images": n, "epoch_seconds_per_image_jitter": before, "epoch_seconds_batch_jitter": after}


def worker_decode_rate(spec: dict) -> dict:
    """posetune's decode (JPEG draft + resize) alone, in predict's 4 threads: images/s."""
    from posetune import backbones
    from posetune.data.pipeline import Preprocess
    from posetune.predict.prediction import decoded

    pre = Preprocess.from_config(backbones.data_config(planned_model(spec["backbone"], "linear"), spec["size"]))
    paths = sorted(str(p) for p in Path(spec["data"]).rglob("*.jpg"))
    for _ in decoded(paths[:8], pre.decode):
        pass
    t0 = time.perf_counter()
    for _ in decoded(paths, pre.decode):
        pass
    return {"images_per_s": round(len(paths) / (time.perf_counter() - t0), 2)}


WORKERS = {"decode-rate": worker_decode_rate, "augment-ab": worker_augment_ab, "bare-train": worker_bare_train,
           "train-vs-bare": worker_train_vs_bare, "bare-infer": worker_bare_infer, "plain-loop": worker_plain_loop,
           "decode-epochs": worker_decode_epochs}


def main(argv: list[str] | None = None) -> int:
    from peers import PEER_WORKERS  # fastai / Lightning: imported by their workers only, when installed

    WORKERS.update(PEER_WORKERS)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=sorted(WORKERS))
    ap.add_argument("spec", help="the worker's settings as a JSON object")
    args = ap.parse_args(argv)
    print(json.dumps(WORKERS[args.kind](json.loads(args.spec))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
