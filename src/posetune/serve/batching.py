"""Request batching: concurrent requests share one forward pass, as TorchServe's and Triton's dynamic batchers do.

One worker thread owns the model. It takes the first queued item, then more, up to ``max_batch``, for at most
``wait_s`` after the first -- and only while other requests are still on their way (announced with
:meth:`Batcher.ticket` and still decoding), so a request alone never waits for company that is not coming. Then
one call of ``run`` on the whole batch, and each request's future gets its own result (or the batch's error).
``max_batch=1`` is one request at a time.

>>> batcher = Batcher(lambda xs: [x * 2 for x in xs], max_batch=8, wait_s=0.005)
>>> with batcher.ticket() as ticket:
...     future = ticket.submit(21)
>>> future.result(5).value, future.result(5).batch_size
(42, 1)
>>> batcher.close()
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Generic, Sequence, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Batched(Generic[T]):
    """One request's result, and how it was computed."""

    value: T
    batch_size: int  # requests that shared the forward pass
    queued_s: float  # from submit to the start of the forward pass
    run_s: float  # the forward pass of the whole batch


class Ticket:
    """One request on its way to the model: counted as coming until it is submitted or dropped (``with`` exit)."""

    def __init__(self, batcher: Batcher):
        self.batcher, self.open = batcher, True

    def submit(self, item: Any) -> Future:
        self.open = False
        return self.batcher._put(item)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc) -> None:
        if self.open:  # never submitted (its decoding failed): stop waiting for it
            self.open = False
            self.batcher._withdraw()


class Batcher:
    """A queue in front of ``run(items) -> results`` (one result per item, in order), served by one thread.

    ``on_batch(size, seconds)`` is told about every forward pass (for metrics); it runs on the worker thread.
    """

    def __init__(self, run: Callable[[list], Sequence], max_batch: int = 16, wait_s: float = 0.005,
                 on_batch: Callable[[int, float], None] | None = None, name: str = "posetune-model"):
        if max_batch < 1 or wait_s < 0:
            raise ValueError(f"max_batch must be >= 1 and wait_s >= 0, not {max_batch} and {wait_s}")
        self.run, self.max_batch, self.wait_s, self.on_batch = run, max_batch, wait_s, on_batch
        self._queue: deque[tuple[Any, Future, float]] = deque()
        self._coming = 0  # tickets not yet submitted: requests still decoding
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Items waiting for a forward pass (not counting the one running)."""
        return len(self._queue)

    @property
    def coming(self) -> int:
        return self._coming

    def ticket(self) -> Ticket:
        """Announce a request before its (slow) decoding, so a batch being formed may wait for it."""
        with self._cond:
            self._coming += 1
        return Ticket(self)

    def _withdraw(self) -> None:
        with self._cond:
            self._coming -= 1
            self._cond.notify()

    def _put(self, item: Any) -> Future:
        future: Future = Future()
        with self._cond:
            self._coming -= 1
            if self._closed:
                future.set_exception(RuntimeError("the server is shutting down"))
                return future
            self._queue.append((item, future, time.perf_counter()))
            self._cond.notify()
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Stop after the batch in progress; anything still queued fails with 'shutting down'."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _next_batch(self) -> list[tuple[Any, Future, float]] | None:
        """Block for the first item, then gather more within the wait; None once closed."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            batch = [self._queue.popleft()]
            deadline = time.perf_counter() + self.wait_s
            while len(batch) < self.max_batch:
                if self._queue:
                    batch.append(self._queue.popleft())
                    continue
                left = deadline - time.perf_counter()
                if self._coming <= 0 or left <= 0 or self._closed:
                    break
                self._cond.wait(left)
        return [entry for entry in batch if entry[1].set_running_or_notify_cancel()]  # drop cancelled requests

    def _serve(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    break
                if batch:
                    self._run(batch)
        finally:  # closed, or the thread itself is dying: nothing may wait for it any more
            with self._cond:
                self._closed = True
                left, self._queue = list(self._queue), deque()
            for _, future, _ in left:
                if future.set_running_or_notify_cancel():
                    future.set_exception(RuntimeError("the server is shutting down"))

    def _run(self, batch: list[tuple[Any, Future, float]]) -> None:
        start = time.perf_counter()
        try:
            results = list(self.run([item for item, _, _ in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"the model returned {len(results)} results for a batch of {len(batch)}")
        except BaseException as exc:  # every waiting request gets the error; the worker goes on after an Exception
            for _, future, _ in batch:
                future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        run_s = time.perf_counter() - start
        for (_, future, queued_at), value in zip(batch, results):
            future.set_result(Batched(value, len(batch), start - queued_at, run_s))
        if self.on_batch:
            self.on_batch(len(batch), run_s)
