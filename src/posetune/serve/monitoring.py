"""What a deployment watches: Prometheus metrics at /metrics, and JSON logs (``--log-format json``).

Metrics live in a registry of their own per app (several apps in one process do not collide):

- ``posetune_requests_total{route,method,status}`` and ``posetune_request_duration_seconds{route}`` (a
  histogram), where ``route`` is the matched route's path template (``/predict``, ...; ``unmatched`` for a URL no
  route takes) and ``method`` a standard one or ``other``, so that odd requests cannot blow up the label set;
- ``posetune_batch_size`` (a histogram of requests per forward pass) and ``posetune_forward_seconds``;
- ``posetune_queue_depth`` (decoded requests waiting for the model), ``posetune_requests_in_progress`` (queue
  slots taken), ``posetune_uploads_receiving`` (bodies still arriving);
- ``posetune_model_info{backbone,engine,version}``.

A JSON log line is one object per line: requests as ``{"time", "method", "path", "status", "latency_ms",
"batch_size", "client"}`` on stdout, uvicorn's own messages as ``{"time", "level", "logger", "message"}`` on stderr.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from posetune.console import Reporter

ACCESS_LOGGER = "posetune.access"
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ServeMetrics:
    """The service's Prometheus instruments; :meth:`exposition` is the body of GET /metrics."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch: int, info: dict[str, str]):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("posetune_requests", "HTTP requests answered, by route, method and status.",
                                ["route", "method", "status"], registry=registry)
        self.latency = Histogram("posetune_request_duration_seconds", "Time from request to the end of the answer.",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        sizes = sorted({1, max_batch, *(2**i for i in range(1, 11) if 2**i < max_batch)})
        self.batch_size = Histogram("posetune_batch_size", "Requests that shared one forward pass.",
                                    buckets=sizes, registry=registry)
        self.forward = Histogram("posetune_forward_seconds", "Time of one forward pass (a whole batch).",
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_depth = Gauge("posetune_queue_depth", "Decoded requests waiting for the model.", registry=registry)
        self.in_progress = Gauge("posetune_requests_in_progress", "Queue slots taken: requests decoding, waiting "
                                 "for the model or in it.", registry=registry)
        self.receiving = Gauge("posetune_uploads_receiving", "Request bodies still arriving.", registry=registry)
        Info("posetune_model", "The model served.", registry=registry).info(info)

    def watch(self, queue_depth: Callable[[], float], in_progress: Callable[[], float],
              receiving: Callable[[], float]) -> None:
        """Read the gauges from the service's own counters at each scrape."""
        self.queue_depth.set_function(queue_depth)
        self.in_progress.set_function(in_progress)
        self.receiving.set_function(receiving)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.forward.observe(seconds)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method if method in HTTP_METHODS else "other", str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def access_record(method: str, path: str, status: int, seconds: float, batch_size: int | None,
                  client: tuple[str, int] | None) -> str:
    """One request as the JSON access-log line."""
    return json.dumps({"time": now_iso(), "method": method, "path": path, "status": status,
                       "latency_ms": round(seconds * 1000, 2), "batch_size": batch_size,
                       "client": f"{client[0]}:{client[1]}" if client else None})


def access_logger() -> logging.Logger:
    """``posetune.access``, writing each line as it is to stdout unless logging was configured for it already
    (``posetune serve`` does, through :func:`uvicorn_log_config`)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)  # where uvicorn's own access log goes
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    return logger


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object: time, level, logger, message (and the traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": now_iso(), "level": record.levelname.lower(), "logger": record.name,
                "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


class LogReporter(Reporter):
    """The serve command's own messages as records of the ``posetune.serve`` logger, configured by ``config``
    (:func:`uvicorn_log_config`: JSON lines on stderr, like uvicorn's)."""

    def __init__(self, config: dict):
        import logging.config

        logging.config.dictConfig(config)
        self.logger = logging.getLogger("posetune.serve")

    def info(self, msg: str) -> None:
        self.logger.info(msg)

    def warn(self, msg: str) -> None:
        self.logger.warning(msg)


def uvicorn_log_config() -> dict:
    """``logging.config.dictConfig`` for ``--log-format json``: uvicorn's messages as JSON on stderr, the access
    log as posetune's JSON request lines on stdout (uvicorn's own access log is off)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}, "line": {"format": "%(message)s"}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"},
            "access": {"class": "logging.StreamHandler", "formatter": "line", "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "posetune.serve": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
            ACCESS_LOGGER: {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }
