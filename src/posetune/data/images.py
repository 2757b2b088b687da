"""Robust image loading: any common format and mode in, an RGB PIL image out, or a clear reason why not."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
# The video files `predict` decodes (video/, PyAV); data/synth/session.py writes a subset. Here, below both.
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mkv", ".mov", ".avi", ".webm")
# What a file's first bytes say it is, to catch mislabelled extensions.
_MAGIC = {
    b"\xff\xd8\xff": "jpeg", b"\x89PNG": "png", b"GIF8": "gif", b"BM": "bmp",
    b"II*\x00": "tiff", b"MM\x00*": "tiff", b"RIFF": "webp",
}
_EXT_KIND = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".gif": "gif", ".bmp": "bmp",
             ".tif": "tiff", ".tiff": "tiff", ".webp": "webp"}


T = TypeVar("T")
R = TypeVar("R")


class ImageError(Exception):
    """The file cannot be used as an image; the message is the reason shown to the user."""


def is_image_path(path: str | Path) -> bool:
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTS and not p.name.startswith(".")


def sniff_kind(path: str | Path) -> str | None:
    """The image kind from the file's magic bytes, or None."""
    with open(path, "rb") as fh:
        head = fh.read(12)
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    return None


def extension_mismatch(path: str | Path) -> str | None:
    """A reason string when the extension lies about the content (e.g. a PNG named .jpg)."""
    kind = sniff_kind(path)
    expected = _EXT_KIND.get(Path(path).suffix.lower())
    if kind and expected and kind != expected:
        return f"extension says {expected} but the content is {kind}"
    return None


def to_rgb(img: Image.Image) -> Image.Image:
    """RGBA/LA/palette with transparency onto white; CMYK, 16-bit, float and grayscale to 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max()) if arr.size else 0.0
        # 16-bit data spans 0..65535; float data is often 0..1.
        scale = 255.0 / 65535.0 if hi > 255 else (255.0 if img.mode == "F" and hi <= 1.0 else 1.0)
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img if img.mode == "RGB" else img.convert("RGB")


def load_image(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Decode ``path`` into an upright RGB image.

    With ``min_side``, JPEGs are decoded at a reduced scale that keeps the short side >= min_side
    (libjpeg's DCT scaling: a large photo decodes several times faster).
    Raises :class:`ImageError` with the reason (zero-byte, truncated, not an image, ...).
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError("zero-byte file")
        with Image.open(path) as img:
            if min_side and img.format == "JPEG":
                w, h = img.size
                scale = min(w, h) / min_side
                if scale >= 2:
                    img.draft("RGB", (int(w / scale) + 1, int(h / scale) + 1))
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"too many pixels (decompression bomb guard): {exc}") from exc
    except OSError as exc:
        msg = str(exc)
        if "truncated" in msg.lower():
            raise ImageError("truncated image") from exc
        if "cannot identify" in msg:
            raise ImageError("not a readable image") from exc
        raise ImageError(f"unreadable: {msg}") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types on corrupt data
        raise ImageError(f"unreadable: {type(exc).__name__}: {exc}") from exc


def resize_short_side(img: Image.Image, short_side: int, interpolation: str = "bicubic") -> Image.Image:
    """Resize keeping aspect so the short side is ``short_side`` (never tiny: the long side >= 1)."""
    w, h = img.size
    scale = short_side / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == img.size:
        return img
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
                "lanczos": Image.LANCZOS}.get(interpolation, Image.BICUBIC)
    return img.resize(size, resample, reducing_gap=3.0 if scale < 0.5 else None)


def map_threaded(fn: Callable[[T], R], items: Iterable[T], workers: int | None = None, ahead: int = 64) -> Iterator[R]:
    """``fn`` over ``items`` in threads, results in input order, at most ``ahead`` items in flight.

    Pillow releases the GIL while decoding, so threads overlap JPEG work with each other and with the
    model; the bound keeps memory flat on big folders (``pool.map`` would decode everything ahead).
    One thread per core by default (at most 8): more only preempt the model's own threads.
    """
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def prefetched(items: Iterable[T], ahead: int = 32) -> Iterator[T]:
    """``items`` produced by a background thread, at most ``ahead`` ahead of the consumer, in order.

    For a source that must run in sequence (a video's frames: each decode needs the one before) while the consumer
    computes: FFmpeg and torch both release the GIL, so decoding the next frames overlaps the forward pass.
    An exception in the source is raised in the consumer; closing the consumer stops the thread."""
    import queue
    import threading

    done, stop = object(), threading.Event()
    q: queue.Queue = queue.Queue(maxsize=max(1, ahead))

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put((None, exc))
            return
        put((done, None))

    thread = threading.Thread(target=produce, name="posetune-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if exc is not None:
                raise exc
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()
