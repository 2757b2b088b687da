"""The options of `posetune serve`, checked before the model loads or a port is bound.

Kept apart from ``app.py`` so that checking them needs no model; ``parse_size`` (``--max-bytes``)
stays in ``limits.py`` with the rest of the request limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from posetune.checks import Check, Choice, Float, Int, Options, Text, option
from posetune.devices import DEVICE
from posetune.predict.loading import ENGINES, RUN
from posetune.predict.prediction import MIN_CONFIDENCE

MAX_BYTES = 10**9  # an upload is held in memory while it is decoded
MAX_PIXELS = 200_000_000  # Pillow refuses images beyond ~179 MP (twice its bomb warning) anyway
LOG_FORMATS = ("text", "json")  # uvicorn's text logs, or one JSON object per line (serve.monitoring)


class ByteSize(Check):
    """A size like 10MB, 512KiB or 2000000, up to ``high`` bytes; normalised to an int."""

    def __init__(self, high: int):
        self.high = high
        self.expected = f"a size from 1 byte to {high / 10**9:g}GB"

    def __call__(self, value, label):
        from posetune.serve.limits import parse_size

        size = parse_size(value)  # a malformed size is a one-line UsageError naming --max-bytes
        if not 1 <= size <= self.high:
            raise self.fail(value, label)
        return size


@dataclass
class ServeOptions(Options):
    """Every option of `posetune serve` (same names as the flags)."""

    run: str = option("", RUN, flag="RUN")
    host: str = option("127.0.0.1", Text("an address to bind, like 127.0.0.1 or 0.0.0.0"))
    port: int = option(8000, Int(1, 65535))
    engine: str = option("auto", Choice(*ENGINES))
    max_bytes: int | str = option("10MB", ByteSize(MAX_BYTES))
    max_pixels: int = option(50_000_000, Int(1, MAX_PIXELS))
    max_queue: int = option(16, Int(1, 1024))
    top_k: int = option(5, Int(1, 1000))
    read_timeout: float = option(10.0, Float(0.1, 3600))
    allowed_hosts: str | None = option(None, Text("Host names, comma-separated (pose.example,*.lan; * for any)"))
    min_confidence: float | None = option(None, MIN_CONFIDENCE)  # below it the answer is 'unsure'
    device: str = option("auto", DEVICE)
    max_batch: int = option(16, Int(1, 1024))
    batch_wait_ms: float = option(5.0, Float(0, 1000))
    log_format: str = option("text", Choice(*LOG_FORMATS))
