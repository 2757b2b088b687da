"""The web service: POST an image, get the pose. One page at ``/``, JSON at ``/predict``, ``/info``, ``/health``.

Every bad input gets a 4xx JSON ``{"detail": ...}`` that names the fix: an empty body (400), a body
over ``max_bytes`` (413, counted while reading, so nothing unbounded is buffered), an image over
``max_pixels`` (413, checked from the header before decoding; Pillow's decompression-bomb guard
maps there too), bytes that are no image (415), a truncated or corrupt image (422), a multipart
upload without the ``file`` field (422), a body not received within ``read_timeout`` (408).

A request's body is read in full before it takes one of the ``max_queue`` slots, so slow uploads
cannot hold the model away from anyone: a slot covers decoding and inference only, and when all are
taken the next request gets 503 with Retry-After. Bodies still arriving are bounded in total bytes
(``max_queue * max_bytes``; a slow upload costs only what it has sent, beyond the total: 503).
Decoding runs in the thread pool (two at a time), so the event loop never blocks and memory stays
bounded; one worker thread owns the model and runs each forward pass on the decoded images of up to
``max_batch`` requests that arrived together (``batching.py``). After a large image the freed memory
goes back to the OS. Requests whose Host header is not in ``allowed_hosts`` get 400 (DNS-rebinding
guard); every response carries ``X-Content-Type-Options: nosniff``.

The parts: ``limits`` (sizes, hosts, admission), ``uploads`` (a body in, an image out), ``batching`` (the
model's worker), ``routes`` (the routes on one :class:`~posetune.serve.routes.Service`), ``middleware``;
this module wires them.

>>> app = create_app("runs/yoga", engine="onnx")   # doctest: +SKIP
>>> import uvicorn; uvicorn.run(app, host="127.0.0.1", port=8000)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import AsyncIterator, Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.middleware.trustedhost import TrustedHostMiddleware

from posetune.errors import UsageError
from posetune.serve.batching import Batcher
from posetune.serve.limits import (
    DEFAULT_BATCH_WAIT_MS,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_READ_TIMEOUT,
    LOOPBACK_HOSTS,
    TEST_CLIENT_HOST,
    Admission,
    Receiving,
    parse_hosts,
)
from posetune.serve.middleware import Observe, SecurityHeaders
from posetune.serve.monitoring import ServeMetrics, access_logger
from posetune.serve.options import LOG_FORMATS
from posetune.serve.routes import Service, add_routes, read_page

DOCS_ASSETS = "/docs-assets"  # Swagger UI's and ReDoc's scripts and styles, served from the installed package
# The docs pages load only this server's assets (the browser refuses anything else) and talk only to it.
DOCS_CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
            "base-uri 'none'; form-action 'self'")


def run_info(clf, run: str | Path) -> dict:
    """What /info shows: the run's model.json where there is one, else the export's metadata."""
    meta = clf.meta.to_json() if hasattr(clf.meta, "to_json") else dict(clf.meta)
    model_json = Path(run) / "model.json" if Path(run).is_dir() else Path(run).parent / "model.json"
    if model_json.is_file():
        meta = {**meta, **json.loads(model_json.read_text())}
    metrics = meta.get("metrics") or {}
    kind = meta.get("kind") or "image"
    return {"backbone": meta.get("backbone"), "arch": meta.get("arch"), "strategy": meta.get("strategy"),
            "kind": kind, "uses_pose": kind != "image",  # the page draws the skeleton when it does
            "classes": list(clf.classes), "preprocessing": meta.get("preprocessing"),
            "metrics": metrics.get("test"), "metrics_all": metrics, "created": meta.get("created")}


def model_batch(clf) -> int | str:
    """The batch size the engine's model takes: 'any', or the fixed size of an ONNX export (requests are still
    batched for it, then run through the export that many at a time)."""
    return getattr(clf, "fixed_batch", None) or "any"


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A JSON 500 that leaks nothing. It runs outside the middleware (Starlette's ServerErrorMiddleware), so it
    sets the nosniff header itself."""
    return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the server log has the details"},
                        status_code=500, headers={"X-Content-Type-Options": "nosniff"})


