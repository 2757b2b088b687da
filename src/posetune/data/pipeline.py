"""Decoded-image cache and transforms: samples -> uint8 pixels decoded once -> model-ready tensors.

Decoding large JPEGs every epoch is the main cost on a CPU with a small backbone, so each image is
decoded and resized once (short side a little above the training size, aspect kept) and every
epoch augments from those uint8 pixels.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from posetune.data.images import ImageError, map_threaded
from posetune.data.preprocessing import PreprocessConfig


@dataclass(frozen=True)
class Preprocess(PreprocessConfig):
    """The model's preprocessing (from its pretrained config; saved in model.json), on torch tensors."""

    def decode(self, item) -> torch.Tensor:
        """A path, PIL image or array -> uint8 CHW tensor resized to ``short_side`` (raises ImageError).

        The tensor is a CHW view of the HWC pixels (as the disk cache's are): torchvision's uint8 resize
        reads that layout natively: the training crops at 224 px took 17 -> 10 ms per 32 images, one thread
        (benchmarks/bench_batch_prep.py, 6a6a783 -> b43fc1f)."""
        return torch.from_numpy(self.pixels(item).copy()).permute(2, 0, 1)

    def eval_crop(self, img: torch.Tensor) -> torch.Tensor:
        return F.center_crop(img, [self.size, self.size])

    def tta_views(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Test-time augmentation: centre + four corner crops, each also mirrored (10 views)."""
        crops = list(F.five_crop(img, [self.size, self.size]))
        crops = [crops[4]] + crops[:4]  # centre first
        return crops + [F.hflip(c) for c in crops]


class TrainAugment:
    """Light augmentation for when the base trains: random resized crop and flip per image here; the colour
    jitter (``batch_color``) runs on whole batches in the training step, where it is a few vectorised ops.

    The crop and flip call torchvision's kernels directly, drawing exactly as
    ``v2.Compose([RandomResizedCrop, RandomHorizontalFlip])`` does (same pixels for the same seed): the
    Compose's input flattening and checks cost as much as the resize itself on a small image. The draws come
    from ``generator`` when one is given (the training stream: a generator per batch, see SeededBatches), else
    from the global generator, as the Compose's do."""

    POLICIES = ("light", "trivial")  # --augment

    # (0.5, 1) stays (issue 16's lever sweep): (0.8, 1) tied at 112 px (3 seeds: Fashion-MNIST-1k 0.858 +- 0.002
    # against 0.855 +- 0.010; synthetic yoga 0.993 against 0.989) but lost at the default 224 px (3 seeds:
    # 0.865 +- 0.009 against 0.872 +- 0.003); no crop at all: 0.821
    def __init__(self, size: int, scale: tuple[float, float] = (0.5, 1.0), policy: str = "light"):
        self.crop = v2.RandomResizedCrop(size, scale=scale, antialias=True)
        self.flip_p = 0.5
        self.batch_color = BatchColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)
        if policy not in self.POLICIES:
            raise ValueError(f"TrainAugment policy must be one of {self.POLICIES}, not {policy!r}")
        # trivial: one TrivialAugment op per image on the crop (Müller & Hutter 2021; torchvision's)
        self.policy = v2.TrivialAugmentWide() if policy == "trivial" else None

    def __call__(self, img: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        img = self.crop_and_flip(img, generator)[0]
        if self.policy is None:
            return img
        if generator is None:
            return self.policy(img)
        # torchvision draws the op from the global generator: seed it from this batch's, in a fork, so that
        # the batch stays a function of (seed, epoch, step) and the global stream is left as it was
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
            return self.policy(img)

    def crop_and_flip(self, img: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, bool]:
        """The augmented image and whether it was flipped (the pose backbones flip the landmarks with it)."""
        box = self.crop_box(img.shape[-2], img.shape[-1], generator)
        img = F.resized_crop(img, *box, size=list(self.crop.size), interpolation=self.crop.interpolation,
                             antialias=True)
        # RandomHorizontalFlip's draw: torch.rand(1) >= p keeps the image as it is.
        flipped = bool(torch.rand(1, generator=generator) < self.flip_p)
        return (F.hflip(img) if flipped else img), flipped

    def crop_box(self, height: int, width: int, generator: torch.Generator | None) -> tuple[int, int, int, int]:
        """(top, left, height, width): RandomResizedCrop.make_params's draws, from ``generator``."""
        area, (lo, hi), log_ratio = height * width, self.crop.scale, self.crop._log_ratio
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(lo, hi, generator=generator).item()
            aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
            w, h = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = torch.randint(0, height - h + 1, size=(1,), generator=generator).item()
                left = torch.randint(0, width - w + 1, size=(1,), generator=generator).item()
                return top, left, h, w
        in_ratio, ratio = width / height, self.crop.ratio  # ten misses: the centre crop, as torchvision falls back
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            w, h = int(round(height * max(ratio))), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w


GRAY_WEIGHTS = torch.tensor([0.2989, 0.587, 0.114])  # ITU-R 601 luma, with torchvision's rounding of red


class BatchColorJitter:
    """Brightness, contrast and saturation jitter of a float batch in [0, 1], a random factor per image
    (the maths of torchvision's ColorJitter). Per image on uint8 it cost ~1.2 ms at 128 px on a CPU, as
    much as 15% of a small model's training step; on the batch it is a few vectorised ops."""

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2):
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n = x.shape[0]

        def factor(strength: float) -> torch.Tensor:
            f = 1 - strength + 2 * strength * torch.rand(n, 1, 1, 1, generator=generator)
            return f.to(x.device)

        # Each op is one pass over the batch (at 224 px a pass is ~19 MB), in the batch's own layout. On the
        # NCHW batch the Normalizer gives, every broadcast (a factor per image, a grey value per pixel) runs
        # over a contiguous row; the contrast's mean grey comes from the per-channel means and the
        # saturation's grey image from one matrix product over the channels. Scalar-per-image lerps are
        # written as mul_ + add_ (in place: the first op made a copy of the caller's batch).
        weights = GRAY_WEIGHTS.to(x.device)
        if self.brightness:
            x = (x * factor(self.brightness)).clamp_(0, 1)
        else:
            x = x.clone()
        if self.contrast:
            f = factor(self.contrast)
            mean = (x.mean(dim=(2, 3)) @ weights).view(n, 1, 1, 1)
            x = x.mul_(f).add_((1 - f) * mean).clamp_(0, 1)
        if self.saturation:
            f = factor(self.saturation)
            if x.is_contiguous():  # NCHW: (c,) @ (n, c, h*w); einsum took 3x as long
                gray = (weights @ x.flatten(2)).view(n, 1, *x.shape[2:])
            else:
                gray = (x.permute(0, 2, 3, 1) @ weights).unsqueeze(1)
            x = x.mul_(f).add_(gray.mul_(1 - f)).clamp_(0, 1)
        return x


