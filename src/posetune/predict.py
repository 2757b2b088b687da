"""Prediction over files, folders, PIL images or arrays, in batches, never stopping on one bad file."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from posetune.data.images import ImageError, is_image_path, resize_short_side, to_rgb
from posetune.errors import UsageError
from posetune.run import Prediction


def collect_paths(paths: Sequence[str | Path]) -> list[str]:
    """Files as given; folders expanded to the images inside them (recursively, sorted)."""
    found: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(str(f) for f in sorted(p.rglob("*")) if f.is_file() and is_image_path(f)
                         and not any(part.startswith(".") for part in f.relative_to(p).parts))
        elif p.exists():
            found.append(str(p))
        else:
            raise UsageError(f"no such file or folder: {p}")
    return found


def _decode_any(item, preprocess):
    """A path, PIL image or HxWx3 uint8 array -> (name, uint8 CHW tensor | None, error | None)."""
    import torch
    from PIL import Image

    if isinstance(item, (str, Path)):
        try:
            return str(item), preprocess.decode(str(item)), None
        except ImageError as exc:
            return str(item), None, str(exc)
    img = Image.fromarray(np.asarray(item, dtype=np.uint8)) if not isinstance(item, Image.Image) else item
    img = resize_short_side(to_rgb(img), preprocess.short_side, preprocess.interpolation)
    return "<image>", torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1), None


def _decoded_stream(items: list, preprocess, workers: int | None = None, ahead: int = 64) -> Iterator[tuple]:
    # Decoding in threads overlaps JPEG work (which releases the GIL) with the model. At most ``ahead``
    # images are decoded ahead of the model (pool.map would decode a whole folder into memory first).
    # One thread per core (at most 4): more only preempt the model's own threads.
    with ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(_decode_any, item, preprocess))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def batched_predictions(decoded: Iterable[tuple[str, object, str | None]], n: int,
                        probabilities: Callable[[list], np.ndarray], classes: list[str], top_k: int = 3,
                        batch_size: int = 32, on_step: Callable[[int], None] | None = None) -> list[Prediction]:
    """The batching both engines share: (name, pixels, error) in input order -> one Prediction each.

    ``probabilities(list_of_pixels)`` returns a (len, classes) array for one batch; unreadable items keep
    their error and never stop the rest. Torch-free, so the ONNX engine uses it too.
    """
    top_k = max(1, min(top_k, len(classes)))
    results: list[Prediction | None] = [None] * n
    pending: list[tuple[int, str, object]] = []

    def flush() -> None:
        if not pending:
            return
        for (i, name, _), p in zip(pending, probabilities([px for _, _, px in pending])):
            order = np.argsort(-p, kind="stable")[:top_k]
            ranked = [(classes[j], round(float(p[j]), 6)) for j in order]
            results[i] = Prediction(name, ranked[0][0], ranked[0][1], ranked)
        if on_step:
            on_step(len(pending))
        pending.clear()

    for i, (name, pixels, error) in enumerate(decoded):
        if error is not None:
            results[i] = Prediction(name, "", 0.0, [], error=error)
            if on_step:
                on_step(1)
            continue
        pending.append((i, name, pixels))
        if len(pending) >= batch_size:
            flush()
    flush()
    return results  # type: ignore[return-value]


def predict_batches(classifier, images: Iterable, top_k: int = 3, batch_size: int = 32,
                    on_step: Callable[[int], None] | None = None, tta: bool = False) -> list[Prediction]:
    """Top-k predictions per image; ``tta`` averages the probabilities of flipped and corner crops."""
    import torch

    items = list(images)
    pre, n_classes = classifier.preprocess, len(classifier.classes)

    def probabilities(tensors: list) -> np.ndarray:
        if tta:
            views = [v for t in tensors for v in pre.tta_views(t)]
            probs = classifier.logits(torch.stack(views)).softmax(1).view(len(tensors), -1, n_classes).mean(1)
        else:
            probs = classifier.logits(torch.stack([pre.eval_crop(t) for t in tensors])).softmax(1)
        return probs.numpy()

    return batched_predictions(_decoded_stream(items, pre), len(items), probabilities, classifier.classes,
                               top_k, batch_size, on_step)
