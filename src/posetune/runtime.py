"""Process-level tuning: the allocator, applied once at start-up of heavy work, and the trim that undoes it on
demand; imports warmed in a background thread.

glibc returns large freed buffers (activations) to the OS and faults them back in on the next
step: on a 2-core CPU that page-fault churn cost about a third of training time. Keeping them
(no mmap for big blocks, no trimming) removes it. Same effect as MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=<huge> in the environment, without asking the user to set anything.
A long-running server hands memory back itself after large requests: :func:`release_freed_memory`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib
import os
import sys
import threading
from typing import Callable, Sequence

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
_applied: bool | None = None


def tune_allocator() -> bool:
    """Apply the glibc malloc settings once; True when they are in force (glibc Linux only)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not sys.platform.startswith("linux") or os.environ.get("POSETUNE_NO_MALLOPT"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (e.g. musl): nothing to tune
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _applied = bool(ok)
    return _applied


def allocator_tuned() -> bool:
    return bool(_applied)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (e.g. musl)
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Hand memory freed by the process back to the OS (glibc ``malloc_trim``); False where there is none.

    :func:`tune_allocator` (applied by ``posetune serve``) stops glibc from doing this by itself, which keeps
    training fast; without a trim a burst of large uploads left the server ~500 MB larger for good.
    It takes ~25 ms after freeing a few hundred MB, ~0.03 ms when there is nothing to give back.
    """
    trim = _malloc_trim()
    return bool(trim and trim(0))


def warm_imports(modules: Sequence[str], then: Callable[[], object] | None = None) -> threading.Thread:
    """Import ``modules`` (then run ``then``) in a daemon thread while the caller does other work, and return the
    thread. Errors are swallowed: the caller's own imports report them.

    The caller must ``join()`` the thread before it imports any of these packages itself. CPython does not make
    an import of ``pkg.sub`` wait for a ``pkg`` that another thread is still initialising: the two collide, the
    background import fails and takes ``pkg`` out of ``sys.modules``, and the caller's import dies with
    ``KeyError: 'pkg'`` (cleanlab did so in `data check --label-issues`, now and then under load).
    """
    def work() -> None:
        try:
            for name in modules:
                importlib.import_module(name)
            if then is not None:
                then()
        except Exception:  # noqa: BLE001, S110 - only a head start: the real imports report any problem
            pass

    thread = threading.Thread(target=work, name="posetune-warm-imports", daemon=True)
    thread.start()
    return thread
