"""Process-level tuning applied once at start-up of heavy work.

glibc returns large freed buffers (activations) to the OS and faults them back in on the next
step: on a 2-core CPU that page-fault churn cost about a third of training time. Keeping them
(no mmap for big blocks, no trimming) removes it. Same effect as MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=<huge> in the environment, without asking the user to set anything.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

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
