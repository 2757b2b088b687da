"""The routes: POST /predict, and GET / (the page), /health, /info, /metrics.

Each route reads what it needs from one :class:`Service`, built by ``create_app``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from importlib import resources

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from posetune import runtime
from posetune.predict.prediction import Prediction, batched_predictions
from posetune.serve.batching import Batched, Batcher
from posetune.serve.limits import Admission, Receiving
from posetune.serve.monitoring import ServeMetrics
from posetune.serve.uploads import decode_upload, receive_upload

# After work this large, freed memory is handed back to the OS (malloc_trim): a 4 MP decode holds >= 16 MB.
TRIM_AFTER_BYTES = 1_000_000
TRIM_AFTER_PIXELS = 4_000_000
# Everything on the page is inline: it works offline and loads nothing from elsewhere.
PAGE_CSP = ("default-src 'none'; img-src 'self' blob: data:; style-src 'unsafe-inline'; "
            "script-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'self'")

PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                               "properties": {"file": {"type": "string", "format": "binary"}}}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


@dataclass
class Service:
    """What the routes share: the model, its limits, the batching worker and the counters of work in progress."""

    clf: object
    info: dict
    max_bytes: int
    max_pixels: int
    read_timeout: float
    admission: Admission
    receiving: Receiving
    min_confidence: float | None = None  # below it the answer is 'unsure'
    batcher: Batcher | None = None  # set by create_app: it runs predict_batch
    decode_slots: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(2))

    @property
    def saturated(self) -> bool:
        """Every queue slot taken, or no room left in the upload budget for one more full-size upload."""
        return self.admission.full or not self.receiving.room_for(self.max_bytes)

    def decode(self, data: bytes) -> tuple[object, tuple[int, int], float]:
        """Upload bytes -> (what the engine's forward pass takes, the size as sent, seconds); in a worker thread,
        outside the model, two at a time: that bounds the decoded full-size images held in memory."""
        t0 = time.perf_counter()
        with self.decode_slots:
            img, size = decode_upload(data, self.max_pixels, self.clf.preprocess.short_side)
            pixels = self.clf.decode(img)  # resized and (onnx) cropped: only the small image waits for the model
        return pixels, size, time.perf_counter() - t0

    def predict_batch(self, decoded: list) -> list[Prediction]:
        """One forward pass over the decoded images of several requests (on the batching worker's thread)."""
        rows = [("<upload>", pixels, None) for pixels in decoded]
        return batched_predictions(rows, len(rows), self.clf.probabilities, self.clf.classes, self.info["top_k"],
                                   batch_size=len(rows), min_confidence=self.min_confidence, kind=self.info["kind"])

    def answer(self, batched: Batched[Prediction], size: tuple[int, int], decode_s: float) -> dict:
        """The JSON answer of /predict."""
        pred = batched.value
        if pred.error:
            raise HTTPException(422, f"cannot use this image: {pred.error}")
        return {"prediction": pred.label, "probability": pred.probability, "unsure": pred.unsure,
                "no_person": pred.no_person, "pose": pred.pose_json(),
                "top_k": [{"label": c, "probability": p} for c, p in pred.top_k],
                "latency_ms": round(batched.run_s * 1000, 2), "decode_ms": round(decode_s * 1000, 2),
                "queue_ms": round(batched.queued_s * 1000, 2), "batch_size": batched.batch_size,
                "engine": self.info["engine"], "image": {"width": size[0], "height": size[1]}}


def add_routes(app: FastAPI, service: Service, page: str, metrics: ServeMetrics) -> None:
    """Attach every route of the service to ``app``."""
    info, admission, receiving = service.info, service.admission, service.receiving

    @app.post("/predict", openapi_extra=PREDICT_BODY, summary="Name the pose in one photo")
    async def predict(request: Request) -> dict:
        """Upload a photo (multipart field `file`, or the raw bytes as the body): the top-k poses with
        probabilities, the model latency in ms and how many requests shared its forward pass (`batch_size`)."""
        data = await receive_upload(request, service.max_bytes, receiving, service.read_timeout)  # before a slot
        large = len(data) >= TRIM_AFTER_BYTES
        try:
            with admission, service.batcher.ticket() as ticket:
                pixels, size, decode_s = await run_in_threadpool(service.decode, data)
                large = large or size[0] * size[1] >= TRIM_AFTER_PIXELS
                batched = await asyncio.wrap_future(ticket.submit(pixels))
            request.state.batch_size = batched.batch_size  # for the access log
            return service.answer(batched, size, decode_s)
        except HTTPException as exc:
            large = large or exc.status_code == 422  # failed while decoding: the full-size buffer was allocated
            raise
        finally:
            del data
            if large:
                await run_in_threadpool(runtime.release_freed_memory)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP})

    @app.get("/health", summary="Readiness: the model is loaded and a request would be taken now",
             responses={503: {"description": "saturated: every queue slot is taken, or the upload budget is spent"}})
    async def health(response: Response) -> dict:
        """200 with ``status: ok`` when a request would be taken now; **503** with ``status: saturated`` (and
        Retry-After) when every queue slot is busy or uploads already arriving fill the upload budget, so that a
        load balancer routes elsewhere. As a liveness probe, accept 503 too (the process is alive) or use /info."""
        saturated = service.saturated
        if saturated:
            response.status_code = 503
            response.headers["Retry-After"] = "1"
        return {"status": "saturated" if saturated else "ok", "engine": info["engine"],
                "queue": {"in_progress": admission.active, "max": admission.limit},
                "uploads": {"receiving": receiving.uploads, "bytes": receiving.held, "max_bytes": receiving.limit},
                "batching": {"waiting": service.batcher.depth, "max_batch": service.batcher.max_batch},
                "in_flight": admission.active}

    @app.get("/info", summary="The model: backbone, strategy, classes, test metrics, limits")
    async def get_info() -> dict:
        return info

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {}}}})
    async def get_metrics() -> Response:
        """Requests by route and status, request latency, requests per forward pass, queue depth, in the
        Prometheus text format."""
        return Response(metrics.exposition(), media_type=metrics.content_type)


def read_page() -> str:
    return resources.files("posetune.serve").joinpath("static/index.html").read_text(encoding="utf-8")