def decode_all(paths: Sequence[str], preprocess: Preprocess, progress: Callable[[int], None] | None = None,
               workers: int | None = None, cache: str = "auto",
               cache_dir: str | None = None) -> tuple[list[torch.Tensor | None], dict[str, str]]:
    """Decode every path once, in threads (Pillow releases the GIL while decoding).

    ``cache``: 'memory' keeps the uint8 pixels in RAM; 'disk' memory-maps them from .npy files under
    ``cache_dir`` (reused by later runs); 'auto' picks memory when they fit in the budget.
    Returns the decoded images (None where a file failed) and {path: reason} for the failures.
    """
    from posetune.data.cache import DiskCache, default_cache_dir, fits_in_memory

    failed: dict[str, str] = {}
    if cache not in ("auto", "memory", "disk"):
        from posetune.errors import UsageError

        raise UsageError(f"--cache must be auto, memory or disk, not '{cache}'")
    use_disk = cache == "disk" or (cache == "auto" and not fits_in_memory(len(paths), preprocess.short_side))
    disk = DiskCache(cache_dir or default_cache_dir(), f"{preprocess.short_side}|{preprocess.interpolation}") \
        if use_disk else None

    def one(path: str):
        try:
            if disk is not None:
                pixels = disk.get(path)
                if pixels is None:
                    pixels = disk.put(path, preprocess.pixels(path))
                return torch.from_numpy(pixels).permute(2, 0, 1)
            return preprocess.decode(path)
        except ImageError as exc:
            failed[path] = str(exc)
            return None

    images: list[torch.Tensor | None] = []
    for img in map_threaded(one, paths, workers):
        images.append(img)
        if progress:
            progress(1)
    return images, failed


def color_seed(epoch_seed: int, step: int) -> int:
    """The seed of batch ``step``'s colour jitter: from (seed, epoch, step) alone, as a resumed run needs."""
    return epoch_seed * 1_000_003 + step


