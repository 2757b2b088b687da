"""The routes: POST /predict, and GET / (the page), /health, /info.

Each route reads what it needs from one :class:`Service`, built by ``create_app``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from importlib import resources

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from posetune import runtime
from posetune.serve.limits import Admission, Receiving
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
    """What the routes share: the model, its limits and the counters of work in progress."""

    clf: object
    info: dict
    max_bytes: int
    max_pixels: int
    read_timeout: float
    admission: Admission
    receiving: Receiving
    model_lock: threading.Lock = field(default_factory=threading.Lock)  # one inference at a time: each uses every core
    decode_slots: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(2))

    @property
    def saturated(self) -> bool:
        """Every queue slot taken, or no room left in the upload budget for one more full-size upload."""
        return self.admission.full or not self.receiving.room_for(self.max_bytes)

    def infer(self, data: bytes) -> dict:
        """Upload bytes -> the JSON answer of /predict (runs in a worker thread)."""
        from posetune.data.images import resize_short_side

        clf, info = self.clf, self.info
        pre = clf.preprocess
        t0 = time.perf_counter()
        with self.decode_slots:  # bounds decoded full-size images held in memory
            img, (width, height) = decode_upload(data, self.max_pixels, pre.short_side)
            # The engines' first step, done here so that only the small image waits for the model.
            img = resize_short_side(img, pre.short_side, pre.interpolation)
        t1 = time.perf_counter()
        with self.model_lock:
            t2 = time.perf_counter()
            pred = clf.predict([img], top_k=info["top_k"], batch_size=1)[0]
            t3 = time.perf_counter()
        if pred.error:
            raise HTTPException(422, f"cannot use this image: {pred.error}")
        return {"prediction": pred.label, "probability": pred.probability,
                "top_k": [{"label": c, "probability": p} for c, p in pred.top_k],
                "latency_ms": round((t3 - t2) * 1000, 2), "decode_ms": round((t1 - t0) * 1000, 2),
                "queue_ms": round((t2 - t1) * 1000, 2), "engine": info["engine"],
                "image": {"width": width, "height": height}}


def add_routes(app: FastAPI, service: Service, page: str) -> None:
    """Attach every route of the service to ``app``."""
    info, admission, receiving = service.info, service.admission, service.receiving

    @app.post("/predict", openapi_extra=PREDICT_BODY, summary="Name the pose in one photo")
    async def predict(request: Request) -> dict:
        """Upload a photo (multipart field `file`, or the raw bytes as the body): the top-k poses with
        probabilities and the model latency in ms."""
        data = await receive_upload(request, service.max_bytes, receiving, service.read_timeout)  # before a slot
        large = len(data) >= TRIM_AFTER_BYTES
        try:
            with admission:
                result = await run_in_threadpool(service.infer, data)
            large = large or result["image"]["width"] * result["image"]["height"] >= TRIM_AFTER_PIXELS
            return result
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
                "in_flight": admission.active}

    @app.get("/info", summary="The model: backbone, strategy, classes, test metrics, limits")
    async def get_info() -> dict:
        return info


def read_page() -> str:
    return resources.files("posetune.serve").joinpath("static/index.html").read_text(encoding="utf-8")
