"""runtime.tune_allocator(): glibc keeps large freed buffers instead of returning them to the OS."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                                reason="mallopt tuning applies to glibc Linux only")

# 64 MB buffers: above glibc's largest dynamic mmap threshold (32 MB), so by default each one is a
# fresh mmap, unmapped on free, and every page faults in again on the next allocation.
PROBE = """
import json, resource
from posetune.runtime import allocator_tuned, tune_allocator
ok = tune_allocator()
size = 64 * 1024 * 1024
buf = b"\\1" * size  # the first one faults in either way
del buf
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    buf = b"\\1" * size  # malloc + memset: touches every page
    del buf
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": ok, "tuned": allocator_tuned(), "faults": faults, "pages": 10 * size // 4096}))
"""


def probe(**env: str) -> dict:
    full_env = {k: v for k, v in os.environ.items() if k != "POSETUNE_NO_MALLOPT"}
    full_env.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=full_env, check=True)
    return json.loads(out.stdout)


def test_tune_allocator_keeps_large_buffers():
    tuned = probe()
    assert tuned["applied"] is True and tuned["tuned"] is True
    # Reused from the heap: almost none of the 10 x 16384 pages fault in again.
    assert tuned["faults"] < 0.1 * tuned["pages"], tuned


def test_opt_out_restores_glibc_default():
    untuned = probe(POSETUNE_NO_MALLOPT="1")
    assert untuned["applied"] is False and untuned["tuned"] is False
    # Each buffer went back to the OS on free: its pages fault in again every time.
    assert untuned["faults"] > 0.9 * untuned["pages"], untuned


def test_tune_allocator_is_idempotent():
    from posetune.runtime import tune_allocator

    if os.environ.get("POSETUNE_NO_MALLOPT"):
        pytest.skip("POSETUNE_NO_MALLOPT is set")
    assert tune_allocator() is tune_allocator()

