"""The on-disk half of the decoded-image cache: uint8 pixels in memory-mapped .npy files.

Small datasets stay in memory (pipeline.decode_all). When the decoded pixels would not fit in
the memory budget, each image is stored once under a cache folder keyed by path + file size +
mtime + decode size, and memory-mapped back: the OS pages it in and out, and a later run
(another strategy, another compare cell) skips the decode entirely.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

DEFAULT_MEMORY_FRACTION = 0.4  # of the memory available now


def default_cache_dir() -> Path:
    root = os.environ.get("POSETUNE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"),
                                                            "posetune")
    return Path(root) / "decoded"


def available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30  # unknown platform: assume 8 GiB


def estimated_bytes(n_images: int, short_side: int, aspect: float = 4 / 3) -> int:
    return int(n_images * 3 * short_side * short_side * aspect)


def fits_in_memory(n_images: int, short_side: int) -> bool:
    budget = float(os.environ.get("POSETUNE_CACHE_MEMORY_GB", "0")) * (1 << 30) or \
        available_memory_bytes() * DEFAULT_MEMORY_FRACTION
    return estimated_bytes(n_images, short_side) <= budget


class DiskCache:
    """uint8 HxWx3 arrays keyed by (path, size, mtime, decode settings), memory-mapped on read."""

    def __init__(self, root: str | Path, settings: str):
        self.root, self.settings = Path(root), settings

    def _file(self, path: str) -> Path:
        st = os.stat(path)
        key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{self.settings}"
        digest = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
        return self.root / digest[:2] / f"{digest}.npy"

    def get(self, path: str) -> np.ndarray | None:
        f = self._file(path)
        if not f.is_file():
            return None
        try:
            return np.load(f, mmap_mode="c")  # copy-on-write: writable for torch, the file stays as is
        except (OSError, ValueError):
            return None  # a damaged entry is decoded again

    def put(self, path: str, pixels: np.ndarray) -> np.ndarray:
        f = self._file(path)
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(pixels))
        os.replace(tmp, f)  # atomic: concurrent runs never read half an entry
        return np.load(f, mmap_mode="c")