def create_app(run: str | Path, engine: str = "torch", max_bytes: int = DEFAULT_MAX_BYTES, top_k: int = 5,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_queue: int = 16, device: str = "auto",
               read_timeout: float = DEFAULT_READ_TIMEOUT, allowed_hosts: str | Sequence[str] | None = None,
               max_batch: int = DEFAULT_MAX_BATCH, batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
               log_format: str = "text", min_confidence: float | None = None, classifier=None) -> FastAPI:
    """The FastAPI app serving RUN with ``engine`` ('auto', 'torch' or 'onnx'); the model loads here, not per request.

    ``allowed_hosts`` (names, ``*.domain`` or ``*`` for any) defaults to the loopback names plus TestClient's
    'testserver': pass ``["*"]``, or the names clients use, to serve on the network. Requests that arrive
    together share a forward pass: up to ``max_batch``, waiting at most ``batch_wait_ms`` after the first
    (``max_batch=1``: one at a time). ``log_format="json"`` writes one JSON line per request to the
    ``posetune.access`` logger (stdout unless configured); "text" leaves access logs to uvicorn.
    Below ``min_confidence`` the answer is 'unsure' (with ``"unsure": true`` and the top-k still given).
    ``classifier`` replaces the loaded model: an object with ``.classes``, ``.engine``, ``.meta``,
    ``.preprocess``, ``.decode(image)`` and ``.probabilities(decoded images)``.
    """
    from posetune.predict import load
    from posetune.predict.prediction import check_min_confidence, check_no_person_label
    from posetune.version import __version__

    if max_bytes <= 0 or max_pixels <= 0 or max_queue <= 0 or top_k <= 0:
        raise UsageError("max_bytes, max_pixels, max_queue and top_k must be positive")
    if not read_timeout > 0:
        raise UsageError(f"--read-timeout must be a positive number of seconds (like 10), not {read_timeout}")
    if max_batch < 1 or not batch_wait_ms >= 0:
        raise UsageError(f"--max-batch must be >= 1 and --batch-wait-ms >= 0, not {max_batch} and {batch_wait_ms}")
    if log_format not in LOG_FORMATS:
        raise UsageError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    hosts = parse_hosts(allowed_hosts) if allowed_hosts is not None else [*LOOPBACK_HOSTS, TEST_CLIENT_HOST]
    # ONNX Runtime's threads would spin between runs on the cores that decode the next uploads.
    clf = classifier or load(run, device=device, engine=engine, spinning=False)
    min_confidence = check_min_confidence(min_confidence, clf.classes)  # at start, not as a 500 per request
    info = run_info(clf, run)
    check_no_person_label(info["kind"], clf.classes)
    info = {**info, "engine": clf.engine, "top_k": min(top_k, len(clf.classes)),  # engine: 'auto' resolved
            "max_bytes": max_bytes, "max_pixels": max_pixels, "max_queue": max_queue, "read_timeout": read_timeout,
            "max_batch": max_batch, "batch_wait_ms": batch_wait_ms, "model_batch": model_batch(clf),
            "posetune_version": __version__}
    service = Service(clf, info, max_bytes=max_bytes, max_pixels=max_pixels, read_timeout=read_timeout,
                      min_confidence=min_confidence,
                      admission=Admission(max_queue),
                      receiving=Receiving(max_queue * max_bytes))  # the same bound as when bodies were read in a slot
    metrics = ServeMetrics(max_batch, {"backbone": str(info["backbone"]), "engine": clf.engine, "version": __version__})
    service.batcher = Batcher(service.predict_batch, max_batch=max_batch, wait_s=batch_wait_ms / 1000,
                              on_batch=metrics.observe_batch)
    metrics.watch(queue_depth=lambda: service.batcher.depth, in_progress=lambda: service.admission.active,
                  receiving=lambda: service.receiving.uploads)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.batcher.close()

    # /docs (Swagger UI) and /redoc from the assets of the fastapi-offline package: no CDN, works with no network.
    app = FastAPIOffline(title="posetune", version=__version__, lifespan=lifespan, static_url=DOCS_ASSETS,
                         swagger_ui_parameters={"validatorUrl": None},  # Swagger UI would call validator.swagger.io
                         description=f"Names the pose in a photo: {', '.join(clf.classes)} ({info['backbone']}, "
                                     f"{clf.engine}).")
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)
    app.add_middleware(Observe, metrics=metrics, routes=app.router.routes,
                       log=access_logger().info if log_format == "json" else None)
    app.add_middleware(SecurityHeaders, policies={"/docs": DOCS_CSP, "/redoc": DOCS_CSP})  # added last = outermost
    app.add_exception_handler(Exception, internal_error)
    add_routes(app, service, read_page(), metrics)
    app.state.classifier = clf
    app.state.info = info
    app.state.service = service
    app.state.metrics = metrics
    return app
