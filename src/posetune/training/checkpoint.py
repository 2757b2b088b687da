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
CONFIG_KEY = "config_sha256"  # the checkpoint belongs to the run whose config.yaml has this hash


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """torch.save into memory, then an atomic write."""
    import torch

    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path, config_sha256: str | None = None) -> dict:
    """The checkpoint at ``path``, never unpickling anything but tensors and plain data. With
    ``config_sha256``, a checkpoint written under another config.yaml is refused."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch would advise turning weights_only off: the unsafe way
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UsageError(f"{path} holds objects other than tensors and plain data, and posetune never unpickles "
                         "those (they could run code); delete it to train from the start") from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise UsageError(f"{path} is damaged or not a checkpoint ({type(exc).__name__}); delete it to train "
                         "from the start") from exc
    if not isinstance(payload, dict) or not {"model", "optimizer", "scheduler", "loop"} <= set(payload):
        raise UsageError(f"{path} is not a posetune checkpoint; delete it to train from the start")
    if config_sha256 is not None and payload.get(CONFIG_KEY, config_sha256) != config_sha256:  # older: no key
        raise UsageError(f"{path} was written under another config.yaml than the one beside it; it does not belong "
                         "to this run (train again with --overwrite)")
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
