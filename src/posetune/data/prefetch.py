"""A background thread that makes the next training batches while the model trains on the current one.

Crops, collation, uint8 -> float, the colour jitter and normalisation are torch ops that release the GIL,
so on a CPU they run beside the model's step instead of between two steps (~8% of a small model's step at
128 px). The thread draws nothing from the global generator: the batches it is given carry their own seeds
(pipeline.SeededBatches), so the stream is the same with or without it.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from typing import Callable, Iterable, Iterator

import torch

_ITEM, _END, _ERROR = "item", "end", "error"
# The thread's niceness (Linux): it should take the cores the model's step leaves idle, not a core from the
# step's intra-op team, whose every parallel region waits for its slowest thread. When it falls behind, the
# step blocks on the queue (no spinning) and leaves it the core.
NICENESS = 19


class BatchProducer:
    """``prepare(item)`` for each item of ``items``, made in a thread at most ``ahead`` items ahead of the
    consumer (plus the one being made). Use it as a context manager: leaving the block for any reason (the
    epoch's end, an exception, KeyboardInterrupt, a stop signal) stops and joins the thread.

    >>> with BatchProducer(range(3), lambda i: i * i) as batches:
    ...     list(batches)
    [0, 1, 4]
    """

    def __init__(self, items: Iterable, prepare: Callable, ahead: int = 1, name: str = "posetune-batches"):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, ahead))
        self._stop = threading.Event()
        # The thread's ops run on one core: two intra-op teams on a 2-core CPU would stall each other.
        # torch.set_num_threads there also sets the default of later threads, so close() puts it back.
        self._threads = torch.get_num_threads()
        self._thread = threading.Thread(target=self._run, args=(items, prepare), name=name, daemon=True)
        self._thread.start()

    def _run(self, items: Iterable, prepare: Callable) -> None:
        torch.set_num_threads(1)
        if NICENESS and sys.platform.startswith("linux"):  # elsewhere PRIO_PROCESS would name the process
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)
            except OSError:
                pass
        try:
            for item in items:
                if self._stop.is_set():
                    return
                self._put((_ITEM, prepare(item)))
            self._put((_END, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put((_ERROR, exc))

    def _put(self, message: tuple) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=0.05)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator:
        while True:
            try:
                kind, value = self._queue.get(timeout=0.1)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise RuntimeError("the batch producer thread ended without a batch") from None
                continue
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            yield value

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a put waiting on a full queue
                self._queue.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)
        torch.set_num_threads(self._threads)

    def __enter__(self) -> BatchProducer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