def crop_seed(epoch_seed: int, step: int) -> int:
    """The seed of batch ``step``'s crops and flips: from (seed, epoch, step) alone, apart from
    :func:`color_seed` so that the two streams never share draws."""
    return (color_seed(epoch_seed, step) + (1 << 62)) % (1 << 63)


class SeededItems:
    """``__getitems__`` for the DataLoader's batched fetch: a batch of (index, seed) pairs (SeededBatches)
    is augmented from one generator made from that seed; plain indices (eval loaders, shards) as today."""

    def __getitems__(self, items: list) -> list:
        if not items or not isinstance(items[0], tuple):
            return [self[i] for i in items]
        generator = torch.Generator().manual_seed(items[0][1])
        return [self.item(i, generator) for i, _ in items]

    def __getitem__(self, i: int):
        return self.item(i, None)


class DecodedDataset(SeededItems, torch.utils.data.Dataset):
    """(uint8 image, label) pairs held in memory; crops/augments on access, normalises per batch."""

    def __init__(self, images: list[torch.Tensor], labels: list[int], preprocess: Preprocess,
                 augment: TrainAugment | None = None):
        self.images, self.labels, self.preprocess, self.augment = images, labels, preprocess, augment

    def __len__(self) -> int:
        return len(self.images)

    def item(self, i: int, generator: torch.Generator | None):
        img = self.images[i]
        img = self.augment(img, generator) if self.augment is not None else self.preprocess.eval_crop(img)
        return img, self.labels[i]


class SeededBatches(torch.utils.data.Sampler):
    """An epoch's batches as lists of (index, batch seed): each batch's augmentation is drawn from its own
    generator, seeded from (seed, epoch, step), so the batch is the same whoever makes it (the main thread,
    the training's batch producer thread, a DataLoader worker) and a resumed run makes batch k without
    replaying the k before it. ``begin`` sets the epoch's seed and the first step to make."""

    def __init__(self, sampler, batch_size: int):
        self.sampler = sampler  # where seed_epoch finds it (set_epoch, its generator)
        self.batches = torch.utils.data.BatchSampler(sampler, batch_size, drop_last=False)
        self.epoch_seed, self.start = 0, 0

    def begin(self, epoch_seed: int, start: int = 0) -> None:
        self.epoch_seed, self.start = epoch_seed, start

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for step, indices in enumerate(self.batches):  # the whole order is drawn even when resuming mid-epoch
            if step >= self.start:
                seed = crop_seed(self.epoch_seed, step)
                yield [(i, seed) for i in indices]


def loader_settings(device: torch.device, seed: int) -> dict:
    """The DataLoader settings every posetune loader shares. On CPU the loader runs in the main process: the
    model already uses every core, and worker processes would only compete with it."""
    cuda = device.type == "cuda"
    workers = min(4, os.cpu_count() or 1) if cuda else 0
    return {"num_workers": workers, "pin_memory": cuda, "persistent_workers": workers > 0,
            "generator": torch.Generator().manual_seed(seed)}


def make_loader(dataset: DecodedDataset, batch_size: int, shuffle: bool, device: torch.device,
                seed: int = 0, sampler=None) -> torch.utils.data.DataLoader:
    """uint8 batches; normalisation happens on the device (less to copy, cheap there)."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None,
                                       sampler=sampler, drop_last=False, **loader_settings(device, seed))


def make_train_loader(dataset: DecodedDataset, batch_size: int, device: torch.device, seed: int = 0,
                      sampler=None) -> torch.utils.data.DataLoader:
    """The training loader: shuffled (or ``sampler``'s order: balance, DDP) in SeededBatches; the same
    order as ``make_loader(shuffle=True)`` for the same seed."""
    settings = loader_settings(device, seed)
    if sampler is None:
        sampler = torch.utils.data.RandomSampler(dataset, generator=settings["generator"])
    return torch.utils.data.DataLoader(dataset, batch_sampler=SeededBatches(sampler, batch_size), **settings)


def epoch_batches(loader, epoch_seed: int, start: int = 0):
    """(step, batch) for the steps from ``start`` on; a SeededBatches loader skips the earlier ones without
    making them, any other loader makes and drops them."""
    if isinstance(loader.batch_sampler, SeededBatches):
        loader.batch_sampler.begin(epoch_seed, start)
        yield from enumerate(loader, start)
        return
    for step, batch in enumerate(loader):
        if step >= start:
            yield step, batch
