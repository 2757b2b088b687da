"""Checkpoints and stop signals: what lets a run killed at any moment continue to the same weights.

A checkpoint holds tensors and plain data only (numbers, strings, lists, dicts), so it loads with
``torch.load(weights_only=True)``: a crafted file cannot run code. It is written atomically, so a kill
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

from posetune.errors import PosetuneError, UsageError
from posetune.io import atomic_write_bytes

CHECKPOINT = "checkpoint/last.pt"


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """torch.save into memory, then an atomic write."""
    import torch

    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint at ``path``, never unpickling anything but tensors and plain data."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path} is not a posetune checkpoint that loads safely ({first}); "
                         "delete it to train from the start") from exc
    if not isinstance(payload, dict) or not {"model", "optimizer", "scheduler", "loop"} <= set(payload):
        raise UsageError(f"{path} is not a posetune checkpoint; delete it to train from the start")
    return payload


class StopSignals:
    """SIGINT/SIGTERM set a flag that the loop checks at every step, so it can checkpoint and exit cleanly."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.received = signum

    def __call__(self) -> bool:
        return self.received is not None

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Interrupted(PosetuneError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint (exit code 130, like Ctrl-C)."""

    exit_code = 130
